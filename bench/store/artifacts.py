"""SHA-256 of a cell's artifact files: recorded at commit, checked before any use elsewhere."""

from __future__ import annotations

import hashlib
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
