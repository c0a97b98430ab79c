"""examples/cifar10: the data helper and the main script, end to end, on a tiny fake CIFAR-10 archive.

The archive is built in the test (random 32x32 JPEGs in the real layout, cifar10/{train,test}/<class>/),
so nothing is downloaded and the real data set is not needed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples.cifar10 import data as cdata  # noqa: E402
from examples.cifar10 import run as crun  # noqa: E402
from examples.cifar10.model import make_model  # noqa: E402

CLASSES = cdata.CLASSES


def make_archive(path: Path, per_class=(4, 2), seed: int = 0) -> Path:
    """A tar.gz shaped like cifar10-jpeg.tar.gz: cifar10/{train,test}/<class>/NNNN.jpg, random images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = path.parent / (path.name + ".src")
    for split, n in zip(("train", "test"), per_class):
        for k, cls in enumerate(CLASSES):
            folder = src / "cifar10" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                # a class-dependent mean colour, so a model can learn something
                img = np.clip(rng.normal(25 * k, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i:04d}.jpg", quality=90)
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src / "cifar10", arcname="cifar10")
    return path


@pytest.fixture
def archive(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cdata.ENV_VAR, raising=False)
    return make_archive(tmp_path / "cifar10-jpeg.tar.gz")


def test_extract_is_idempotent_and_loads(archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    root = cdata.extract(archive, cache, quiet=True)
    assert root == cache and (cache / "train" / "cat").is_dir() and (cache / cdata.MARKER).is_file()
    assert len(list((cache / "test" / "ship").glob("*.jpg"))) == 2
    assert not list(cache.glob(".extract-*")), "the temporary extraction folder must be removed"

    def no_reopen(*a, **k):
        raise AssertionError("a second extract of the same archive must not read it again")

    with monkeypatch.context() as mp:
        mp.setattr(cdata.tarfile, "open", no_reopen)
        assert cdata.extract(archive, cache, quiet=True) == cache

    # the archive, and the extracted folder, both load with ImageFolder
    for source in (archive, cache):
        train, test = cdata.load_splits(source, cache_dir=cache)
        assert list(train.classes) == list(CLASSES) and len(train) == 40 and len(test) == 20
        x, y = train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # default cache location follows $XDG_CACHE_HOME
    assert cdata.default_cache_dir() == tmp_path / "xdg" / "snnbridge" / "cifar10"
    # archive found through the environment variable
    monkeypatch.setenv(cdata.ENV_VAR, str(archive))
    assert cdata.find_archive() == archive


def test_seeded_subset_is_random_and_reproducible(archive, tmp_path):
    train, _ = cdata.load_splits(archive, cache_dir=tmp_path / "c")
    a = cdata.seeded_subset(train, 12, seed=3)
    b = cdata.seeded_subset(train, 12, seed=3)
    c = cdata.seeded_subset(train, 12, seed=4)
    assert a.indices == b.indices and a.indices != c.indices
    assert a.indices != list(range(12)), "never the first n: the data set is ordered class by class"
    _, labels = cdata.to_tensors(a)
    assert len(set(labels.tolist())) >= 4, "a random subset must span several classes"
    assert cdata.seeded_subset(train, 10_000, seed=0) is train


def test_tensor_path_matches_torchvision_transforms(archive, tmp_path):
    train, test = cdata.load_splits(archive, cache_dir=tmp_path / "c")
    sub = cdata.seeded_subset(test, 5, seed=0)
    x_u8, y = cdata.to_tensors(sub)
    assert x_u8.dtype == torch.uint8 and x_u8.shape == (5, 3, 32, 32)
    ref = torch.stack([test[i][0] for i in sub.indices])
    assert torch.allclose(cdata.normalize(x_u8), ref, atol=1e-5)
    assert y.tolist() == [test[i][1] for i in sub.indices]
    g = torch.Generator().manual_seed(0)
    aug = cdata.augment(x_u8, g)
    assert aug.shape == x_u8.shape and aug.dtype == torch.uint8
    # with no padding a crop is the identity, so only flips remain
    flipped = cdata.augment(x_u8, torch.Generator().manual_seed(1), padding=0)
    for i in range(5):
        assert torch.equal(flipped[i], x_u8[i]) or torch.equal(flipped[i], x_u8[i].flip(2))


def _tar_with(path: Path, name: str, kind=tarfile.REGTYPE, linkname: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("cifar10/train/cat/0000.jpg")
        ok.size = 3
        tf.addfile(ok, io.BytesIO(b"abc"))
        bad = tarfile.TarInfo(name)
        bad.type = kind
        bad.linkname = linkname
        bad.size = 0 if kind != tarfile.REGTYPE else 4
        tf.addfile(bad, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    return path


@pytest.mark.parametrize("name,kind,link", [
    ("../evil.txt", tarfile.REGTYPE, ""),
    ("cifar10/../../evil.txt", tarfile.REGTYPE, ""),
    ("/tmp/evil.txt", tarfile.REGTYPE, ""),
    ("cifar10/train/link", tarfile.SYMTYPE, "/etc/passwd"),
])
def test_unsafe_archive_is_rejected(tmp_path, name, kind, link):
    bad = _tar_with(tmp_path / "bad.tar.gz", name, kind, link)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(cdata.UnsafeArchiveError, match="refusing to extract"):
        cdata.extract(bad, cache, quiet=True)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (cache / "train").exists() and not (cache / cdata.MARKER).exists()


def test_not_found_and_wrong_layout_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(cdata.ENV_VAR, raising=False)
    with pytest.raises(cdata.DataNotFoundError, match=r"--data PATH.*SNNBRIDGE_CIFAR10"):
        cdata.find_archive(tmp_path / "nope.tar.gz")
    monkeypatch.setenv(cdata.ENV_VAR, str(tmp_path / "also-missing"))
    with pytest.raises(cdata.DataNotFoundError, match=r"\$SNNBRIDGE_CIFAR10"):
        cdata.load_splits()
    (tmp_path / "empty").mkdir()
    with pytest.raises(cdata.DataLayoutError, match="does not look like CIFAR-10"):
        cdata.load_splits(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(cdata.DataLayoutError, match="not a .tar.gz"):
        cdata.load_splits(tmp_path / "notes.txt")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    with pytest.raises(cdata.DataLayoutError, match="could not read archive"):
        cdata.extract(broken, tmp_path / "c2", quiet=True)
    # the script turns a missing data set into a clean exit naming the fix
    with pytest.raises(SystemExit, match="--data PATH"):
        crun.main(["--data", str(tmp_path / "nope.tar.gz"), "--backends", "torch", "--out", str(tmp_path / "o")])


def test_model_factory_is_importable_and_runs():
    import importlib

    factory = importlib.import_module("examples.cifar10.model").make_model
    assert factory is make_model
    m = make_model().eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_main_script_end_to_end(archive, tmp_path):
    out = tmp_path / "out"
    argv = ["--data", str(archive), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--train-samples", "30",
            "--test-samples", "12", "--calib-samples", "16", "--timesteps", "2,4", "--backends", "torch",
            "--batch-size", "10", "--eval-batch-size", "5", "--out", str(out), "--no-progress", "--seed", "1"]
    results = crun.main(argv + ["--best-timesteps", "2,4", "--backends", "torch,snntorch"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["timesteps"] == [2, 4] and saved["config"]["backends"] == ["torch", "snntorch"]
    assert saved["data"]["train_samples"] == 30 and saved["data"]["test_samples"] == 12
    assert saved["data"]["calib_samples"] == 16 and saved["data"]["seeds"]["seed"] == 1
    assert 0.0 <= saved["ann"]["test_accuracy"] <= 1.0 and not saved["ann"]["loaded_from_checkpoint"]
    assert [(r["recipe"], r["backend"]) for r in saved["runs"]] == [
        ("maxnorm", "torch"), ("maxnorm", "snntorch"), ("robustnorm", "torch"), ("robustnorm", "snntorch")]
    # the low-T stack: one conversion per T on the first backend, moved to the other, identical accuracy there
    assert [(b["T"], b["backend"]) for b in saved["best"]] == [(2, "torch"), (2, "snntorch"), (4, "torch"),
                                                               (4, "snntorch")]
    for T in (2, 4):
        pair = [b for b in saved["best"] if b["T"] == T]
        assert pair[0]["accuracy"] == pair[1]["accuracy"] and pair[1]["converted_on"] == "torch"
        assert pair[0]["recipe_spec"] == crun.BEST and pair[0]["chosen"]["ltb_iterations"] in (8, 16, 32, 64, 128, 256)
    for run in saved["runs"]:
        assert set(run["accuracy"]) == {"2", "4"} and len(run["curve"]) == 4
        assert all(0.0 <= a <= 1.0 for a in run["curve"])
        assert run["accuracy"]["4"] == run["curve"][3]
        assert run["conversion_seconds"] > 0 and run["eval_seconds"] >= 0
    assert saved["versions"]["torch"] == torch.__version__ and "snnbridge" in saved["versions"]
    assert set(saved["backend_max_gap"]) == {"maxnorm", "robustnorm"}
    for key in ("data_seconds", "train_seconds", "ann_eval_seconds", "total_seconds"):
        assert saved["timings"][key] >= 0
    assert results["ann"]["test_accuracy"] == saved["ann"]["test_accuracy"]
    png = out / "accuracy_vs_T.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ann.pt").is_file()

    # a rerun with the same options reuses the checkpoint (no training) and gets the same numbers
    again = crun.main(argv + ["--recipes", "maxnorm", "--backends", "torch", "--best", "[]"])
    assert again["ann"]["loaded_from_checkpoint"]
    assert again["ann"]["test_accuracy"] == saved["ann"]["test_accuracy"]
    assert again["runs"][0]["curve"] == saved["runs"][0]["curve"] and again["best"] == []


def test_main_script_rejects_missing_backend_and_bad_options(tmp_path):
    with pytest.raises(SystemExit, match="not installed"):
        crun.main(["--backends", "torch,nosuchbackend", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown recipe label"):
        crun.main(["--recipes", "maxnrm", "--backends", "torch", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="timesteps"):
        crun.main(["--timesteps", "4,x", "--backends", "torch", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--best: the recipe is not valid JSON"):
        crun.main(["--best", "[ltb", "--backends", "torch", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--best: .*ltbb"):
        crun.main(["--best", '["ltbb"]', "--backends", "torch", "--out", str(tmp_path)])


def test_script_runs_as_a_file():
    """``python examples/cifar10/run.py`` (not only ``import``) finds its package."""
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "cifar10" / "run.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO.parent))
    assert proc.returncode == 0, proc.stderr
    assert "--train-samples" in proc.stdout and "--backends" in proc.stdout


def test_torchvision_cifar10_folder_is_read_with_torchvision(tmp_path, monkeypatch):
    """A folder holding ``cifar-10-batches-py`` goes through torchvision.datasets.CIFAR10(download=False)."""
    import pickle

    import torchvision

    batches = tmp_path / "tv" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in names:
        with open(batches / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [0, 3, 9]}, f)
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    # the fake files do not have the real MD5 sums torchvision checks
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    assert cdata.resolve(tmp_path / "tv")[0] == "torchvision"
    assert cdata.resolve(batches)[0] == "torchvision"
    train, test = cdata.load_splits(tmp_path / "tv")
    assert isinstance(train, torchvision.datasets.CIFAR10) and len(train) == 15 and len(test) == 3
    assert train[0][0].shape == (3, 32, 32)
    x, y = cdata.to_tensors(cdata.seeded_subset(train, 4, seed=0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and set(y.tolist()) <= {0, 3, 9}


def test_extract_never_overwrites_folders_it_did_not_create(archive, tmp_path):
    cache = tmp_path / "mine"
    (cache / "train" / "cat").mkdir(parents=True)
    keep = cache / "train" / "cat" / "precious.jpg"
    keep.write_bytes(b"x")
    with pytest.raises(cdata.DataLayoutError, match="will not overwrite"):
        cdata.extract(archive, cache, quiet=True)
    assert keep.read_bytes() == b"x"


def test_main_script_qcfs_path(archive, tmp_path):
    out = tmp_path / "qcfs"
    argv = ["--data", str(archive), "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--train-samples", "30",
            "--test-samples", "12", "--calib-samples", "16", "--backends", "torch", "--batch-size", "10",
            "--eval-batch-size", "6", "--out", str(out), "--no-progress", "--qcfs", "4"]
    saved = crun.main(argv)
    assert saved["config"]["timesteps"] == [1, 2, 4, 8] and saved["best"] == []  # no training-free stack here
    assert [r["recipe"] for r in saved["runs"]] == ["qcfs", "qcfs+cos", "qcfs+srp"]
    cos, srp = saved["runs"][1], saved["runs"][2]
    assert cos["steps_run"] == 4 + 8 and srp["steps_run"] == 4 + 8  # the look-ahead / warm-up steps are counted
    ckpt = torch.load(out / "ann.pt", weights_only=True)
    assert ckpt["meta"]["prepare"] == [{"qcfs": {"levels": 4, "lambda_init": 2.0}}]
    lams = [k for k in ckpt["state_dict"] if k.endswith(".lam")]  # the QCFS clip lambdas, trained from 2.0
    assert len(lams) == 3 and any(float(ckpt["state_dict"][k]) != 2.0 for k in lams)
    with pytest.raises(SystemExit, match="--qcfs takes the number of quantization levels"):
        crun.main(argv + ["--qcfs", "0"])
