"""DDP training with snnbridge inside (examples/distributed): the union-batch gradient, identical ranks, the examples.

Two gloo ranks (helpers.dist.run_ranks) take the halves of one batch: DDP's averaged gradient
must equal the one-process gradient of the whole batch (QCFS training of a prepared ANN; TET
fine-tuning of a converted SNN on the torch and SpikingJelly backends), and one optimizer step
must leave bit-identical parameters on both ranks. The two example scripts run end to end on
random data (``--smoke``) on two ranks, one of them through a real ``torchrun``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import snnbridge
from helpers.dist import run_ranks
from snnbridge import distributed

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples.distributed import common, finetune, qcfs_train  # noqa: E402

QCFS = [{"qcfs": {"levels": 4, "lambda_init": 1.5}}]


class NoBN(nn.Module):
    """conv-ReLU-pool, conv-ReLU, linear: no BatchNorm, so each rank's loss is a mean of per-sample terms."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        return self.head(torch.flatten(F.relu(self.conv2(x)), 1))


def prepared(state=None) -> nn.Module:
    torch.manual_seed(0)
    model = snnbridge.prepare(NoBN(), QCFS)
    if state is not None:
        model.load_state_dict(state)
    return model


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * 2, torch.randint(0, 4, (n,), generator=g)


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def half(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return x.chunk(world)[rank]


# -- QCFS training step ---------------------------------------------------------------------------------
def _qcfs_step(rank, world, state, x, y):
    ann = prepared(state)
    model = common.wrap(ann, torch.device("cpu"))
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    qcfs_train.train_step(model, opt, half(x, rank, world), half(y, rank, world))
    return grads(ann), distributed.checksum(ann.state_dict())


def test_qcfs_step_union_gradient_and_identical_ranks():
    ann = prepared()
    state = {k: v.clone() for k, v in ann.state_dict().items()}
    x, y = batch()
    F.cross_entropy(ann(x), y).backward()
    want = grads(ann)
    assert any("lam" in n and g.abs().sum() > 0 for n, g in want.items())  # the thresholds learn too
    (g0, c0), (g1, c1) = run_ranks(_qcfs_step, 2, (state, x, y))
    assert c0 == c1  # one step later, bit-identical parameters on both ranks
    assert set(g0) == set(want)
    for name, g in want.items():
        torch.testing.assert_close(g0[name], g, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(g0[name], g1[name]), name


# -- SNN fine-tuning step ---------------------------------------------------------------------------------
SURROGATE = {"sg": {"shape": "atan"}}  # deterministic: the one-process gradient is well defined


def converted(backend: str) -> snnbridge.SpikingModel:
    torch.manual_seed(0)
    ann = NoBN().eval()
    calib = [batch(16, seed=s)[0] for s in (2, 3)]
    return snnbridge.convert(ann, ["robustnorm", "opi"], calibration=calib, backend=backend, timesteps=4,
                             progress=False)


def _finetune_steps(rank, world, files, x, y):
    out = {}
    loss_fn = snnbridge.training_loss(["tet"])
    for backend, path in files.items():
        snn = snnbridge.load(path, model=NoBN())
        snn.set_surrogate(snnbridge.surrogate(SURROGATE, framework=backend))
        snn.requires_grad_(True)
        model = common.wrap(finetune.PerStep(snn), torch.device("cpu"), forward_sync_buffers=False)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        snn.train()
        finetune.finetune_step(model, snn, opt, loss_fn, half(x, rank, world), half(y, rank, world),
                               finetune.reset_function(backend))
        out[backend] = (grads(snn), distributed.checksum(snn.state_dict()))
    return out


def test_finetune_step_union_gradient_and_identical_ranks(tmp_path):
    x, y = batch(8, seed=4)
    files, want = {}, {}
    for backend in ("torch", "spikingjelly"):
        snn = converted(backend)
        files[backend] = str(tmp_path / f"{backend}.pt")
        snnbridge.save(snn, files[backend])
        snn.set_surrogate(snnbridge.surrogate(SURROGATE, framework=backend))
        snn.requires_grad_(True)
        snn.train()
        snnbridge.training_loss(["tet"])(snn.steps(x), y).backward()
        want[backend] = grads(snn)
        assert all(g.abs().sum() > 0 for g in want[backend].values())  # every weight gets a gradient
    r0, r1 = run_ranks(_finetune_steps, 2, (files, x, y))
    for backend, w in want.items():
        (g0, c0), (g1, c1) = r0[backend], r1[backend]
        assert c0 == c1, backend
        assert set(g0) == set(w)
        for name, g in w.items():
            torch.testing.assert_close(g0[name], g, rtol=1e-4, atol=1e-6, msg=f"{backend} {name}")
            assert torch.equal(g0[name], g1[name])


# -- the example scripts end to end ------------------------------------------------------------------------
def _examples(rank, world, out):
    q = qcfs_train.main(["--smoke", "--no-progress", "--threads", "1", "--out", str(Path(out) / "qcfs")])
    f = finetune.main(["--smoke", "--no-progress", "--threads", "1", "--out", str(Path(out) / "ft"),
                       "--backend", "torch", "--surrogate", json.dumps(SURROGATE)])
    return q, f


def _without_timing(results: dict) -> dict:
    drop = {"wall_seconds", "train_seconds", "seconds"}
    out = {k: v for k, v in results.items() if k not in drop}
    out["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in results["history"]]
    return out


def test_examples_on_two_ranks_agree(tmp_path):
    (q0, f0), (q1, f1) = run_ranks(_examples, 2, (str(tmp_path),))
    assert q0["ranks"] == f0["ranks"] == 2
    assert q0["checksums"] == q1["checksums"] and f0["checksums"] == f1["checksums"]  # BN statistics synced too
    assert _without_timing(q0) == _without_timing(q1) and _without_timing(f0) == _without_timing(f1)
    assert q0["samples"] == 30 and len(q0["lambdas"]) == 3
    saved = json.loads((tmp_path / "qcfs" / "results.json").read_text())
    assert saved["checksums"] == q0["checksums"] and (tmp_path / "ft" / "results.json").is_file()
    reloaded = snnbridge.prepare(qcfs_train.make_model(num_classes=10), [{"qcfs": {"levels": 8, "lambda_init": 2.0}}])
    reloaded.load_state_dict(torch.load(tmp_path / "qcfs" / "qcfs_ann.pt", weights_only=True))
    assert distributed.checksum(reloaded.state_dict()) == q0["checksums"]["ann"]


def test_qcfs_example_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "examples" / "distributed" / "qcfs_train.py"), "--smoke", "--no-progress",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=150,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("QCFS training on 2 process(es), 1 thread(s) each") == 1  # rank 0 prints
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["ranks"] == 2 and saved["samples"] == 30
