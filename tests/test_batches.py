"""One reading of the user's batches (snnbridge.batches): every entry point takes the same shapes - tuples,
dicts, a whole (images, labels) pair - and gives the same numbers for them; bad items are refused by position."""

from __future__ import annotations

import pytest
import torch

import snnbridge
from helpers import zoo
from helpers.plugins import fixed_threshold
from snnbridge import InputError, robustness
from snnbridge.batches import is_whole_pair, labelled_batches, split_item, total_samples


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_split_item_reads_each_shape():
    x, y = _data(4)
    assert split_item(x) == (x, None)
    assert split_item((x, y))[1] is y and split_item([x, y, "path"])[0] is x
    assert split_item({"image": x, "label": y}) == (x, y)
    assert split_item({"pixel_values": x, "targets": y}) == (x, y)
    assert split_item({"image": x, "label": [0, 1, 2, 0]}) == (x, None)  # labels must be a tensor
    assert split_item({"pixels": x, "label": y}) == (None, None)  # no input key: nothing, not the labels alone
    assert split_item("x") == (None, None)


def test_a_whole_pair_is_told_from_a_list_of_batches():
    x, y = _data(6)
    assert is_whole_pair((x, y)) and is_whole_pair([x, y])
    assert not is_whole_pair([(x, y), (x, y)])
    assert not is_whole_pair([x, x])  # two input batches: their per-sample shapes agree
    assert not is_whole_pair((x, y[:5]))  # one target per image
    assert is_whole_pair((x, y.float()))  # targets are checked by their reader, which names the fix (below)
    assert total_samples((x, y)) == 6
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    assert total_samples(loader) == 6 and total_samples(iter([(x, y)])) is None
    assert [b[0].shape[0] for b in labelled_batches(loader, "test")] == [4, 2]


@pytest.mark.parametrize("data, match", [
    (torch.zeros(2, 3), "test data must be a DataLoader .* got a Tensor"),
    (5, "got a int"),
    ([(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), torch.zeros(2, 3)], "test batch 2 is a Tensor"),
    ([{"pixels": torch.zeros(2, 3), "label": torch.zeros(2, dtype=torch.long)}],
     "test batch 1 is a dict.*pixel_values"),
])
def test_a_batch_without_images_and_labels_is_refused_by_position(data, match):
    with pytest.raises(InputError, match=match):
        list(labelled_batches(data, "test"))


@pytest.fixture(scope="module")
def snn_and_ann():
    torch.manual_seed(0)
    ann = zoo.make_net().eval()
    x, _ = _data(16, seed=1)
    return snnbridge.convert(ann, [fixed_threshold("one", 1.0)], example_input=x, timesteps=4, progress=False), ann


def test_accuracy_curve_is_the_same_for_tuples_dicts_and_a_whole_pair(snn_and_ann):
    snn, ann = snn_and_ann
    x, y = _data()
    tuples = [(x[:16], y[:16]), (x[16:], y[16:])]
    dicts = [{"image": a, "label": b} for a, b in tuples]
    results = [snnbridge.accuracy_curve(snn, d, [1, 2, 4], ann=ann, progress=False) for d in (tuples, dicts, (x, y))]
    for r in results[1:]:
        assert r["accuracy"] == results[0]["accuracy"] and r["ann_accuracy"] == results[0]["ann_accuracy"]
    assert results[0]["samples"] == 24
    assert snnbridge.ann_accuracy(ann, dicts) == snnbridge.ann_accuracy(ann, (x, y)) == results[0]["ann_accuracy"]


def test_robustness_takes_dict_batches_like_tuples(snn_and_ann):
    _, ann = snn_and_ann
    x, y = _data()
    kw = dict(eps=(0.05,), attacks=("noise", "fgsm"), progress=False)
    as_tuples = robustness.evaluate(ann, [(x[:12], y[:12]), (x[12:], y[12:])], **kw)
    as_dicts = robustness.evaluate(ann, [{"images": x[:12], "labels": y[:12]}, {"images": x[12:], "labels": y[12:]}],
                                   **kw)
    assert as_dicts.samples == as_tuples.samples == 24
    assert as_dicts.clean_accuracy == as_tuples.clean_accuracy and as_dicts.accuracy == as_tuples.accuracy


def test_a_whole_pair_with_float_labels_gets_the_readers_error(snn_and_ann):
    _, ann = snn_and_ann
    x, y = _data()
    with pytest.raises(InputError, match=r"class indices .*float32.*y\.argmax\(1\)"):
        robustness.evaluate(ann, (x, y.float()), progress=False)
    with pytest.raises(InputError, match="labels must be a 1-D integer tensor"):
        snnbridge.report(ann, snn_and_ann[0], (x, y.float()), timesteps=2)


def test_calibration_reads_dict_batches_like_tuples(snn_and_ann):
    _, ann = snn_and_ann
    x, y = _data(32, seed=2)
    tuples = [(x[:16], y[:16]), (x[16:], y[16:])]
    dicts = [{"pixel_values": a, "targets": b} for a, b in tuples]
    a = snnbridge.convert(ann, ["maxnorm"], calibration=tuples, timesteps=4, progress=False)
    b = snnbridge.convert(ann, ["maxnorm"], calibration=dicts, timesteps=4, progress=False)
    assert all(torch.equal(torch.as_tensor(a.specs[n].threshold), torch.as_tensor(b.specs[n].threshold))
               for n in a.specs)
    with pytest.raises(snnbridge.CalibrationError, match="a calibration item is a str"):
        snnbridge.convert(ann, ["maxnorm"], calibration=["batch"], timesteps=4, progress=False)
