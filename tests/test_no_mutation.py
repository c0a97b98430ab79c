"""The user's model is never mutated: state_dict, module types, training flags and grad flags stay."""

from __future__ import annotations

import copy

import torch
from torch import nn

import snnbridge


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            [(n, m.training) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()])


def _assert_same(before, model):
    after = _snapshot(model)
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1:] == after[1:]


def test_conversion_leaves_the_user_model_untouched(small_resnet, calib_batches, test_input):
    model = small_resnet.train()  # a model left in training mode must stay in training mode
    before = _snapshot(model)
    reference = copy.deepcopy(model).eval()
    for recipe in (["maxnorm"], [{"robustnorm": {"channelwise": True}}]):
        snn = snnbridge.convert(model, recipe, calibration=calib_batches, timesteps=4, progress=False)
        snn(test_input)
    _assert_same(before, model)
    # BatchNorm running statistics did not move and the model still computes what it computed
    model.eval()
    torch.testing.assert_close(model(test_input), reference(test_input))


def test_snn_holds_its_own_parameters(small_resnet, calib_batches, test_input):
    snn = snnbridge.convert(small_resnet, ["maxnorm"], calibration=calib_batches, timesteps=4, progress=False)
    user_ptrs = {p.data_ptr() for p in small_resnet.parameters()}
    assert not user_ptrs & {p.data_ptr() for p in snn.parameters()}
    out = snn(test_input)
    with torch.no_grad():
        for p in small_resnet.parameters():
            p.add_(1.0)
    assert torch.equal(snn(test_input), out)
