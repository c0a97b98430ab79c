"""Shared fixtures: the zoo's networks (tests/helpers/zoo.py) and calibration data, built from seeds."""

from __future__ import annotations

import pytest
import torch

from helpers import zoo

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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
