"""``torchrun --nproc_per_node=2 -m snnbridge convert|evaluate``: the same results as one process, one set of files.

Real torchrun runs (``python -m torch.distributed.run --standalone``, gloo on the loopback,
one thread per rank, bounded by a timeout) on a tiny image folder written here: 8x8 PNGs drawn
from the class templates the helper network (helpers.data_driven, BNNet) was trained on, so its
predictions vary from image to image and with T and a miscounted sample would show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnbridge
from helpers import data_driven
from snnbridge.cli import main

TESTS = Path(__file__).resolve().parent
MODEL = "helpers.zoo:BNNet"
NORM = ["--image-size", "8", "--mean", "0.5,0.5,0.5", "--std", "0.157,0.157,0.157"]
TIMEOUT_S = 150


def _write_images(root: Path, n: int, seed: int) -> None:
    """``n`` PNGs in class folders; after the normalisation in NORM a pixel is about template + noise."""
    from PIL import Image

    x, y = data_driven.make_data(n, seed)
    pixels = (128 + 40 * x).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    for i in range(n):
        folder = root / f"class{int(y[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i].numpy()).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Image folder (train: 18, test: 15 images), the trained BNNet's checkpoint, a maxnorm recipe, one-process runs."""
    root = tmp_path_factory.mktemp("dcli")
    _write_images(root / "data" / "train", 18, seed=1)
    _write_images(root / "data" / "test", 15, seed=3)
    torch.save(data_driven.trained_net().state_dict(), root / "ann.pt")
    (root / "recipe.yaml").write_text("recipe:\n  - maxnorm: {}\nbackend: torch\ntimesteps: 6\n")
    assert main(["convert", "--config", str(root / "recipe.yaml"), "--model", MODEL, "--checkpoint",
                 str(root / "ann.pt"), "--data", str(root / "data"), "--out", str(root / "one.pt"), "--device", "cpu",
                 "--batch-size", "8", *NORM]) == 0
    assert main(evaluate_args(root, root / "one.pt", root / "one.json")) == 0
    return root


def evaluate_args(root: Path, snn: Path, out_json: Path) -> list[str]:
    # 13 of 15 test images (7 and 6 per rank, one padded), the ANN for comparison
    return ["evaluate", "--snn", str(snn), "--model", MODEL, "--checkpoint", str(root / "ann.pt"),
            "--data", str(root / "data"), "--samples", "13", "--batch-size", "4", "--json", str(out_json),
            "--device", "cpu", *NORM]


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "snnbridge", *argv], capture_output=True, text=True, cwd=TESTS, env=env,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_torchrun_evaluate_equals_one_process(workdir, tmp_path):
    out = tmp_path / "two.json"
    proc = torchrun(*evaluate_args(workdir, workdir / "one.pt", out), "--plot", str(tmp_path / "two.png"))
    one, two = json.loads((workdir / "one.json").read_text()), json.loads(out.read_text())
    assert len(set(one["accuracy"])) > 1 and 0 < one["ann_accuracy"] < 1  # a miscounted sample would show
    for key in ("timesteps", "accuracy", "steps_run", "ann_accuracy", "samples", "results"):
        assert two[key] == one[key], key
    assert (one["samples"], one["ranks"], two["ranks"]) == (13, 1, 2)
    assert proc.stdout.count("SNN accuracy") == 1 and proc.stdout.count("wrote ") == 3  # rank 0 prints, once
    assert proc.stderr.count("DistributedSampler repeats 1 of them on the last ranks (left out of the counts)") == 1
    record = json.loads((tmp_path / "two.run.json").read_text())
    assert record["distributed"] == {"ranks": 2, "backend": "gloo"}
    assert record["evaluation"]["indices"] == json.loads((workdir / "one.run.json").read_text())["evaluation"][
        "indices"]
    assert (tmp_path / "two.png").stat().st_size > 0


@pytest.mark.skipif(not hasattr(snnbridge.ConversionContext, "all_max"),
                    reason="waits for the distributed conversion (ConversionContext reductions)")
def test_torchrun_convert_equals_one_process(workdir, tmp_path):
    out = tmp_path / "two.pt"
    proc = torchrun("convert", "--config", str(workdir / "recipe.yaml"), "--model", MODEL, "--checkpoint",
                    str(workdir / "ann.pt"), "--data", str(workdir / "data"), "--out", str(out), "--device", "cpu",
                    "--batch-size", "8", *NORM)
    assert proc.stdout.count("saved:") == 1
    one, two = snnbridge.load(workdir / "one.pt"), snnbridge.load(out)
    # the same maxima over the same images; per-rank batches of 4 (one thread) round differently from batches of 8
    for name, spec in one.specs.items():
        assert two.specs[name].threshold == pytest.approx(spec.threshold, rel=1e-6), name
    for key, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    record = json.loads((tmp_path / "two.run.json").read_text())
    assert record["distributed"] == {"ranks": 2, "backend": "gloo"}
    assert record["calibration"]["batch_size"] == 8 and record["calibration"]["batch_size_per_rank"] == 4


def test_report_refuses_torchrun(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rc = main(["report", str(workdir / "one.pt"), "--data", str(workdir / "data"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "snnbridge: error (rank 1): `snnbridge report` runs in one process" in err
    assert not (tmp_path / "r").exists()
