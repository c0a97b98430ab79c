"""A small image-folder reader for the command line (calibration and evaluation images).

Layout: ``root/<class>/<image>`` (torchvision's ImageFolder layout; classes are numbered
in sorted order, as ImageFolder does), optionally split as ``root/train/<class>/...`` and
``root/test/<class>/...``. ``root`` is a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz``
archive of such a tree (e.g. ``cifar10/train/airplane/0000.jpg``); an archive is read in
one streaming pass into memory (the compressed bytes of the chosen split only), nothing is
extracted to disk.

Images are decoded with Pillow, optionally resized (``image_size``), scaled to [0, 1] and
normalised with ``mean`` / ``std`` (CIFAR-10 statistics by default; one value each for
grey-scale images). Subsets are drawn with a *seeded random sample*: folders and archives
list images class by class, so "the first N images" would hold one or two classes only.

This module is generic (no knowledge of any model or example); the examples' own loaders
live with the examples.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

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


@dataclass
class ImageFolderData:
    """Labelled images of one split, decoded lazily.

    ``items`` are ``(key, label)`` pairs; ``key`` is a file path (directory source) or an
    archive member name whose bytes are held in ``blobs``.
    """

    source: str
    split: str | None
    classes: list[str]
    items: list[tuple[str, int]]
    image_size: int | None = None
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    blobs: dict[str, bytes] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) not in (1, 3) or len(self.mean) != len(self.std):
            raise DataError(f"mean and std must both have 1 (grey-scale) or 3 (RGB) values, got {len(self.mean)} and "
                            f"{len(self.std)}.")
        if any(s <= 0 for s in self.std):
            raise DataError(f"std values must be positive, got {list(self.std)}.")
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"image size must be a positive number of pixels, got {self.image_size}.")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def where(self) -> str:
        return f"{self.source} [{self.split}]" if self.split else self.source

    # -- selection --------------------------------------------------------------------------------
    def sample(self, n: int | None, seed: int = 0) -> list[int]:
        """Indices of a seeded uniform random sample of ``n`` images (all images, shuffled, if ``n`` is None)."""
        total = len(self.items)
        if n is not None and n < 1:
            raise DataError(f"the number of images to sample must be positive, got {n}.")
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed))).tolist()
        return perm if n is None or n >= total else perm[:n]

    # -- decoding ---------------------------------------------------------------------------------
    def _open(self, key: str):
        from PIL import Image

        try:
            if self.blobs is not None:
                img = Image.open(io.BytesIO(self.blobs[key]))
            else:
                img = Image.open(key)
            img.load()
        except Exception as exc:  # PIL raises several kinds of errors on bad files
            raise DataError(f"cannot read the image {key!r} in {self.source}: {exc}. Remove or replace that file.") \
                from exc
        return img

    def image(self, index: int) -> torch.Tensor:
        """One normalised image, ``[C, H, W]`` float32."""
        from PIL import Image

        key, _ = self.items[index]
        img = self._open(key).convert("L" if len(self.mean) == 1 else "RGB")
        if self.image_size is not None and img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        w, h = img.size
        c = len(self.mean)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, c).permute(2, 0, 1)
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean).view(c, 1, 1)
        std = torch.tensor(self.std).view(c, 1, 1)
        return (x - mean) / std

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch ``(x [N, C, H, W], y [N])`` of the given images."""
        images = [self.image(i) for i in indices]
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            raise DataError(f"the images in {self.where} have different sizes ({', '.join(map(str, sorted(shapes)))}); "
                            "give --image-size to resize them to one size.")
        return torch.stack(images), torch.tensor([self.items[i][1] for i in indices], dtype=torch.long)

    def batches(self, indices: Sequence[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of the given images, decoded batch by batch."""
        if batch_size < 1:
            raise DataError(f"batch size must be positive, got {batch_size}.")
        for start in range(0, len(indices), batch_size):
            yield self.load(indices[start:start + batch_size])


# -- discovery -------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.rpartition("/")[2].startswith(".")


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


def open_image_folder(path: str | os.PathLike, split: str | None = "train", *, image_size: int | None = None,
                      mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                      require_split: bool = False) -> ImageFolderData:
    """Open the images of ``split`` under ``path`` (a folder or a tar archive; see the module docstring).

    The split folder may be anywhere in the tree (``root/train/...`` or ``root/cifar10/train/...``).
    Without such a folder, ``path`` itself is read as ``<class>/<image>`` (unless
    ``require_split``). Raises :class:`DataError` with the fix on a missing path, an empty
    folder, or a layout without class folders.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(f"data path {where!r} does not exist; give an image folder (<class>/<image> files, "
                        "optionally under train/ and test/) or a .tar.gz of one.")
    blobs = None
    if path.is_dir():
        paths = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, path)
            for f in filenames:
                if _is_image(f):
                    paths.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
        used, chosen = _select(paths, split, where, require_split)
        chosen = [(str(path / p), c) for p, c in chosen]
    elif is_archive(path):
        used, chosen, blobs = _read_archive(path, split, where, require_split)
    else:
        raise DataError(f"data path {where!r} is neither a folder nor a .tar/.tar.gz/.tgz archive.")
    if not chosen:
        raise DataError(f"no images found in {where} (looked for {', '.join(IMAGE_EXTENSIONS[:3])} ... files in "
                        "<class>/ folders); check the path.")
    classes = sorted({c for _, c in chosen})
    index = {c: i for i, c in enumerate(classes)}
    items = sorted((p, index[c]) for p, c in chosen)
    return ImageFolderData(source=where, split=used, classes=classes, items=items, image_size=image_size,
                           mean=tuple(mean), std=tuple(std), blobs=blobs)


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
                    blobs[name] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the archive {where}: {exc}. Check that it is a complete .tar/.tar.gz file.") \
            from exc
    used, chosen = _select(names, split, where, require_split)
    chosen = [(p, c) for p, c in chosen if p in blobs]
    keep = {p for p, _ in chosen}
    return used, chosen, {k: v for k, v in blobs.items() if k in keep}
