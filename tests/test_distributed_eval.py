"""Distributed evaluation (snnbridge.evaluate under torch.distributed, gloo on CPU): every sample counted once.

The ranks run in spawned gloo processes (helpers.dist.run_ranks, loopback, bounded in time).
A stand-in SNN whose inputs carry their sample index records what each rank swept and is
right on a hand-chosen set of (sample, T) pairs, so the expected curve is a count over
``range(N)``; a saved, converted SNN checks the real thing against one process.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import snnbridge
from helpers import data_driven, zoo
from helpers.dist import run_ranks
from snnbridge import distributed
from snnbridge.errors import InputError

N, K, T = 13, 3, 4  # 13 samples on 2 ranks: 7 and 6 real, rank 1 gets one padded sample


def right(i: torch.Tensor, t: int) -> torch.Tensor:
    """Whether the stand-in SNN is right on sample ``i`` after ``t`` steps (sample 0 is right at t = 2 and 3)."""
    return (i * 5 + t) % 3 != 1


class IndexSNN:
    """What accuracy_curve needs of an SNN (sweep, steps_for, timesteps); input column 0 is the sample index."""

    timesteps = T

    def __init__(self):
        self.seen: list[int] = []

    def parameters(self):
        return iter(())

    def steps_for(self, t: int) -> int:
        return t

    def sweep(self, x: torch.Tensor, timesteps: int) -> torch.Tensor:
        idx = x[:, 0].long()
        self.seen += idx.tolist()
        label = idx % K
        out = torch.zeros(timesteps, len(idx), K)
        for t in range(timesteps):
            pred = torch.where(right(idx, t + 1), label, (label + 1) % K)
            out[t, torch.arange(len(idx)), pred] = 1.0
        return out


class IndexANN(nn.Module):
    """Right on the even samples."""

    def forward(self, x):
        idx = x[:, 0].long()
        label = idx % K
        return nn.functional.one_hot(torch.where(idx % 2 == 0, label, (label + 1) % K), K).float()


def dataset(n: int = N) -> TensorDataset:
    x = torch.arange(n, dtype=torch.float32).view(n, 1).repeat(1, 2)
    return TensorDataset(x, torch.arange(n) % K)


def expected(n: int = N) -> tuple[list[float], float]:
    i = torch.arange(n)
    return [float(right(i, t).double().mean()) for t in range(1, T + 1)], float((i % 2 == 0).double().mean())


def _curves(rank, world, shuffle):
    snn = IndexSNN()
    loader = distributed.shard(dataset(), batch_size=3, shuffle=shuffle, seed=5)
    res = snnbridge.accuracy_curve(snn, loader, [1, 2, 4], ann=IndexANN(), progress=False)
    ann_acc = snnbridge.ann_accuracy(IndexANN(), distributed.shard(dataset(), batch_size=4))
    return res, snn.seen, distributed.sampler_padding(loader), ann_acc


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_sample_counted_once_with_uneven_shards(shuffle):
    results = run_ranks(_curves, 2, (shuffle,))
    curve, ann = expected()
    (r0, seen0, pad0, a0), (r1, seen1, pad1, a1) = results
    assert (pad0, pad1) == (0, 1) and (len(seen0), len(seen1)) == (7, 6)  # the padded sample is never swept
    assert sorted(seen0 + seen1) == list(range(N))
    for r in (r0, r1):
        assert r["samples"] == N and r["ranks"] == 2
        assert r["curve"] == pytest.approx(curve, abs=1e-12) and r["accuracy"] == [r["curve"][t - 1] for t in (1, 2, 4)]
        assert r["ann_accuracy"] == pytest.approx(ann, abs=1e-12)
    assert {k: v for k, v in r0.items() if k != "seconds"} == {k: v for k, v in r1.items() if k != "seconds"}
    assert r0["seconds"] == r1["seconds"]  # the slowest rank's, on every rank
    assert a0 == a1 == pytest.approx(ann, abs=1e-12)


def test_one_process_shard_is_the_whole_set():
    snn = IndexSNN()
    res = snnbridge.accuracy_curve(snn, distributed.shard(dataset(), 4, shuffle=True, seed=1), ann=IndexANN(),
                                   progress=False)
    curve, ann = expected()
    assert sorted(snn.seen) == list(range(N)) and res["samples"] == N and res["ranks"] == 1
    assert res["curve"] == pytest.approx(curve) and res["ann_accuracy"] == pytest.approx(ann)
    # a rank's shard read without a process group: only its real samples count
    loader = DataLoader(dataset(), batch_size=4, sampler=DistributedSampler(dataset(), num_replicas=2, rank=1,
                                                                            shuffle=False))
    snn = IndexSNN()
    assert snnbridge.accuracy_curve(snn, loader, progress=False)["samples"] == 6 and snn.seen == list(range(1, N, 2))


def test_shard_refuses_what_would_defeat_it():
    for bad in ({"sampler": None}, {"drop_last": True}, {"batch_sampler": None}):
        with pytest.raises(InputError, match="DistributedSampler"):
            distributed.shard(dataset(), 4, **bad)
    with pytest.raises(InputError, match="batch_size"):
        distributed.shard(dataset(), 0)


def _refusals(rank, world):
    out = {}
    cases = {
        "same data on every rank": DataLoader(dataset(), batch_size=4),
        "drop_last loader": DataLoader(dataset(), batch_size=4, drop_last=True, sampler=DistributedSampler(dataset())),
        "drop_last sampler": DataLoader(dataset(), batch_size=4, sampler=DistributedSampler(dataset(),
                                                                                            drop_last=True)),
        "wrong rank": DataLoader(dataset(), batch_size=4, sampler=DistributedSampler(dataset(), num_replicas=2,
                                                                                     rank=0)),
    }
    # rank 1's data breaks in its second batch, while rank 0 evaluates: an error on both, not a hang
    cases["rank 1 fails"] = distributed.shard(dataset(), 4) if rank == 0 else [dataset()[:3], "oops"]
    for name, loader in cases.items():
        try:
            snnbridge.accuracy_curve(IndexSNN(), loader, progress=False)
            out[name] = None
        except snnbridge.SnnbridgeError as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    mod = nn.BatchNorm1d(2)
    mod.running_mean.fill_(float(rank + 1))
    distributed.sync_buffers(mod)
    out["synced"] = mod.running_mean.tolist()
    return out


def test_refusals_on_two_ranks_and_buffer_sync():
    r0, r1 = run_ranks(_refusals, 2)
    assert "same first batch" in r0["same data on every rank"] and "shard" in r1["same data on every rank"]
    assert "drop_last=True" in r0["drop_last loader"] and "drop_last=True" in r1["drop_last sampler"]
    assert "rank 1: the evaluation loader's DistributedSampler is built for rank 0 of 2, but this process is rank 1" \
        in r1["wrong rank"]  # right for rank 0, wrong for rank 1 ...
    assert "built for rank 0 of 2" in r0["wrong rank"]  # agreed: an error on both ranks
    assert r0["synced"] == r1["synced"] == [1.0, 1.0]
    assert r1["rank 1 fails"].startswith("InputError: evaluation batch 2 is a str")
    assert r0["rank 1 fails"].startswith("SnnbridgeError: rank 1 failed while evaluating its shard (InputError")


# -- a converted SNN: two ranks give the one-process curve ------------------------------------------------
def _snn_curve(rank, world, path, ann_state, x, y):
    snn = snnbridge.load(path, model=zoo.BNNet())
    ann = zoo.BNNet()
    ann.load_state_dict(ann_state)
    res = snnbridge.accuracy_curve(snn, distributed.shard(TensorDataset(x, y), 5), [1, 3, 6], ann=ann.eval(),
                                   progress=False)
    return res, distributed.model_checksum(snn)


def test_converted_snn_two_ranks_equal_one_process(tmp_path):
    ann = data_driven.trained_net()
    x, y = data_driven.make_data(37, seed=3)  # 19 and 18 samples: uneven shards
    snn = snnbridge.convert(ann, ["maxnorm"], calibration=data_driven.calibration_batches(2), timesteps=6,
                            progress=False)
    snnbridge.save(snn, tmp_path / "snn.pt")
    one = snnbridge.accuracy_curve(snn, DataLoader(TensorDataset(x, y), batch_size=8), [1, 3, 6], ann=ann,
                                   progress=False)
    assert len({round(a, 6) for a in one["curve"]}) > 2  # the curve changes with T: the comparison can fail
    (r0, c0), (r1, c1) = run_ranks(_snn_curve, 2, (str(tmp_path / "snn.pt"), ann.state_dict(), x, y))
    assert c0 == c1 == distributed.model_checksum(snn)
    for r in (r0, r1):
        assert r["samples"] == 37 and r["ranks"] == 2
        assert r["curve"] == one["curve"] and r["ann_accuracy"] == one["ann_accuracy"]
