"""CIFAR-10 for the example: find the data, extract it once (safely), load it, subsample it.

Three forms of the data are accepted (``load_splits(data=...)``):

* the JPEG archive ``cifar10-jpeg.tar.gz`` (``cifar10/{train,test}/<class>/*.jpg``), extracted
  once into a cache directory and read with ``torchvision.datasets.ImageFolder``;
* an extracted folder of that shape (a root holding ``train/`` and ``test/`` class folders);
* the original torchvision download (a folder holding ``cifar-10-batches-py``), read with
  ``torchvision.datasets.CIFAR10(root, download=False)``.

With no ``data`` argument the archive is looked for in ``$SNNBRIDGE_CIFAR10``, then in
``../shared/data/cifar10-jpeg.tar.gz`` next to the repository.

The data sets are ordered class by class: never take "the first N" images as a subset;
use :func:`seeded_subset`.

Besides the usual ``Dataset`` objects (with normalisation and, for training, random crop
+ flip as torchvision transforms), :func:`to_tensors` decodes a data set once into a uint8
tensor and :func:`augment` / :func:`normalize` work on whole batches: that keeps training
on a 2-core CPU from being bound by per-image PIL transforms. Both paths give the same
augmentation (zero padding of 4, random 32x32 crop, horizontal flip with p=0.5).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import Dataset, Subset

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
ENV_VAR = "SNNBRIDGE_CIFAR10"
MARKER = ".snnbridge-extracted.json"

#: per-channel mean and std of the CIFAR-10 training images (the usual constants)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_LAYOUT_HELP = (
    "snnbridge's CIFAR-10 example reads one of: (1) the archive cifar10-jpeg.tar.gz "
    "(cifar10/train/<class>/*.jpg and cifar10/test/<class>/*.jpg); (2) a folder with train/ and test/ "
    "subfolders holding one folder of images per class; (3) a torchvision download folder containing "
    "cifar-10-batches-py (torchvision.datasets.CIFAR10(root, download=True) creates it).")


class DataNotFoundError(FileNotFoundError):
    """The CIFAR-10 data could not be found where it was looked for."""


class DataLayoutError(ValueError):
    """The given path exists but does not hold CIFAR-10 in a layout this helper reads."""


class UnsafeArchiveError(ValueError):
    """The archive holds a member that would be written outside the extraction directory."""


# -- locating --------------------------------------------------------------------------------------------
def find_archive(path: str | os.PathLike | None = None) -> Path:
    """The CIFAR-10 archive (or data folder): ``path``, else ``$SNNBRIDGE_CIFAR10``, else the shared default."""
    if path is not None:
        tried = [(Path(path).expanduser(), "the path you passed")]
    elif os.environ.get(ENV_VAR):
        tried = [(Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}")]
    else:
        tried = [(DEFAULT_ARCHIVE, "the default location")]
    for candidate, _ in tried:
        if candidate.exists():
            return candidate
    where = "; ".join(f"{p} ({why})" for p, why in tried)
    raise DataNotFoundError(
        f"CIFAR-10 data not found: looked at {where}. Pass --data PATH (or data=PATH) pointing at "
        f"cifar10-jpeg.tar.gz, an extracted folder, or a torchvision CIFAR-10 folder, or set {ENV_VAR}=PATH. "
        + _LAYOUT_HELP)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/snnbridge/cifar10``, else ``~/.cache/snnbridge/cifar10``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "snnbridge" / "cifar10"


# -- extracting ------------------------------------------------------------------------------------------
def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(
            f"refusing to extract archive member {name!r}: absolute paths and '..' components could write outside "
            "the cache directory. Use the original cifar10-jpeg.tar.gz, or extract it yourself and pass the folder.")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"refusing to extract archive member {name!r}: it is a link or special file; a CIFAR-10 archive holds "
            "only folders and image files.")


def _archive_id(archive: Path) -> dict:
    st = archive.stat()
    return {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _split_root(folder: Path) -> Path | None:
    """``folder`` or one of its subfolders (one level down) holding ``train/`` and ``test/``."""
    for cand in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []:
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    return None


def extract(archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Extract ``archive`` into ``cache_dir`` once; return the folder holding ``train/`` and ``test/``.

    Idempotent: a marker file records which archive was extracted, and a second call with the
    same archive returns at once. Extraction goes to a temporary folder first and is moved into
    place only when complete, so an interrupted run never leaves a half-filled cache behind.
    Members with absolute paths, ``..`` components, links or special files are rejected
    (:class:`UnsafeArchiveError`) before anything is written.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise DataNotFoundError(f"archive {archive} does not exist or is not a file. " + _LAYOUT_HELP)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    marker = cache / MARKER
    ident = _archive_id(archive)
    ours = marker.is_file()
    if ours:
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = None
        if done == ident and (cache / "train").is_dir() and (cache / "test").is_dir():
            return cache
    elif (cache / "train").exists() or (cache / "test").exists():
        raise DataLayoutError(
            f"{cache} already holds train/ or test/ that this helper did not extract (no {MARKER}); it will not "
            f"overwrite them. Pass that folder as the data (--data {cache}) or choose another --cache-dir.")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(m)
            if not quiet:
                print(f"extracting {archive.name} ({len(members)} entries) into {cache} (once) ...", flush=True)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
            try:
                try:
                    tf.extractall(tmp, members=members, filter="data")
                except TypeError:  # Python without extraction filters; members were checked above
                    tf.extractall(tmp, members=members)
                root = _split_root(tmp)
                if root is None:
                    raise DataLayoutError(f"archive {archive} holds no train/ and test/ folders. " + _LAYOUT_HELP)
                if marker.exists():
                    marker.unlink()
                for split in ("train", "test"):
                    if (cache / split).exists():
                        shutil.rmtree(cache / split)
                    os.replace(root / split, cache / split)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataLayoutError(f"could not read archive {archive}: {type(exc).__name__}: {exc}. Is it a complete "
                              "tar.gz? " + _LAYOUT_HELP) from exc
    marker.write_text(json.dumps(ident))
    return cache


# -- loading ---------------------------------------------------------------------------------------------
def transforms(train: bool):
    """torchvision transforms: normalisation, plus random crop (padding 4) and flip when ``train``."""
    from torchvision import transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(MEAN, STD)])


def _is_archive(p: Path) -> bool:
    return p.is_file() and (p.name.endswith((".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")))


def resolve(data: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> tuple[str, Path]:
    """``("imagefolder", root)`` or ``("torchvision", root)`` for the data at ``data`` (extracting an archive)."""
    path = find_archive(data)
    if path.is_file():
        if not _is_archive(path):
            raise DataLayoutError(f"{path} is a file but not a .tar.gz archive. " + _LAYOUT_HELP)
        return "imagefolder", extract(path, cache_dir)
    if path.name == "cifar-10-batches-py" and path.is_dir():
        return "torchvision", path.parent
    if (path / "cifar-10-batches-py").is_dir():
        return "torchvision", path
    root = _split_root(path)
    if root is not None:
        return "imagefolder", root
    archives = sorted(p.name for p in path.iterdir() if _is_archive(p)) if path.is_dir() else []
    hint = f" It holds the archive(s) {', '.join(archives)}: pass that file instead." if archives else ""
    raise DataLayoutError(f"{path} does not look like CIFAR-10.{hint} " + _LAYOUT_HELP)


def load_splits(data: str | os.PathLike | None = None, *, augment: bool = True,
                cache_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    """The ``(train, test)`` data sets, normalised; the training set augmented when ``augment``.

    ``data``: the archive, an extracted folder or a torchvision CIFAR-10 folder (see the module
    docstring); ``None`` looks in ``$SNNBRIDGE_CIFAR10`` and the shared default. Both data sets
    have ``.classes``.
    """
    return open_splits(*resolve(data, cache_dir), augment=augment)


def open_splits(kind: str, root: str | os.PathLike, *, augment: bool = True) -> tuple[Dataset, Dataset]:
    """The ``(train, test)`` data sets for a :func:`resolve` result (``kind`` "imagefolder" or "torchvision")."""
    import torchvision

    root = Path(root)
    if kind == "torchvision":
        try:
            train = torchvision.datasets.CIFAR10(str(root), train=True, download=False, transform=transforms(augment))
            test = torchvision.datasets.CIFAR10(str(root), train=False, download=False, transform=transforms(False))
        except RuntimeError as exc:
            raise DataLayoutError(f"torchvision could not read CIFAR-10 in {root}: {exc}. " + _LAYOUT_HELP) from exc
        return train, test
    sets = []
    for split, aug in (("train", augment), ("test", False)):
        try:
            sets.append(torchvision.datasets.ImageFolder(str(root / split), transform=transforms(aug)))
        except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
            raise DataLayoutError(f"{root / split}: {exc}. " + _LAYOUT_HELP) from exc
    train, test = sets
    if train.classes != test.classes:
        raise DataLayoutError(f"{root}: train/ has the classes {train.classes} but test/ has {test.classes}; both "
                              "splits need the same class folders. " + _LAYOUT_HELP)
    return train, test


def seeded_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """``n`` items drawn at random (without replacement, seeded) from ``dataset``; all of it when ``n`` is None
    or not smaller than its length. Never "the first n": CIFAR-10 is stored class by class."""
    size = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= size:
        return dataset
    if n < 1:
        raise ValueError(f"a subset needs at least one item, got n={n}")
    g = torch.Generator().manual_seed(int(seed))
    return Subset(dataset, torch.randperm(size, generator=g)[:n].tolist())


# -- whole-tensor path (fast training on CPU) ------------------------------------------------------------
def _unwrap(dataset: Dataset, indices: Sequence[int] | None = None) -> tuple[Dataset, list[int]]:
    idx = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    while isinstance(dataset, Subset):
        idx = [dataset.indices[i] for i in idx]
        dataset = dataset.dataset
    return dataset, idx


def to_tensors(dataset: Dataset, progress: bool = False, desc: str = "decode") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``dataset`` (an ImageFolder / CIFAR10 or a Subset of one) once, without its transforms.

    Returns ``(images uint8 [N, 3, 32, 32], labels int64 [N])``, in the data set's order.
    """
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    base, idx = _unwrap(dataset)
    if hasattr(base, "data") and hasattr(base, "targets") and not hasattr(base, "samples"):  # torchvision CIFAR10
        arr = np.asarray(base.data)[idx]
        labels = torch.as_tensor([base.targets[i] for i in idx], dtype=torch.long)
    elif hasattr(base, "samples"):  # ImageFolder
        arr = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
        for j, i in enumerate(tqdm(idx, desc=desc, unit="img", disable=not progress, leave=False, mininterval=0.5)):
            path = base.samples[i][0]
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (32, 32):
                    raise DataLayoutError(f"{path} is {im.size[0]}x{im.size[1]} pixels; CIFAR-10 images are 32x32.")
                arr[j] = np.asarray(im)
        labels = torch.as_tensor([base.samples[i][1] for i in idx], dtype=torch.long)
    else:
        raise TypeError(f"to_tensors reads ImageFolder or torchvision CIFAR10 data sets, got {type(base).__name__}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous(), labels


_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(STD).view(1, 3, 1, 1) * 255


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, normalised exactly like ``ToTensor() + Normalize(MEAN, STD)``."""
    return (images.float() - _MEAN.to(images.device)) / _STD.to(images.device)


def augment(images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip (p=0.5) of a uint8 batch, per image."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(images.device)
    rows = (off[0].view(b, 1) + torch.arange(h, device=images.device)).view(b, 1, h, 1)
    cols = (off[1].view(b, 1) + torch.arange(w, device=images.device)).view(b, 1, 1, w)
    out = padded[torch.arange(b, device=images.device).view(b, 1, 1, 1), torch.arange(c, device=images.device)
                 .view(1, c, 1, 1), rows, cols]
    flip = (torch.rand(b, generator=generator) < 0.5).to(images.device).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(3), out)
