"""Kvasir v2 (8 classes of GI endoscopy findings) from its official archive.

The archive is downloaded once into the cache, its SHA-256 checked, extracted safely and then
decoded like any class-folder data set (the decoded tensors are cached too). The maintainers
publish no checksum, so the expected SHA-256 is pinned by the user (`options: {sha256: ...}`) or,
failing that, recorded on first download and enforced on every later use (trust on first use);
the hash is logged and stored in the data fingerprint either way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from pydantic import Field

from bench.config import DataConfig
from bench.data.base import ImageSet, options_of, register_dataset
from bench.data.imagefolder import FolderOptions, folder_source, load_folder
from bench.errors import DataError
from bench.store.artifacts import file_sha256

log = logging.getLogger(__name__)

KVASIR_URL = "https://datasets.simula.no/downloads/kvasir/kvasir-dataset-v2.zip"
KVASIR_CLASSES = (
    "dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
    "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis",
)
CHUNK = 1 << 20


class KvasirOptions(FolderOptions):
    """`options` of Kvasir: where to download it and the SHA-256 to pin the archive to."""

    url: str = Field(KVASIR_URL, min_length=1)
    sha256: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{64}$")


def download(url: str, target: Path, timeout: float = 60.0) -> None:
    """Stream url to target through a temporary file, so a broken download leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {err}. Download it by hand and pass "
                        "--data-root PATH (the .zip or the extracted folder)") from err
    partial.replace(target)


def verify(archive: Path, expected: str | None, record: Path) -> str:
    """Check archive against the pinned hash, or the one recorded at first use in `record`."""
    actual = file_sha256(archive)
    if expected is None and record.exists():
        expected = record.read_text().strip()
    if expected is not None and actual != expected.lower():
        raise DataError(f"SHA-256 mismatch for {archive}: expected {expected}, got {actual}; "
                        "delete the file to download it again")
    if expected is None:
        log.warning("no pinned SHA-256 for %s; recording %s (pin it with options.sha256)",
                    archive, actual)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(actual + "\n")
    return actual


def extract(archive: Path, target: Path) -> None:
    """Extract into target atomically, refusing members that would land outside it."""
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                dest = (staging / member).resolve()
                if not dest.is_relative_to(staging.resolve()):
                    raise DataError(f"unsafe path in archive {archive}: {member}")
            zf.extractall(staging)
    except zipfile.BadZipFile as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"not a valid zip archive: {archive} ({err})") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.replace(target)


def find_class_root(folder: Path) -> Path:
    """The folder that holds the class sub-folders (the archive nests one level)."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        names = {p.name for p in candidate.iterdir() if p.is_dir()}
        if names and names <= set(KVASIR_CLASSES) | {"__MACOSX"}:
            return candidate
    raise DataError(f"no Kvasir class folders ({', '.join(KVASIR_CLASSES)}) found in {folder}")


def _given_root(cfg: DataConfig) -> Path | None:
    root = Path(cfg.root).expanduser() if cfg.root else None
    if root is not None and not root.exists():
        raise DataError(f"data root does not exist: {root}")
    return root


def _sha_record(cache: Path, archive: Path) -> Path:
    return cache / "downloads" / f"{archive.name}.sha256"


def kvasir_source(cfg: DataConfig, cache: Path) -> str | None:
    """A given folder's content identity; for the archive, its size, mtime and pinned (or recorded)
    SHA-256 plus the extracted folder's identity. Hashing the archive itself takes seconds,
    so the full check is left to preparing, which runs whenever a cell does."""
    opts: KvasirOptions = options_of(cfg)
    root = _given_root(cfg)
    if root is not None and root.is_dir():
        return folder_source(find_class_root(root), cfg.image_size, cache)
    archive = root or cache / "downloads" / Path(opts.url).name
    if not archive.exists():
        raise DataError(f"Kvasir is not downloaded yet ({archive} does not exist)")
    record = _sha_record(cache, archive)
    digest = opts.sha256 or (record.read_text().strip() if record.exists() else None)
    extracted = cache / f"kvasir-{digest.lower()[:16]}" if digest else None
    if extracted is None or not extracted.exists():
        return None
    st = archive.stat()
    return (f"archive:{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}:{digest.lower()}:"
            + folder_source(find_class_root(extracted), cfg.image_size, cache))


@register_dataset("kvasir", "Kvasir v2, 8 GI endoscopy classes, from the official archive "
                  "(downloaded once, SHA-256 checked) or --data-root (zip or folder)",
                  nominal_images=8000, options=KvasirOptions, source=kvasir_source)
def load_kvasir(cfg: DataConfig, cache: Path) -> ImageSet:
    opts: KvasirOptions = options_of(cfg)
    url, expected, max_pixels = opts.url, opts.sha256, opts.max_image_pixels
    root = _given_root(cfg)
    if root is not None and root.is_dir():
        return load_folder(find_class_root(root), cfg.image_size, cache, max_pixels)
    archive = root or cache / "downloads" / Path(url).name
    if root is None and not archive.exists():
        download(url, archive)
    digest = verify(archive, expected, _sha_record(cache, archive))
    extracted = cache / f"kvasir-{digest[:16]}"
    if not extracted.exists():
        extract(archive, extracted)
    return load_folder(find_class_root(extracted), cfg.image_size, cache, max_pixels)
