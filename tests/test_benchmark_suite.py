"""The benchmark suite (``python -m benchmarks``): a smoke run end to end, the training cache and resumption.

One ``--smoke`` run (tiny random data and networks, T up to 4) is shared by the module; the tests check that
what it writes holds what the suite claims to measure (accuracies recomputed independently, bold = best),
that the config hash follows the training config, that a cached or half-trained network is reused rather
than retrained, and that ``--resume`` redoes exactly the missing work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import snnbridge
from benchmarks import common
from benchmarks import networks as nets
from benchmarks import run as suite

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TRAINING = nets.Training(epochs=1, qcfs_epochs=1, batch_size=32, archs=nets.SMOKE_ARCHS)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    out = suite.main(["--smoke", "--no-progress", "--out", str(tmp / "results"), "--checkpoints", str(tmp / "ckpt")])
    return tmp, out


def _data():
    return nets.smoke(0, n_calib=256)


def test_smoke_writes_json_markdown_and_plots(smoke):
    tmp, out = smoke
    saved = json.loads(Path(out["paths"]["json"]).read_text())
    assert saved["config"]["timesteps"] == [1, 2, 4]
    assert list(saved["networks"]) == list(suite.SMOKE_NETWORKS)
    for name, net in saved["networks"].items():
        qcfs = nets.split_name(name)[1] is not None
        expected = {"qcfs", "qcfs+cos"} if qcfs else {"robustnorm", "snn_calibration", "SJ RateCoding 99.9%", "SJ LTB"}
        assert set(net["methods"]) == expected, name
        for label, res in net["methods"].items():
            assert "error" not in res, (name, label, res.get("error"))
            assert set(res["accuracy"]) == {"1", "2", "4"}
            assert all(0.0 <= a <= 1.0 for a in res["accuracy"].values())
            assert set(res["steps_run"]) == {"1", "2", "4"}
        if qcfs:
            assert "SpikingJelly converters" in net["skipped"]
            # cos needs rho = 4 look-ahead steps per site: more steps simulated than counted
            assert all(net["methods"]["qcfs+cos"]["steps_run"][t] > int(t) for t in ("1", "2", "4"))
            assert [t["target"] for t in net["targets"]] == [
                "best snnbridge recipe within 1.5 pt of the ANN at T = 2 (the QCFS ANN)"]
            best = max(r["accuracy"]["2"] for r in net["methods"].values())
            assert net["targets"][0]["gap_pt"] == pytest.approx(100 * (net["ann_accuracy"] - best), abs=0.01)
        else:
            assert net["methods"]["snn_calibration"]["kind"] == "per_T"  # PluginInfo.t_specific
            assert set(net["methods"]["snn_calibration"]["conversion_seconds"]) == {"1", "2", "4"}
            assert net["methods"]["robustnorm"]["kind"] == "sweep"
            assert set(net["methods"]["robustnorm"]["conversion_seconds"]) == {"all"}
            assert {"cos", "srp", "clipshift", "ftbc", "opi"} <= set(net["skipped"])  # each with its reason
    md = Path(out["paths"]["markdown"]).read_text()
    for name, net in saved["networks"].items():
        section = md.split(f"## {name}\n")[1].split("\n## ")[0]
        rows = [r for r in section.splitlines() if r.startswith("| ")]
        assert rows[0] == "| method | T=1 | T=2 | T=4 | conversion s |"
        assert rows[1].startswith(f"| ANN | {100 * net['ann_accuracy']:.2f} |")
        body = {r.split(" | ")[0][2:]: r.split(" | ")[1:4] for r in rows[2:]}
        assert set(body) == set(net["methods"])
        for j, t in enumerate(("1", "2", "4")):
            best = max(r["accuracy"][t] for r in net["methods"].values())
            for label, res in net["methods"].items():
                assert body[label][j].startswith("**") == (res["accuracy"][t] == best), (name, label, t)
                assert f"{100 * res['accuracy'][t]:.2f}" in body[label][j]
    assert len(out["paths"]["png"]) == len(saved["networks"])
    for png in out["paths"]["png"]:
        head = Path(png).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n" and Path(png).stat().st_size > 10_000


def test_smoke_figures_recomputed_from_the_checkpoint(smoke):
    """The ANN row and a method's accuracies are what an independent conversion of the cached network gives."""
    tmp, out = smoke
    data = _data()
    net = out["networks"]["vgg"]
    saved = torch.load(net["training"]["checkpoint"], weights_only=True)
    assert saved["complete"] and saved["config"] == nets.training_config("vgg", SMOKE_TRAINING, data)
    model = nets.build("vgg", SMOKE_TRAINING)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    test = (data.x_test, data.y_test)
    assert snnbridge.ann_accuracy(model, common.batches(test, 64)) == pytest.approx(net["ann_accuracy"])
    calib = data.calibration(32)
    snn = snnbridge.convert(model, suite.RELU_METHODS["robustnorm"].recipe, calibration=calib, timesteps=4,
                            progress=False)
    assert common.acc_at(snn, test, 2, 64) == pytest.approx(net["methods"]["robustnorm"]["accuracy"]["2"])
    snn = snnbridge.convert(model, ["snn_calibration"], calibration=calib, timesteps=2, progress=False)
    assert common.acc_at(snn, test, 2, 64) == pytest.approx(net["methods"]["snn_calibration"]["accuracy"]["2"])


def test_config_hash_follows_the_training_config():
    data = _data()
    base = nets.training_config("vgg", SMOKE_TRAINING, data)
    h = nets.config_hash(base)
    assert h == nets.config_hash(nets.training_config("vgg", replace(SMOKE_TRAINING), data))
    assert h == nets.config_hash(dict(reversed(list(base.items()))))  # key order is not part of it
    changed = [replace(SMOKE_TRAINING, epochs=2), replace(SMOKE_TRAINING, lr=0.1), replace(SMOKE_TRAINING, seed=1),
               replace(SMOKE_TRAINING, batch_size=64), replace(SMOKE_TRAINING, weight_decay=1e-4),
               replace(SMOKE_TRAINING, archs={**nets.SMOKE_ARCHS, "vgg": {"widths": [4, 16]}})]
    hashes = {nets.config_hash(nets.training_config("vgg", t, data)) for t in changed}
    assert h not in hashes and len(hashes) == len(changed)
    assert h != nets.config_hash(nets.training_config("vgg", SMOKE_TRAINING, nets.smoke(1)))  # other data
    # settings that do not touch the VGG ReLU network leave its hash alone
    for t in (replace(SMOKE_TRAINING, qcfs_epochs=3), replace(SMOKE_TRAINING, qcfs_lr=0.01),
              replace(SMOKE_TRAINING, archs={**nets.SMOKE_ARCHS, "resnet20": {"widths": [2, 4, 8], "blocks": 1}})):
        assert nets.config_hash(nets.training_config("vgg", t, data)) == h
    # a fine-tuned QCFS network names its parent, so retraining the parent changes the child's hash too
    q = nets.training_config("vgg-qcfs4", SMOKE_TRAINING, data)
    assert q["init"] == f"vgg-{h}"
    assert nets.config_hash(q) != nets.config_hash(nets.training_config("vgg-qcfs4", changed[0], data))
    assert nets.config_hash(q) != nets.config_hash(nets.training_config("vgg-qcfs8", SMOKE_TRAINING, data))
    scratch = nets.training_config("vgg-qcfs4", replace(SMOKE_TRAINING, qcfs_init="scratch"), data)
    assert scratch["init"] is None and nets.config_hash(scratch) != nets.config_hash(q)


def test_cached_checkpoint_is_reused_not_retrained(smoke, monkeypatch):
    tmp, _ = smoke

    def no_training(*a, **k):
        raise AssertionError("a cached network was trained again")

    monkeypatch.setattr(nets.example, "train", no_training)
    for name in suite.SMOKE_NETWORKS:
        model, meta = nets.obtain(name, SMOKE_TRAINING, _data(), tmp / "ckpt", log=lambda s: None)
        assert meta["loaded"] and meta["complete"] and meta["epochs_done"] == 1
        assert meta["commands"][0].startswith("python -m benchmarks --smoke")


def test_killed_training_resumes_to_the_same_network(tmp_path, monkeypatch):
    training = replace(SMOKE_TRAINING, epochs=3)
    data = _data()
    whole, meta_whole = nets.obtain("vgg", training, data, tmp_path / "a", log=lambda s: None)
    saves = []
    real_save = nets._save

    def killed_after_first_epoch(obj, path):
        real_save(obj, path)
        if path.suffix == ".pt" and not obj["complete"]:
            saves.append(obj["train_state"]["epoch"])
            raise KeyboardInterrupt

    monkeypatch.setattr(nets, "_save", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        nets.obtain("vgg", training, data, tmp_path / "b", log=lambda s: None)
    monkeypatch.setattr(nets, "_save", real_save)
    assert saves == [1]
    ckpt, meta_path = nets.paths("vgg", nets.training_config("vgg", training, data), tmp_path / "b")
    half = torch.load(ckpt, weights_only=True)
    assert not half["complete"] and half["train_state"]["epoch"] == 1
    logs = []
    resumed, meta = nets.obtain("vgg", training, data, tmp_path / "b", log=logs.append)
    assert any("resuming" in line and "after epoch 1/3" in line for line in logs)
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    final = torch.load(ckpt, weights_only=True)
    assert final["complete"] and "train_state" not in final  # complete checkpoints keep the weights only


def test_a_network_in_training_elsewhere_is_refused_and_a_stale_lock_taken_over(tmp_path):
    data = _data()
    ckpt, _ = nets.paths("vgg", nets.training_config("vgg", SMOKE_TRAINING, data), tmp_path)
    tmp_path.mkdir(exist_ok=True)
    lock = ckpt.with_suffix(".lock")
    lock.write_text(str(os.getppid()))  # a live process
    with pytest.raises(SystemExit, match="being trained by process"):
        nets.obtain("vgg", SMOKE_TRAINING, data, tmp_path, log=lambda s: None)
    assert not ckpt.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(str(gone.pid))  # its process has exited
    _, meta = nets.obtain("vgg", SMOKE_TRAINING, data, tmp_path, log=lambda s: None)
    assert meta["complete"] and not meta["loaded"] and not lock.exists()


def test_resume_redoes_only_missing_work(smoke, tmp_path, monkeypatch):
    src, out = smoke
    results = tmp_path / "results"
    shutil.copytree(src / "results", results)
    path = results / Path(out["paths"]["json"]).name
    saved = json.loads(path.read_text())
    vgg = saved["networks"]["vgg"]["methods"]
    del vgg["robustnorm"]
    del vgg["snn_calibration"]["accuracy"]["4"]  # a per-T method interrupted before its last T
    vgg["snn_calibration"]["complete"] = False
    kept = json.loads(json.dumps(saved["networks"]["resnet20"]))
    path.write_text(json.dumps(saved))
    calls = []
    real_convert = snnbridge.convert

    def counting(model, recipe, **kw):
        calls.append((recipe, kw["timesteps"]))
        return real_convert(model, recipe, **kw)

    monkeypatch.setattr(snnbridge, "convert", counting)
    monkeypatch.setattr(common, "run_spikingjelly", lambda *a, **k: pytest.fail("SpikingJelly results were redone"))
    again = suite.main(["--smoke", "--no-progress", "--out", str(results), "--checkpoints", str(src / "ckpt"),
                        "--resume"])
    assert calls == [(suite.RELU_METHODS["robustnorm"].recipe, 4), (["snn_calibration"], 4)]
    assert again["paths"]["json"] == str(path)
    after = json.loads(path.read_text())
    assert after["networks"]["resnet20"]["methods"] == kept["methods"]
    assert set(after["networks"]["vgg"]["methods"]["snn_calibration"]["accuracy"]) == {"1", "2", "4"}
    assert len(after["commands"]) == 2 and after["commands"][1].endswith("--resume")


def test_each_spikingjelly_converter_is_saved_as_it_finishes(smoke, tmp_path, monkeypatch):
    """A SpikingJelly block stopped part-way keeps the converters already done (saved one by one, on disk before
    the next starts) and marks only the unfinished ones as failed; a later --resume redoes only those."""
    src, out = smoke
    results = tmp_path / "results"
    shutil.copytree(src / "results", results)
    path = results / Path(out["paths"]["json"]).name
    saved = json.loads(path.read_text())
    for name in ("vgg", "resnet20"):
        for label in ("SJ RateCoding 99.9%", "SJ LTB"):
            del saved["networks"][name]["methods"][label]
    path.write_text(json.dumps(saved))
    on_disk = []

    def first_then_fail(model, calib, test, T, bs, labels, log=print, progress=True, on_result=None):
        labels = list(labels)
        on_result(labels[0], {"kind": "sweep", "curve": [0.25] * T, "conversion_seconds": {"all": 1.0},
                              "eval_seconds": 2.0})
        on_disk.append(json.loads(path.read_text())["networks"])
        raise RuntimeError("stopped")

    monkeypatch.setattr(common, "run_spikingjelly", first_then_fail)
    suite.main(["--smoke", "--no-progress", "--out", str(results), "--checkpoints", str(src / "ckpt"), "--resume"])
    assert [set(n["vgg"]["methods"]) & {"SJ RateCoding 99.9%", "SJ LTB"} for n in on_disk[:1]] == \
        [{"SJ RateCoding 99.9%"}]
    after = json.loads(path.read_text())["networks"]
    for name in ("vgg", "resnet20"):
        done, failed = after[name]["methods"]["SJ RateCoding 99.9%"], after[name]["methods"]["SJ LTB"]
        assert done["complete"] and done["accuracy"] == {"1": 0.25, "2": 0.25, "4": 0.25}, name
        assert failed["error"] == "RuntimeError: stopped", name
    redone = []

    def record(model, calib, test, T, bs, labels, log=print, progress=True, on_result=None):
        redone.append(list(labels))
        return {}

    monkeypatch.setattr(common, "run_spikingjelly", record)
    suite.main(["--smoke", "--no-progress", "--out", str(results), "--checkpoints", str(src / "ckpt"), "--resume"])
    assert redone == [["SJ LTB"], ["SJ LTB"]]


def test_a_row_measured_under_other_plugin_defaults_is_stale():
    """--resume keeps a row only if its recipe *with every default spelled out* is today's: a changed default
    (cos's rho went from 4 to auto) makes the stored row stale; rows from before options were stored stay."""
    method = suite.Method(["qcfs", "cos"])
    now = suite.resolved(method.recipe)
    assert now == [{"qcfs": {"levels": 8, "lambda_init": 8.0, "shift": 0.5}}, {"cos": {"rho": "auto", "rounds": 1}}]
    assert suite.current({"recipe": ["qcfs", "cos"], "options": now}, method)
    assert suite.current({"recipe": ["qcfs", "cos"]}, method)  # legacy row
    old = json.loads(json.dumps(now))
    old[1]["cos"]["rho"] = 4
    assert not suite.current({"recipe": ["qcfs", "cos"], "options": old}, method)
    assert not suite.current({"recipe": ["qcfs", "srp"], "options": now}, method)
    assert not suite.current(None, method)


def test_every_registered_method_is_run_or_skipped_with_a_reason():
    registry = snnbridge.get_registry()
    for network in ("vgg", "resnet20-qcfs8"):
        table, skipped = suite.methods_for(network)
        used = {n for m in table.values() for n in suite._names(m.recipe)}
        assert set(registry.names("method")) <= used | set(skipped), network
        assert all(reason for reason in skipped.values())
    relu, _ = suite.methods_for("vgg")
    assert suite.is_per_t(relu["snn_calibration"]) and suite.is_per_t(relu["robustnorm+ftbc"])
    assert not suite.is_per_t(relu["robustnorm"]) and not suite.is_per_t(relu["maxnorm"])
    assert suite.is_per_t(relu["ltb"])  # iterations: auto chooses for the conversion's T


def test_bad_names_are_refused_with_the_choices():
    with pytest.raises(SystemExit, match="unknown network 'vgg16'.*resnet20-qcfs8"):
        nets.split_name("vgg16")
    with pytest.raises(SystemExit):
        suite.main(["--smoke", "--methods", "robustnorm,nosuchmethod"])


def test_module_entry_and_scripts_still_run_as_files():
    for cmd in ([sys.executable, "-m", "benchmarks", "--help"],
                [sys.executable, "benchmarks/data_driven.py", "--help"]):
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "usage:" in done.stdout


def test_option_sweep_scores_on_training_images_the_calibration_never_saw_and_its_recipes_build():
    import numpy as np

    from benchmarks import option_sweep

    class Items(torch.utils.data.Dataset):  # torchvision CIFAR10's layout; the label is the index
        def __init__(self, n):
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(n))

        def __len__(self):
            return len(self.targets)

    train = Items(300)
    calib = nets.cdata.seeded_subset(train, 100, 2)
    picked = option_sweep.validation(train, set(calib.indices), 150, seed=123)
    again = option_sweep.validation(train, set(calib.indices), 150, seed=123)
    assert torch.equal(picked[1], again[1])  # seeded
    labels = picked[1].tolist()
    assert len(set(labels)) == 150 and not set(labels) & set(calib.indices)
    for group in option_sweep.GROUPS.values():
        for recipe in group.values():
            snnbridge.build_recipe(recipe)  # every variant names real plugins and valid options


def test_option_sweep_merge_keeps_rows_it_does_not_measure_again_and_refuses_another_checkpoint():
    from benchmarks import option_sweep

    base = {"network": "vgg", "checkpoint": "vgg-a.pt", "group": "ftbc", "val_images": 2000, "calib_images": 2048}
    old = {**base, "rows": [{"T": 8, "label": "a, x", "accuracy": 1.0}, {"T": 32, "label": "b", "accuracy": 2.0}],
           "command": "python benchmarks/option_sweep.py --only b"}
    new = {**base, "rows": [{"T": 8, "label": "a, x", "accuracy": 3.0}, {"T": 4, "label": "b", "accuracy": 4.0}],
           "command": "python benchmarks/option_sweep.py --only 'a, x'"}
    got = option_sweep.merged(old, new)
    assert [(r["T"], r["label"], r["accuracy"]) for r in got["rows"]] == [(4, "b", 4.0), (8, "a, x", 3.0),
                                                                           (32, "b", 2.0)]
    assert got["commands"] == [old["command"], new["command"]]
    with pytest.raises(SystemExit, match="checkpoint"):
        option_sweep.merged({**old, "checkpoint": "vgg-b.pt"}, new)


def test_sj_progress_off_disables_spikingjelly_calibration_bars_and_restores_them():
    from spikingjelly.activation_based.ann2snn.recipes import local_threshold_balancing, rate_coding

    before = rate_coding.tqdm, local_threshold_balancing.tqdm
    with pytest.raises(RuntimeError, match="inside"):
        with common.sj_progress(False):
            assert rate_coding.tqdm([1, 2]).disable and local_threshold_balancing.tqdm([1]).disable
            raise RuntimeError("inside")
    assert (rate_coding.tqdm, local_threshold_balancing.tqdm) == before  # restored even after an error
    with common.sj_progress(True):
        assert not rate_coding.tqdm([1, 2], file=open(os.devnull, "w")).disable


def test_option_sweep_quantized_ann_rounds_each_activation_to_T_levels_of_the_snn_threshold():
    from benchmarks import option_sweep

    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU(), torch.nn.Linear(1, 1))
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.fill_(1.0)
            lin.bias.zero_()
    x = torch.tensor([[0.0], [0.1], [0.2], [0.3], [0.7], [1.0], [-0.5]])
    snn = snnbridge.convert(net, ["maxnorm"], calibration=[x], timesteps=4, progress=False)  # theta = 1.0
    q = option_sweep.quantized_ann(net, snn, 4)
    # a * 4 + 1/2 = 0.5, 0.9, 1.3, 1.7, 3.3, 4.5, -1.5; floored and clamped to 0..4: 0, 0, 1, 1, 3, 4, 0; over 4
    expected = torch.tensor([[0.0], [0.0], [0.25], [0.25], [0.75], [1.0], [0.0]])
    torch.testing.assert_close(q(x), expected)
    torch.testing.assert_close(net(x), torch.relu(x))  # the user's model is untouched


def test_readme_block_copies_each_network_table_targets_and_plot_link(tmp_path):
    from benchmarks import readme_block

    md = tmp_path / "2026-01-01-box.md"
    md.write_text("# suite\n\nintro\n\n"
                  "## vgg\n\nANN test accuracy 86.00 %.\n\n| method | T=1 |\n|---|---|\n| ANN | 86.00 |\n\n"
                  "- met: target a\n- recipes: x\n\n"
                  "## vgg-qcfs4\n\nANN test accuracy 85.00 %.\n\n| method | T=1 |\n|---|---|\n| qcfs | 50.00 |\n\n"
                  "- NOT met: target b\n")
    out = readme_block.block(md, "INTRO", "OUTRO")
    assert out.startswith(readme_block.START + "\nINTRO") and out.endswith("OUTRO\n" + readme_block.END)
    assert "| ANN | 86.00 |" in out and "| qcfs | 50.00 |" in out and "- recipes" not in out
    assert out.index("- met: target a") < out.index("**vgg-qcfs4**") < out.index("- NOT met: target b")
    assert f"({md.with_suffix('').as_posix()}-vgg-qcfs4.png)" in out


def test_markdown_rows_follow_the_suite_table_whatever_order_a_resumed_file_holds():
    from benchmarks import common

    def row(acc):
        return {"recipe": ["x"], "accuracy": {"1": acc}, "conversion_seconds": {"all": 1.0}}

    # insertion order as a resumed file may hold it: an SJ converter, a later suite row, an unknown label, ...
    methods = {common.SJ_LABELS[-1]: row(0.2), "ltb": row(0.5), "custom": row(0.1), common.SJ_LABELS[0]: row(0.3),
               "maxnorm": row(0.4)}
    results = {"date": "2026-01-01", "machine": {"slug": "box"},
               "config": {"timesteps": [1], "test_samples": 10, "calib_samples": 4, "calib_batch": 2,
                          "backend": "torch"},
               "networks": {"vgg": {"training": {}, "ann_accuracy": 0.6, "methods": methods, "targets": []}}}
    md = suite.markdown(results)
    rows = [line.split(" | ")[0][2:] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith(("| method", "| ANN"))]
    assert rows == ["maxnorm", "ltb", "custom", common.SJ_LABELS[0], common.SJ_LABELS[-1]]
    assert "| ltb | **50.00** |" in md  # the best SNN still in bold
