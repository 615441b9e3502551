"""SHA-256 of a cell's artifact files: recorded at commit, checked before any use elsewhere."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(folder: Path) -> dict[str, str]:
    """{relative POSIX path: SHA-256} of every file under ``folder``, sorted by path."""
    if not folder.is_dir():
        return {}
    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def mismatches(folder: Path, expected: dict[str, str]) -> list[str]:
    """Files of ``expected`` that are missing under ``folder`` or differ from their hash."""
    bad = []
    for name, sha in sorted(expected.items()):
        path = folder / name
        if not path.is_file() or file_sha256(path) != sha:
            bad.append(name)
    return bad


class ArtifactMismatchError(RuntimeError):
    """A stored cell's artifact file is missing or differs from its record's SHA-256."""


def checked_artifact(folder: Path, cell_id: str, hashes: dict[str, str] | None,
                     name: str) -> Path:
    """``folder / name`` once its SHA-256 is the one cell ``cell_id``'s record states
    (``hashes``); ArtifactMismatchError naming the file otherwise (missing, differing, or a
    file the record does not list)."""
    path = folder / name
    expected = (hashes or {}).get(name)
    if expected is None:
        raise ArtifactMismatchError(f"{path}: not among the files of cell {cell_id}'s record")
    if not path.is_file():
        raise ArtifactMismatchError(f"{path}: missing (cell {cell_id}'s record lists it)")
    if file_sha256(path) != expected:
        raise ArtifactMismatchError(f"{path}: its SHA-256 differs from the one cell "
                                    f"{cell_id}'s record states (the file changed after the "
                                    "cell was stored)")
    return path


@contextmanager
def staging_folder(root: Path, cell_id: str) -> Iterator[Path]:
    """A fresh folder under ``root`` for a cell's artifacts; removed if the block raises."""
    folder = root / f"{cell_id}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
