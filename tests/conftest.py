"""Shared fixtures: the zoo's networks (tests/helpers/zoo.py) and calibration data, built from seeds."""

from __future__ import annotations

import pytest
import torch

from helpers import zoo

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test's default cache (``$XDG_CACHE_HOME``) is a temporary folder: a fake archive extracted by a test
    must never replace the real CIFAR-10 in the user's ``~/.cache/snnbridge`` (a benchmark reading it would see it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def small_resnet():
    return zoo.small_resnet()


@pytest.fixture
def calib_batches():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(16, 3, 8, 8, generator=g) for _ in range(4)]


@pytest.fixture
def test_input():
    g = torch.Generator().manual_seed(2)
    return torch.rand(6, 3, 8, 8, generator=g)
