"""The `snnbridge` command line (snnbridge/cli.py), its image-folder reader and snnbridge.save/load.

Commands run in-process through ``main([...])`` (fast); one test runs the real process to
check exit codes and stderr. Data is a tiny random image folder made in the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import snnbridge
from helpers import zoo
from snnbridge.cli import main
from snnbridge.data import DataError, open_image_folder

TESTS = Path(__file__).resolve().parent

MODEL = "helpers.zoo:make_net"
CLASSES = ("cat", "dog", "fox")


def _write_images(root: Path, per_class: int, seed: int, size: int = 16) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for ci, c in enumerate(CLASSES):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8)
            pixels[..., ci] = 255  # a class-dependent colour, so the data is not pure noise
            Image.fromarray(pixels.numpy()).save(d / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An image folder (train/ and test/ splits), a checkpoint of make_net, and recipe files."""
    root = tmp_path_factory.mktemp("cli")
    _write_images(root / "data" / "train", per_class=6, seed=0)
    _write_images(root / "data" / "test", per_class=4, seed=1)
    torch.manual_seed(0)
    torch.save({"model": zoo.make_net().state_dict(), "epoch": 7}, root / "ann.pt")
    (root / "recipe.yaml").write_text("recipe:\n  - robustnorm: {percentile: 99.5}\nbackend: torch\ntimesteps: 4\n")
    (root / "recipe.toml").write_text('recipe = [{maxnorm = {channelwise = true}}]\ntimesteps = 6\n'
                                      '[backend]\nname = "torch"\n')
    return root


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- help and plugins ----------------------------------------------------------------------------


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("plugins", "convert", "evaluate", "snnbridge plugins", "--model", "examples:"):
        assert word in out
    for command in ("plugins", "convert", "evaluate"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "example" in capsys.readouterr().out


def test_plugins_human_readable(capsys):
    rc, out, _ = run_cli(capsys, "plugins")
    assert rc == 0
    for text in ("maxnorm", "robustnorm", "torch", "stages: threshold", "stages: backend", "percentile", "= 99.9",
                 f"snnbridge {snnbridge.__version__}"):
        assert text in out
    rc, out, _ = run_cli(capsys, "plugins", "--all", "robustnorm")
    assert rc == 0 and "0 < percentile <= 100" in out and "Rueckauer" in out and "maxnorm" not in out


def test_plugins_json(capsys):
    rc, out, _ = run_cli(capsys, "plugins", "--json")
    assert rc == 0
    records = {r["name"]: r for r in json.loads(out)}
    assert {"maxnorm", "robustnorm", "torch"} <= set(records)
    rn = records["robustnorm"]
    assert rn["kind"] == "method" and rn["stages"] == ["threshold"] and rn["needs_data"] is True
    assert (rn["distribution"], rn["version"]) == ("snnbridge", snnbridge.__version__)
    perc = next(o for o in rn["options"] if o["name"] == "percentile")
    assert perc["type"] == "float" and perc["default"] == 99.9 and perc["help"]
    mom = next(o for o in records["maxnorm"]["options"] if o["name"] == "momentum")
    assert mom["default"] is None and mom["nullable"] is True
    assert records["torch"]["kind"] == "backend" and records["torch"]["stages"] == ["backend"]


# -- convert and evaluate -------------------------------------------------------------------------


def test_convert_yaml_then_evaluate(capsys, workdir, tmp_path):
    out_file = tmp_path / "snn.pt"
    rc, out, err = run_cli(capsys, "convert", "--config", workdir / "recipe.yaml", "--model", MODEL, "--checkpoint",
                           workdir / "ann.pt", "--data", workdir / "data", "--out", out_file, "--device", "cpu", "-v")
    assert rc == 0, err
    assert "sites:       2" in out and "thresholds:" in out and "T = 4 counted, 4 steps run" in out
    assert "18 of 18 images" in out and "saved:" in out and out_file.is_file()

    snn, info = snnbridge.load(out_file, with_info=True)
    assert isinstance(snn, snnbridge.SpikingModel)
    assert info["recipe"][0]["robustnorm"]["percentile"] == 99.5
    assert (info["backend"], info["timesteps"], info["snnbridge_version"]) == ("torch", 4, snnbridge.__version__)
    meta = info["metadata"]
    assert meta["model"] == MODEL and meta["classes"] == list(CLASSES)
    assert meta["data"]["mean"] == pytest.approx(list(snnbridge.data.CIFAR10_MEAN))

    json_file, plot_file = tmp_path / "acc.json", tmp_path / "acc.png"
    rc, out, err = run_cli(capsys, "evaluate", "--snn", out_file, "--data", workdir / "data", "--model", MODEL,
                           "--checkpoint", workdir / "ann.pt", "--report-timesteps", "1,2,8", "--json", json_file,
                           "--plot", plot_file, "--batch-size", 5, "--device", "cpu")
    assert rc == 0, err
    assert "ANN accuracy" in out and "steps run" in out
    result = json.loads(json_file.read_text())
    assert result["timesteps"] == [1, 2, 8] and result["steps_run"] == [1, 2, 8]
    assert result["samples"] == 12 and result["split"] == "test" and 0 <= result["ann_accuracy"] <= 1
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the accuracy read from one sweep equals a separate run of exactly T steps
    data = open_image_folder(workdir / "data", "test")
    x, y = data.load(range(len(data)))
    with torch.no_grad():
        for r in result["results"]:
            expected = (snn(x, timesteps=r["T"]).argmax(-1) == y).double().mean().item()
            assert r["accuracy"] == pytest.approx(expected)
        ann = zoo.make_net()
        ann.load_state_dict(torch.load(workdir / "ann.pt")["model"])
        assert result["ann_accuracy"] == pytest.approx((ann.eval()(x).argmax(-1) == y).double().mean().item())


def test_convert_toml_with_overrides_and_tar_archive(capsys, workdir, tmp_path):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(workdir / "data", arcname="mini")
    out_file = tmp_path / "sub" / "snn.pt"
    rc, out, err = run_cli(capsys, "convert", "--config", workdir / "recipe.toml", "--model", MODEL, "--checkpoint",
                           workdir / "ann.pt", "--data", archive, "--calib-samples", 5, "--timesteps", 3, "--out",
                           out_file, "--seed", 3)
    assert rc == 0, err
    assert "5 of 18 images" in out and "T = 3 counted" in out and "per-channel" in out
    snn, info = snnbridge.load(out_file, with_info=True)
    assert info["timesteps"] == 3 and info["recipe"] == [{"maxnorm": {"channelwise": True, "momentum": None}}]
    assert info["metadata"]["calibration"]["seed"] == 3

    # evaluate straight from the recipe (converting on the fly), JSON on stdout
    rc, out, err = run_cli(capsys, "evaluate", "--config", workdir / "recipe.yaml", "--model", MODEL, "--checkpoint",
                           workdir / "ann.pt", "--data", archive, "--samples", 7, "--json", "-")
    assert rc == 0, err
    result = json.loads(out)
    assert result["samples"] == 7 and result["timesteps"] == [1, 2, 4] and result["ann_accuracy"] is not None
    assert "SNN accuracy" in err  # the table goes to stderr when stdout carries the JSON


def test_model_from_current_directory_and_config_keys(capsys, workdir, tmp_path, monkeypatch):
    (tmp_path / "cwd_nets_for_cli.py").write_text(
        "from torch import nn\n\n"
        "def make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5), nn.ReLU(), nn.Linear(5, 3))\n")
    (tmp_path / "run.yaml").write_text(f"recipe: [maxnorm]\ntimesteps: 2\nmodel: cwd_nets_for_cli:make\n"
                                       f"data: {{path: {workdir / 'data'}, image_size: 16}}\nseed: 3\n")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, "convert", "--config", "run.yaml", "--out", "snn.pt", "--random-init")
    assert rc == 0, err
    assert (tmp_path / "snn.pt").is_file() and "sites:       1" in out
    record = json.loads((tmp_path / "snn.run.json").read_text())
    assert record["seed"] == 3 and record["calibration"]["seed"] == 3  # the config's seed is used, not ignored


# -- errors -------------------------------------------------------------------------------------------


def _convert_args(workdir, tmp_path, **over):
    args = {"--config": workdir / "recipe.yaml", "--model": MODEL, "--checkpoint": workdir / "ann.pt",
            "--data": workdir / "data", "--out": tmp_path / "snn.pt"}
    args.update(over)
    return ["convert"] + [str(x) for kv in args.items() if kv[1] is not None for x in kv]


@pytest.mark.parametrize("case, expected", [
    ("bad_yaml", "line 3"),
    ("unknown_plugin", "Did you mean 'robustnorm'"),
    ("unknown_option", "has no option 'percentil'"),
    ("missing_checkpoint", "does not exist"),
    ("wrong_checkpoint", "does not fit the model"),
    ("missing_module", "cannot import module 'no_such_module_xyz'"),
    ("missing_factory", "Did you mean 'make_net'"),
    ("missing_data", "does not exist"),
    ("no_data", "needs calibration images: add --data"),
    ("unknown_backend", "Did you mean 'torch'"),
    ("missing_config", "does not exist"),
    ("grey_data", "the model failed on inputs shaped [18, 1, 16, 16]"),
])
def test_user_errors_exit_2_without_traceback(capsys, workdir, tmp_path, case, expected):
    over = {}
    if case == "bad_yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("recipe:\n  - robustnorm: {percentile: 99.5\nbackend: torch\n")
        over["--config"] = bad
    elif case in ("unknown_plugin", "unknown_option"):
        cfg = tmp_path / "r.yaml"
        cfg.write_text("recipe:\n  - robustnrm: {}\n" if case == "unknown_plugin" else
                       "recipe:\n  - robustnorm: {percentil: 99}\n")
        over["--config"] = cfg
    elif case == "missing_checkpoint":
        over["--checkpoint"] = tmp_path / "nope.pt"
    elif case == "wrong_checkpoint":
        over["--model"] = "helpers.zoo:make_wide_net"
    elif case == "missing_module":
        over["--model"] = "no_such_module_xyz:make"
    elif case == "missing_factory":
        over["--model"] = "helpers.zoo:make_nett"
    elif case == "missing_data":
        over["--data"] = tmp_path / "nodata"
    elif case == "no_data":
        over["--data"] = None
    elif case == "unknown_backend":
        over["--backend"] = "torhc"
    elif case == "missing_config":
        over["--config"] = tmp_path / "none.yaml"
    elif case == "grey_data":  # one channel into a 3-channel model: the hint names the preprocessing flags
        over.update({"--mean": "0.5", "--std": "0.5"})
    rc, out, err = run_cli(capsys, *_convert_args(workdir, tmp_path, **over))
    assert rc == 2
    assert err.startswith("snnbridge: error: ") and expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "snn.pt").exists()


def test_evaluate_errors(capsys, workdir, tmp_path):
    rc, _, err = run_cli(capsys, "evaluate", "--snn", tmp_path / "none.pt", "--data", workdir / "data")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli(capsys, "evaluate", "--snn", workdir / "ann.pt", "--data", workdir / "data")
    assert rc == 2 and "not an SNN saved by snnbridge" in err
    rc, _, err = run_cli(capsys, "evaluate", "--data", workdir / "data")
    assert rc == 2 and "--snn" in err


def test_real_process_exit_code_and_stderr(workdir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "snnbridge", "convert", "--config", str(tmp_path / "missing.yaml"),
                           "--model", MODEL, "--out", str(tmp_path / "o.pt")],
                          capture_output=True, text=True, cwd=TESTS, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("snnbridge: error: ") and "Traceback" not in proc.stderr


# -- the image-folder reader and save/load ---------------------------------------------------------------


def test_image_folder_sampling_is_seeded_and_spans_classes(workdir):
    data = open_image_folder(workdir / "data", "train")
    assert data.classes == list(CLASSES) and len(data) == 18 and data.split == "train"
    a, b = data.sample(6, seed=0), data.sample(6, seed=0)
    assert a == b and a != list(range(6)) and data.sample(6, seed=1) != a
    labels = {data.items[i][1] for i in a}
    assert len(labels) > 1  # images are stored class by class: the first 6 would be one class
    x, y = data.load(a)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [data.items[i][1] for i in a]
    flat = open_image_folder(workdir / "data" / "test")  # no split folder: <class>/<image> at the root
    assert flat.split is None and len(flat) == 12
    with pytest.raises(DataError, match="has no 'val' split"):
        open_image_folder(workdir / "data", "val")


# -- reproducibility: run records, bit-identical conversions ---------------------------------------------


def _data_driven_recipe(root: Path) -> Path:
    path = root / "ftbc.yaml"
    if not path.exists():
        path.write_text("recipe:\n  - robustnorm: {percentile: 99.5}\n  - ftbc: {batches: 2, iterations: 1}\n"
                        "backend: torch\ntimesteps: 4\n")
    return path


def test_convert_twice_gives_identical_snns_and_run_records(capsys, workdir, tmp_path):
    import hashlib

    from snnbridge.runrecord import without_timing

    out, first = tmp_path / "out" / "snn.pt", tmp_path / "first"
    argv = ["convert", "--config", _data_driven_recipe(workdir), "--model", MODEL, "--checkpoint", workdir / "ann.pt",
            "--data", workdir / "data", "--calib-samples", 10, "--batch-size", 4, "--seed", 5, "--out", out,
            "--device", "cpu"]
    records = []
    for i in range(2):
        rc, stdout, err = run_cli(capsys, *argv)
        assert rc == 0, err
        assert "run record:" in stdout
        records.append(json.loads((tmp_path / "out" / "snn.run.json").read_text()))
        if i == 0:  # same --out both times: the command lines are the same
            first.mkdir()
            out.rename(first / "snn.pt")
    a, b = snnbridge.load(first / "snn.pt"), snnbridge.load(out)
    x, _ = open_image_folder(workdir / "data", "test").load(range(12))
    with torch.no_grad():
        assert torch.equal(a(x), b(x)) and torch.equal(a.sweep(x), b.sweep(x))
    for name in a.specs:
        assert torch.equal(a.specs[name].step_bias, b.specs[name].step_bias)
    assert records[0]["timing"]["started_at"] != records[1]["timing"]["started_at"]
    assert without_timing(records[0]) == without_timing(records[1])

    rec = records[0]
    data = open_image_folder(workdir / "data", "train")
    assert rec["command"] == "convert" and rec["command_line"].startswith("snnbridge convert --config ")
    assert rec["calibration"]["indices"] == data.sample(10, seed=5) and rec["calibration"]["batch_size"] == 4
    assert rec["seeds"] == {"model_init": 5, "calibration_sample": 5, "conversion": 5} and rec["seed"] == 5
    assert rec["recipe"][1]["ftbc"]["alpha"] is not None  # every option, resolved (defaults included)
    assert rec["recipe"][1]["ftbc"]["on_mismatch"] == "warn" and rec["recipe"][0]["robustnorm"]["percentile"] == 99.5
    assert rec["backend"]["name"] == "torch" and isinstance(rec["backend"]["options"], dict) and rec["timesteps"] == 4
    assert rec["model"]["checkpoint_sha256"] == hashlib.sha256((workdir / "ann.pt").read_bytes()).hexdigest()
    assert rec["model"]["random_init"] is False and rec["model"]["spec"] == MODEL
    assert rec["data"]["normalisation"]["mean"] == pytest.approx(list(snnbridge.data.CIFAR10_MEAN))
    assert rec["data"]["split"] == "train" and rec["data"]["classes"] == list(CLASSES)
    versions = rec["versions"]
    assert versions["snnbridge"] == snnbridge.__version__ and versions["torch"] and versions["python"]
    assert {"numpy", "spikingjelly", "snntorch"} <= set(versions)
    _, info = snnbridge.load(first / "snn.pt", with_info=True)
    assert without_timing(info["metadata"]["run"]) == without_timing(rec)  # the SNN file carries it too


def test_evaluate_writes_a_run_record_next_to_its_results(capsys, workdir, tmp_path):
    snn_file = tmp_path / "snn.pt"
    rc, _, err = run_cli(capsys, *_convert_args(workdir, tmp_path))
    assert rc == 0, err
    rc, _, err = run_cli(capsys, "evaluate", "--snn", snn_file, "--data", workdir / "data", "--samples", 7,
                         "--seed", 2, "--json", tmp_path / "res" / "acc.json", "--plot", tmp_path / "res" / "acc.png")
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["acc.json", "acc.png", "acc.run.json"]
    rec = json.loads((tmp_path / "res" / "acc.run.json").read_text())
    test = open_image_folder(workdir / "data", "test")
    assert rec["command"] == "evaluate" and rec["evaluation"]["indices"] == test.sample(7, seed=2)
    assert rec["evaluation"]["report_timesteps"] == [1, 2, 4] and rec["timesteps"] == 4
    assert rec["snn"]["sha256"] == snnbridge.runrecord.sha256_file(snn_file)
    assert rec["snn"]["conversion"]["calibration"]["indices"] == open_image_folder(workdir / "data").sample(512)
    assert rec["model"] is None and rec["data"]["split"] == "test"

    rc, out, err = run_cli(capsys, "evaluate", "--snn", snn_file, "--data", workdir / "data", "--json", "-")
    assert rc == 0, err
    assert json.loads(out)["run"]["evaluation"]["samples"] == 12  # no file to sit next to: it is in the JSON


# -- no random weights by accident -------------------------------------------------------------------------


def test_convert_and_evaluate_need_a_checkpoint_or_random_init(capsys, workdir, tmp_path):
    from snnbridge.cli import CliError

    fix = r"no checkpoint for helpers\.zoo:make_net.*--checkpoint FILE.*'checkpoint: FILE'.*--random-init"
    with pytest.raises(CliError, match=fix):
        main(["--debug"] + _convert_args(workdir, tmp_path, **{"--checkpoint": None}))
    with pytest.raises(CliError, match=fix):
        main(["--debug", "evaluate", "--config", str(workdir / "recipe.yaml"), "--model", MODEL, "--data",
              str(workdir / "data")])
    with pytest.raises(CliError, match="--random-init and --checkpoint contradict"):
        main(["--debug"] + _convert_args(workdir, tmp_path) + ["--random-init"])
    assert not (tmp_path / "snn.pt").exists()

    rc, _, err = run_cli(capsys, *_convert_args(workdir, tmp_path, **{"--checkpoint": None}), "--random-init")
    assert rc == 0, err
    rec = json.loads((tmp_path / "snn.run.json").read_text())
    assert rec["model"]["random_init"] is True and rec["model"]["checkpoint_sha256"] is None


# -- one meaning per flag -------------------------------------------------------------------------------------


def test_timesteps_is_the_conversion_T_in_every_command(capsys, workdir, tmp_path):
    from snnbridge.cli import CliError

    common = ["evaluate", "--config", workdir / "recipe.yaml", "--model", MODEL, "--checkpoint", workdir / "ann.pt",
              "--data", workdir / "data", "--samples", 4, "--json", "-"]
    rc, out, err = run_cli(capsys, *common, "--timesteps", 3, "--report-timesteps", "1,3")
    assert rc == 0, err
    result = json.loads(out)
    assert result["snn_timesteps"] == 3 and result["timesteps"] == [1, 3] and "deprecated" not in err
    rc, out, err = run_cli(capsys, *common, "-T", 2)
    assert rc == 0 and json.loads(out)["timesteps"] == [1, 2]  # default report: up to the conversion T

    # the old spellings work for one release, with a warning naming the new flag
    rc, out, err = run_cli(capsys, *common, "--timesteps", "1,2")
    assert rc == 0 and json.loads(out)["timesteps"] == [1, 2] and json.loads(out)["snn_timesteps"] == 4
    assert "deprecated" in err and "--report-timesteps 1,2" in err
    rc, out, err = run_cli(capsys, *common, "--convert-timesteps", 2)
    assert rc == 0 and json.loads(out)["snn_timesteps"] == 2 and "write --timesteps 2" in err

    rc, _, err = run_cli(capsys, *_convert_args(workdir, tmp_path))
    assert rc == 0, err
    with pytest.raises(CliError, match="converted already.*--report-timesteps 8"):
        main(["--debug", "evaluate", "--snn", str(tmp_path / "snn.pt"), "--data", str(workdir / "data"),
              "--timesteps", "8"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = capsys.readouterr().out
    assert "--report-timesteps" in help_text and "--convert-timesteps" not in help_text


# -- T-specific corrections: reported T values past the calibrated T ------------------------------------------


def test_evaluate_refuses_reported_T_past_a_T_specific_correction(capsys, workdir, tmp_path, monkeypatch):
    from snnbridge.errors import TimestepError

    recipe = _data_driven_recipe(workdir)  # ftbc, converted for T = 4
    rc, _, err = run_cli(capsys, *_convert_args(workdir, tmp_path, **{"--config": recipe}))
    assert rc == 0, err
    fix = r"asks for T = 8, but .*the largest T it can report is 4.*--report-timesteps 1,2,4.*--timesteps 8"
    with pytest.raises(TimestepError, match=fix):
        main(["--debug", "evaluate", "--snn", str(tmp_path / "snn.pt"), "--data", str(workdir / "data"),
              "--report-timesteps", "2,8"])

    def no_conversion(*a, **k):
        raise AssertionError("converted before checking the reported T values")

    monkeypatch.setattr(sys.modules["snnbridge.convert"], "convert", no_conversion)
    with pytest.raises(TimestepError, match=r"ftbc is T-specific, calibrated for T = 4.*" + fix.split(".*", 1)[1]):
        main(["--debug", "evaluate", "--config", str(recipe), "--model", MODEL, "--checkpoint",
              str(workdir / "ann.pt"), "--data", str(workdir / "data"), "--report-timesteps", "2,8"])
    rc, _, err = run_cli(capsys, "evaluate", "--config", recipe, "--model", MODEL, "--checkpoint",
                         workdir / "ann.pt", "--data", workdir / "data", "--report-timesteps", "8")
    assert rc == 2 and err.startswith("snnbridge: error: --report-timesteps asks for T = 8")


def test_evaluate_plot_title_names_what_matters(workdir):
    from snnbridge.cli import _plot_title

    recipe = snnbridge.build_recipe([{"robustnorm": {"percentile": 99.5}}, "ftbc"]).to_list()
    title = _plot_title({"recipe": recipe, "backend": "spikingjelly", "snn_timesteps": 16, "samples": 100,
                         "split": "test"})
    assert title.splitlines()[0] == "SNN accuracy vs T: robustnorm (percentile 99.5) + ftbc"
    assert "spikingjelly backend, converted for T = 16" in title and "100 test images" in title
    assert "channelwise" not in title and "alpha" not in title  # default options are left out
