"""Image folders for calibration and evaluation: ``torchvision.datasets.ImageFolder`` behind a DataLoader.

Layout: ``root/<class>/<image>`` (ImageFolder's layout; classes are numbered in sorted
order), optionally split as ``root/train/<class>/...`` and ``root/test/<class>/...`` (the
split folder may sit deeper, e.g. ``root/cifar10/train/...``). ``root`` is a directory, read
with ``ImageFolder``, or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive of such a tree, streamed
once into memory by :class:`TarImageFolder` (the compressed bytes of the chosen split only;
nothing is extracted to disk).

Images are decoded with Pillow, optionally resized (``image_size``), scaled to [0, 1] and
normalised with ``mean`` / ``std`` (torchvision's ``ToTensor`` and ``Normalize``; CIFAR-10
statistics by default; one value each for grey-scale images). Subsets are drawn with a
*seeded random sample*: folders and archives list images class by class, so "the first N
images" would hold one or two classes only.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder

from .errors import SnnbridgeError

#: CIFAR-10 training-set channel statistics (RGB, images scaled to [0, 1])
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class DataError(SnnbridgeError):
    """An image folder or archive is missing, empty, in an unexpected layout, or holds an unreadable image."""


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.rpartition("/")[2].startswith(".")


def _decode(data, mode: str, where: str):
    from PIL import Image

    try:
        img = Image.open(data)
        img.load()
    except Exception as exc:  # PIL raises several kinds of errors on bad files
        raise DataError(f"cannot read the image {where}: {exc}. Remove or replace that file.") from exc
    return img.convert(mode)


def _load_image(path: str, mode: str):
    return _decode(path, mode, repr(path))


def _valid_image(path: str) -> bool:
    return _is_image(path.replace(os.sep, "/"))


def transform(image_size: int | None, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize (optional), ``ToTensor`` and ``Normalize``, as torchvision composes them."""
    steps = [transforms.Resize((image_size, image_size))] if image_size is not None else []
    steps += [transforms.ToTensor(), transforms.Normalize(tuple(mean), tuple(std))]
    return transforms.Compose(steps)


class TarImageFolder(Dataset):
    """ImageFolder semantics over the members of a tar archive held in memory: ``(image, label)`` items."""

    def __init__(self, source: str, items: list[tuple[str, int]], blobs: dict[str, bytes], classes: list[str],
                 mode: str, transform: Callable):
        self.source, self.items, self.blobs, self.classes = source, items, blobs, classes
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        key, label = self.items[index]
        img = _decode(io.BytesIO(self.blobs[key]), self.mode, f"{key!r} in {self.source}")
        return self.transform(img), label


class VisibleImageFolder(ImageFolder):
    """torchvision's ImageFolder, ignoring hidden folders (``.ipynb_checkpoints`` ...) as classes."""

    def find_classes(self, directory):
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}


class Batches:
    """The ``(x, y)`` batches of a DataLoader, with a :class:`DataError` naming the fix when image sizes differ.

    ``sampler``, ``batch_sampler``, ``dataset`` and ``drop_last`` are the loader's, for code that
    looks at how the data is sharded (:func:`snnbridge.distributed.sampler_padding`).
    """

    def __init__(self, loader: DataLoader, where: str):
        self.loader, self.where = loader, where
        self.sampler, self.batch_sampler = loader.sampler, loader.batch_sampler
        self.dataset, self.drop_last = loader.dataset, loader.drop_last

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self.loader
        except RuntimeError as exc:
            if "stack expects each tensor to be equal size" in str(exc):
                raise DataError(f"the images in {self.where} have different sizes; give --image-size (or "
                                "image_size) to resize them to one size.") from exc
            raise


class ImageData:
    """The labelled images of one split (a Dataset), with seeded sampling and batched loading.

    ``items`` are ``(path or archive member, label)`` pairs in ImageFolder's order.
    """

    def __init__(self, dataset: Dataset, source: str, split: str | None, classes: list[str],
                 items: list[tuple[str, int]]):
        self.dataset, self.source, self.split, self.classes, self.items = dataset, source, split, classes, items

    def __len__(self) -> int:
        return len(self.items)

    @property
    def where(self) -> str:
        return f"{self.source} [{self.split}]" if self.split else self.source

    def sample(self, n: int | None, seed: int = 0) -> list[int]:
        """Indices of a seeded uniform random sample of ``n`` images (all images, shuffled, if ``n`` is None)."""
        total = len(self.items)
        if n is not None and n < 1:
            raise DataError(f"the number of images to sample must be positive, got {n}.")
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed))).tolist()
        return perm if n is None or n >= total else perm[:n]

    def loader(self, indices: Sequence[int], batch_size: int, *, workers: int = 0,
               pin_memory: bool = False, shard: bool = False) -> DataLoader:
        """A DataLoader over the given images, in that order.

        ``shard=True``: only this rank's share under a process group
        (:func:`snnbridge.distributed.shard`: rank r takes images r, r + N, r + 2N, ... of N ranks,
        the shards padded to equal length), so batch i of all ranks together holds the images of
        batch i of one process whose batch size is ``N * batch_size``.
        """
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}.")
        subset = Subset(self.dataset, list(indices))
        if shard:
            from .distributed import shard as distributed_shard

            return distributed_shard(subset, batch_size, num_workers=workers, pin_memory=pin_memory)
        return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)

    def batches(self, indices: Sequence[int], batch_size: int, *, workers: int = 0,
                pin_memory: bool = False, shard: bool = False) -> Batches:
        """``(x, y)`` batches of the given images (a mix of image sizes is a DataError naming the fix).

        ``shard``: as in :meth:`loader`; the result keeps the loader's sampler, so
        :func:`snnbridge.accuracy_curve` sees (and leaves out) the shard's padding.
        """
        return Batches(self.loader(indices, batch_size, workers=workers, pin_memory=pin_memory, shard=shard),
                       self.where)

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch ``(x [N, C, H, W], y [N])`` of the given images."""
        indices = list(indices)
        return next(iter(self.batches(indices, max(1, len(indices)))))


# -- discovery ---------------------------------------------------------------------------------------


def _select(paths: Sequence[str], split: str | None, where: str, require_split: bool):
    """Pick the images of ``split`` from relative paths; return (split used or None, [(path, class)])."""
    flat = [(p, p.split("/")[-2]) for p in paths if len(p.split("/")) >= 2]
    if split is None:
        return None, flat
    chosen = [(p, p.split("/")[-2]) for p in paths if len(p.split("/")) >= 3 and p.split("/")[-3] == split]
    if chosen:
        return split, chosen
    splits_seen = sorted({p.split("/")[-3] for p in paths if len(p.split("/")) >= 3
                          and p.split("/")[-3] in SPLIT_NAMES})
    if splits_seen:
        raise DataError(f"{where} has no {split!r} split; it has: {', '.join(splits_seen)}. Choose one of those "
                        "(e.g. --split " + splits_seen[0] + ").")
    if require_split:
        raise DataError(f"{where} has no {split!r} folder; expected {where}/{split}/<class>/<image>.")
    return None, flat


def _folder_root(path: Path, split: str | None, where: str, require_split: bool) -> tuple[Path, str | None]:
    """The folder ImageFolder reads: the (single) ``split`` folder under ``path``, or ``path`` itself."""
    rel = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = os.path.relpath(dirpath, path).replace(os.sep, "/")
        rel += [f if base == "." else f"{base}/{f}" for f in filenames if _is_image(f)]
    used, chosen = _select(rel, split, where, require_split)
    if not chosen:
        raise DataError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS[:3])} ... files in "
                        "<class>/ folders); check the path.")
    if used is None:
        return path, None
    roots = sorted({p.rsplit("/", 2)[0] for p, _ in chosen})
    if len(roots) > 1:
        raise DataError(f"{where} holds several {split!r} folders ({', '.join(roots[:4])}); point --data at the one "
                        "you mean.")
    return path / roots[0], used


def _read_archive(path: Path, split: str | None, where: str, require_split: bool):
    """Stream the archive once, keeping the bytes of the wanted split (or of all images for a flat archive)."""
    names: list[str] = []
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as tf:
            for member in tf:
                if not member.isfile() or not _is_image(member.name):
                    continue
                name = member.name.removeprefix("./")
                names.append(name)
                parts = name.split("/")
                wanted = (split is None or (len(parts) >= 3 and parts[-3] == split)
                          or len(parts) < 3 or parts[-3] not in SPLIT_NAMES)  # the last two: a split-less archive
                if wanted:
                    handle = tf.extractfile(member)
                    assert handle is not None  # a regular file (isfile() above) always has content
                    blobs[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the archive {where}: {exc}. Check that it is a complete .tar/.tar.gz file.") \
            from exc
    used, chosen = _select(names, split, where, require_split)
    chosen = [(p, c) for p, c in chosen if p in blobs]
    if not chosen:
        raise DataError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS[:3])} ... files in "
                        "<class>/ folders); check the path.")
    keep = {p for p, _ in chosen}
    return used, chosen, {k: v for k, v in blobs.items() if k in keep}


def open_image_folder(path: str | os.PathLike, split: str | None = "train", *, image_size: int | None = None,
                      mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                      require_split: bool = False) -> ImageData:
    """Open the images of ``split`` under ``path`` (a folder or a tar archive; see the module docstring).

    Without a ``split`` folder, ``path`` itself is read as ``<class>/<image>`` (unless
    ``require_split``). Raises :class:`DataError` with the fix on a missing path, an empty
    folder, a layout without class folders, or bad preprocessing settings.
    """
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) not in (1, 3) or len(mean) != len(std):
        raise DataError(f"mean and std must both have 1 (grey-scale) or 3 (RGB) values, got {len(mean)} and "
                        f"{len(std)}.")
    if any(s <= 0 for s in std):
        raise DataError(f"std values must be positive, got {list(std)}.")
    if image_size is not None and image_size < 1:
        raise DataError(f"image size must be a positive number of pixels, got {image_size}.")
    mode = "L" if len(mean) == 1 else "RGB"
    tf = transform(image_size, mean, std)
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(f"data path {where!r} does not exist; give an image folder (<class>/<image> files, "
                        "optionally under train/ and test/) or a .tar.gz of one.")
    if path.is_dir():
        root, used = _folder_root(path, split, where, require_split)
        try:
            ds = VisibleImageFolder(str(root), transform=tf, loader=partial(_load_image, mode=mode),
                                    is_valid_file=_valid_image)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot read {where} as an image folder: {exc}. Expected <class>/<image> "
                            "folders.") from exc
        items = [(p, label) for p, label in ds.samples]
        return ImageData(ds, where, used, list(ds.classes), items)
    if is_archive(path):
        used, chosen, blobs = _read_archive(path, split, where, require_split)
        classes = sorted({c for _, c in chosen})
        index = {c: i for i, c in enumerate(classes)}
        items = sorted((p, index[c]) for p, c in chosen)
        return ImageData(TarImageFolder(where, items, blobs, classes, mode, tf), where, used, classes, items)
    raise DataError(f"data path {where!r} is neither a folder nor a .tar/.tar.gz/.tgz archive.")
