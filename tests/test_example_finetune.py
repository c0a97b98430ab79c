"""examples/finetune end to end on a tiny fake CIFAR-10 archive: both framework loops, loss and surrogate options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import snnbridge

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from test_example_cifar10 import make_archive  # noqa: E402

from examples.cifar10 import run as crun  # noqa: E402
from examples.finetune import run as ft  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("fake") / "cifar10-jpeg.tar.gz", per_class=(6, 3))


def _args(archive, tmp_path, *extra):
    return ["--data", str(archive), "--ann-checkpoint", str(tmp_path / "ann.pt"), "--out", str(tmp_path / "out"),
            "--train-samples", "40", "--test-samples", "20", "--calib-samples", "20", "--batch-size", "20",
            "--epochs", "1", "--no-progress", *extra]


def test_both_framework_loops_fine_tune_and_report(archive, tmp_path, tmp_path_factory):
    # an untrained ANN instead of the cifar10 example's full training run
    model = crun.load_factory(crun.DEFAULT_MODEL)(num_classes=10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ann.pt")
    results = ft.main(_args(archive, tmp_path))
    # the fake archive went to the tests' private cache (conftest), not the user's ~/.cache/snnbridge
    cache = crun.cdata.default_cache_dir()
    assert cache.is_relative_to(tmp_path_factory.getbasetemp()) and (cache / crun.cdata.MARKER).is_file()
    assert [r["framework"] for r in results["runs"]] == ["spikingjelly", "snntorch"]
    for run in results["runs"]:
        assert 0.0 <= run["before"] <= 1.0 and 0.0 <= run["after"] <= 1.0
        assert len(run["history"]) == 1 and run["history"][0]["loss"] > 0
    # the same conversion and the same data: both frameworks start from the same SNN accuracy
    assert results["runs"][0]["before"] == results["runs"][1]["before"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"][0]["after"] == results["runs"][0]["after"]
    assert (tmp_path / "out" / "finetune.png").stat().st_size > 0


def test_fine_tuning_changes_the_weights_with_gsr_and_another_surrogate(archive, tmp_path):
    model = crun.load_factory(crun.DEFAULT_MODEL)(num_classes=10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ann.pt")
    args = ft.build_parser().parse_args(_args(archive, tmp_path, "--frameworks", "torch", "--loss",
                                              '[{"gsr": {"lam": 0.1}}]', "--surrogate", '{"sg": {"shape": "atan"}}'))
    data = ft.load_data(args)
    ann = ft.load_ann(args, data)
    snn = ft.convert(ann, data, args, "torch")
    snn.set_surrogate(snnbridge.surrogate(json.loads(args.surrogate), framework="torch"))
    before = {k: v.clone() for k, v in snn.state_dict().items()}
    history = ft.finetune(snn, data, snnbridge.training_loss(json.loads(args.loss)), args, "torch")
    assert history[0]["loss"] > 0
    changed = [k for k, v in snn.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "no weight moved"
    assert not any(p.requires_grad for p in snn.parameters())  # handed back frozen, like a fresh conversion


def test_bad_options_say_what_to_write(archive, tmp_path):
    with pytest.raises(SystemExit, match="--frameworks takes"):
        ft.main(_args(archive, tmp_path, "--frameworks", "jax"))
    with pytest.raises(SystemExit, match="--loss takes JSON"):
        ft.main(_args(archive, tmp_path, "--loss", "tet"))
