"""A folder with one sub-folder per class, decoded and resized once into a cached tensor file.

Every image is checked while it is decoded: a zero-byte, truncated or unreadable file stops the
run with a DataError naming it. Grey, palette, CMYK, alpha and 16-bit images are converted to
8-bit RGB, and each conversion is logged.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.config import DataConfig
from bench.data.base import ImageSet, register_dataset
from bench.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CACHE_VERSION = 1


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
        if not files:
            raise DataError(f"class folder has no images: {folder}")
        items.extend((f, label) for f in files)
    return items


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


def decode_image(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 array; DataError naming the file when it cannot be decoded."""
    if path.stat().st_size == 0:
        raise DataError(f"empty (zero-byte) image file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb8(img, path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)


def _cache_key(root: Path, items: list[tuple[Path, int]], size: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{root.resolve()}:{size}".encode())
    for path, label in items:
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def load_folder(root: Path, size: int, cache: Path) -> ImageSet:
    """Decode (or reuse the cached decoding of) every image under root at size x size."""
    items = scan_class_folders(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    target = cache / f"imagefolder-{_cache_key(root, items, size)}.pt"
    if target.exists():
        saved = torch.load(target, weights_only=True)
        return ImageSet(saved["images"], saved["labels"], None, classes, saved["ids"],
                        saved["fingerprint"])
    images = np.empty((len(items), 3, size, size), np.uint8)
    content = hashlib.sha256()
    for i, (path, label) in enumerate(items):
        images[i] = decode_image(path, size)
        content.update(f"{path.relative_to(root)}:{label}:".encode())
        content.update(hashlib.sha256(path.read_bytes()).digest())
    ids = [str(path.relative_to(root)) for path, _ in items]
    result = ImageSet(torch.from_numpy(images), torch.tensor([lab for _, lab in items]), None,
                      classes, ids, content.hexdigest()[:16])
    partial = target.with_suffix(".part")
    torch.save({"images": result.images, "labels": result.labels, "ids": ids,
                "fingerprint": result.fingerprint}, partial)
    partial.replace(target)
    return result


@register_dataset("imagefolder", "Any folder with one sub-folder of images per class "
                  "(--data-root PATH)")
def load_imagefolder(cfg: DataConfig, cache: Path) -> ImageSet:
    if cfg.root is None:
        raise DataError("the imagefolder data set needs --data-root PATH "
                        "(one sub-folder per class)")
    return load_folder(Path(cfg.root).expanduser(), cfg.image_size, cache)
