"""snnbridge.distributed on two gloo processes: reductions, gathers, checks and the sampler padding rule."""

from __future__ import annotations

import pytest
import torch

from helpers.dist import run_ranks
from snnbridge import distributed
from snnbridge.errors import InputError


def _reductions(rank, world):
    x = torch.tensor([1.0, 5.0]) * (rank + 1)
    rows = torch.arange(3 * (rank + 2), dtype=torch.float32).view(3, rank + 2) + 100 * rank
    mean = distributed.all_mean(torch.tensor([float(rank)]), count=1 + 3 * rank)  # rank 1 has 4 values, rank 0 one
    try:
        distributed.check_same(rank, "the rank", "nothing")
        refused = None
    except InputError as e:
        refused = str(e)
    return (distributed.all_sum(x), distributed.all_max(x), mean, distributed.all_gather_rows(rows), refused,
            distributed.world_size(), distributed.rank(), distributed.is_main())


def test_reductions_on_two_ranks():
    r0, r1 = run_ranks(_reductions, 2)
    for r in (r0, r1):
        assert torch.equal(r[0], torch.tensor([3.0, 15.0]))
        assert torch.equal(r[1], torch.tensor([2.0, 10.0]))
        assert torch.allclose(r[2], torch.tensor([4 / 5]))  # (0 * 1 + 1 * 4) / 5
        want = torch.cat([torch.arange(6.0).view(3, 2), torch.arange(9.0).view(3, 3) + 100], 1)
        assert torch.equal(r[3], want)
        assert "rank 0: 0, rank 1: 1" in r[4]
        assert r[5] == 2
    assert (r0[6], r0[7], r1[6], r1[7]) == (0, True, 1, False)


def test_single_process_is_the_identity():
    x = torch.tensor([1.0, 2.0])
    assert distributed.all_sum(x) is x and distributed.all_max(x) is x
    assert distributed.all_gather_rows(x.view(1, 2)) is not None
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.all_gather_object("a") == ["a"]
    distributed.check_same(3, "anything", "nothing")  # one rank always agrees


@pytest.mark.parametrize("total,world", [(10, 3), (7, 2), (4, 4), (3, 4), (100, 8)])
def test_shard_counts_match_distributed_sampler(total, world):
    from torch.utils.data import DistributedSampler

    counts = distributed.shard_counts(total, world)
    assert sum(counts) == total
    seen = []
    for r in range(world):
        idx = list(DistributedSampler(range(total), num_replicas=world, rank=r, shuffle=True, seed=3))
        seen += idx[:counts[r]]  # the real samples are each rank's first ones
    assert sorted(seen) == list(range(total))


def test_checksum_sees_one_bit():
    a = {"w": torch.tensor([1.0, 2.0]), "s": 0.5}
    b = {"w": torch.tensor([1.0, 2.0 + 2 ** -22]), "s": 0.5}
    assert distributed.checksum(a) == distributed.checksum(dict(a))
    assert distributed.checksum(a) != distributed.checksum(b)
    assert distributed.checksum(a) != distributed.checksum({**a, "s": 0.25})
