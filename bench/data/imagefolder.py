"""A folder with one sub-folder per class, decoded and resized once into a cached tensor file.

Every image is checked while it is decoded: a zero-byte, truncated or unreadable file, or one
with more pixels than `max_image_pixels` (a decompression bomb, refused from its header before
anything is decoded), stops the run with a DataError naming it. Grey, palette, CMYK, alpha and
16-bit images are converted to 8-bit RGB, and each conversion is logged. A data set needs two
classes or more, each with at least two images (a stratified split needs them). A file name
that is not valid UTF-8 is refused, naming its bytes.

A folder is identified by content: its images' paths, classes and SHA-256 (bench/data/filehash:
each file hashed once, its hash kept under its path, size, mtime, ctime and inode), so an image
replaced with its size and time kept is seen. The decoded cache file is named by that identity;
one that cannot be read back whole (truncated, damaged) is decoded again, one that cannot be
written is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bench.config import DataConfig
from bench.data.base import ImageSet, check_memory, options_of, register_dataset
from bench.data.filehash import content_hashes
from bench.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CACHE_VERSION = 2
MAX_IMAGE_PIXELS = 89_478_485
"""Default limit on an image's width x height: PIL's own (about 9,459 x 9,459 pixels, 256 MiB
as 8-bit RGB); `options: {max_image_pixels: N}` raises it for genuinely larger images."""
MIN_CLASS_IMAGES = 2


class FolderOptions(BaseModel):
    """`options` of a data set read from class folders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="Largest width x height "
                                  "of an image; a larger one is refused before it is decoded")


def scan_class_folders(root: Path) -> list[tuple[Path, int]]:
    """(image path, class index) for every image, classes in sorted folder-name order."""
    if not root.exists():
        raise DataError(f"data root does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data root is not a folder: {root}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {root}: expected one sub-folder per class")
    items: list[tuple[Path, int]] = []
    for label, folder in enumerate(class_dirs):
        files = sorted(f for f in folder.rglob("*")
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files:
            _check_name(f)
        if not files:
            raise DataError(f"class folder has no images: {folder}")
        if len(files) < MIN_CLASS_IMAGES:
            raise DataError(f"class folder {folder} has only {len(files)} image; a stratified "
                            f"train/val/test split needs at least {MIN_CLASS_IMAGES} per class")
        items.extend((f, label) for f in files)
    if len(class_dirs) < 2:
        raise DataError(f"only one class folder ({class_dirs[0].name}) in {root}: nothing to "
                        "classify; give one sub-folder per class, two or more")
    return items


def _check_name(path: Path) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"image file name is not valid UTF-8: {os.fsencode(path)!r}; rename "
                        "it (the store records image names as text)") from None


def to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """8-bit RGB array of any PIL image; logs every conversion it makes."""
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    log.info("converting %s from mode %s to 8-bit RGB", path, img.mode)
    if img.mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = (arr / peak * 255.0).clip(0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12)
        grey = ((arr - arr.min()) / span * 255.0).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


@contextmanager
def _own_pixel_check() -> Iterator[None]:
    """PIL's decompression-bomb check off while an image is opened: `decode_image` checks the
    header's size itself, against its own limit, before anything is decoded."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_image(path: Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """(3, size, size) uint8 array; DataError naming the file when it cannot be decoded or has
    more than ``max_pixels`` pixels (checked from its header, before it is decoded)."""
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise DataError(f"empty (zero-byte) image file: {path}")
    try:
        with _own_pixel_check(), Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise DataError(
                    f"image {path} has {width} x {height} = {width * height:,} pixels, more "
                    f"than the limit of {max_pixels:,} (a decompression bomb?); if it is "
                    "genuine, raise the data set's options.max_image_pixels in the grid")
            img.load()
            rgb = to_rgb8(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)


def _identity(root: Path, items: list[tuple[Path, int]], size: int, cache: Path
              ) -> tuple[str, str]:
    """The folder's content identity at ``size`` (the decoded cache's name) and its content
    fingerprint (`ImageSet.fingerprint`, size-independent): paths, classes and SHA-256 of its
    images."""
    hashes = content_hashes(root, [path for path, _ in items], cache)
    content = hashlib.sha256()
    for path, label in items:
        content.update(f"{path.relative_to(root)}:{label}:".encode())
        content.update(bytes.fromhex(hashes[path]))
    fingerprint = content.hexdigest()[:16]
    key = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{fingerprint}".encode()).hexdigest()[:20]
    return key, fingerprint


def _read_cache(target: Path, n: int, size: int) -> dict | None:
    """The decoded images saved at ``target`` if it holds all ``n`` of them at ``size``, else
    None (a damaged file is removed, with a warning)."""
    import torch

    if not target.exists():
        return None
    try:
        saved = torch.load(target, weights_only=True)
        whole = (tuple(saved["images"].shape) == (n, 3, size, size)
                 and len(saved["labels"]) == n and len(saved["ids"]) == n)
    except Exception as err:  # any unreadable file: decode again
        whole, saved = False, None
        log.warning("decoded-image cache %s cannot be read (%s): decoding again", target, err)
    else:
        if not whole:
            log.warning("decoded-image cache %s does not hold the %d images: decoding again",
                        target, n)
    if whole:
        return saved
    target.unlink(missing_ok=True)
    return None


def _write_cache(target: Path, result: ImageSet) -> None:
    import torch

    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": result.images, "labels": result.labels, "ids": result.ids,
                    "fingerprint": result.fingerprint}, partial)
        partial.replace(target)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("cannot write the decoded-image cache %s (%s); the images will be decoded "
                    "again next run", target, err)


def load_folder(root: Path, size: int, cache: Path, max_pixels: int = MAX_IMAGE_PIXELS
                ) -> ImageSet:
    """Decode (or reuse the cached decoding of) every image under root at size x size."""
    import torch

    items = scan_class_folders(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    key, fingerprint = _identity(root, items, size, cache)
    target = cache / f"imagefolder-{key}.pt"
    saved = _read_cache(target, len(items), size)
    if saved is not None:
        return ImageSet(saved["images"], saved["labels"], None, classes, saved["ids"],
                        saved["fingerprint"])
    check_memory(len(items) * 3 * size * size,
                 f"{len(items):,} images of {root} at image_size {size}")
    images = np.empty((len(items), 3, size, size), np.uint8)
    for i, (path, _label) in enumerate(items):
        images[i] = decode_image(path, size, max_pixels)
    ids = [str(path.relative_to(root)) for path, _ in items]
    result = ImageSet(torch.from_numpy(images), torch.tensor([lab for _, lab in items]), None,
                      classes, ids, fingerprint)
    _write_cache(target, result)
    return result


def folder_source(root: Path, size: int, cache: Path) -> str:
    """A class folder's identity without decoding: its images' paths, classes and content
    hashes (the name of its decoded cache)."""
    return f"folder:{_identity(root, scan_class_folders(root), size, cache)[0]}"


def _root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise DataError("the imagefolder data set needs --data-root PATH "
                        "(one sub-folder per class)")
    return Path(cfg.root).expanduser()


def imagefolder_source(cfg: DataConfig, cache: Path) -> str:
    return folder_source(_root(cfg), cfg.image_size, cache)


@register_dataset("imagefolder", "Any folder with one sub-folder of images per class "
                  "(--data-root PATH; options: max_image_pixels)", options=FolderOptions,
                  source=imagefolder_source)
def load_imagefolder(cfg: DataConfig, cache: Path) -> ImageSet:
    opts: FolderOptions = options_of(cfg)
    return load_folder(_root(cfg), cfg.image_size, cache, opts.max_image_pixels)
