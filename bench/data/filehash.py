"""SHA-256 of a folder's files, each file hashed once and its hash kept under the file's
(path, size, mtime, ctime, inode), as git's index keeps them: a file whose content changes gets
a new inode (`cp -p`, `rsync -t`, `tar x` write a new file) or a new ctime (written in place,
even with its old mtime put back), so its entry no longer matches and it is hashed again.

The index is one JSON file per folder under the cache (`filehashes/`). An entry whose mtime is
within ``RACY_S`` of the moment it was hashed is not kept (git's "racily clean" case: the file
may change again within the clock's resolution without its times showing it). An index that
cannot be read is ignored, one that cannot be written is skipped with a warning: both only
cost hashing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from bench.store.artifacts import file_sha256

log = logging.getLogger(__name__)

INDEX_DIR = "filehashes"
INDEX_VERSION = 1
RACY_S = 2.0


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def index_path(cache: Path, root: Path) -> Path:
    key = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:20]
    return cache / INDEX_DIR / f"{key}.json"


def _read(path: Path) -> dict[str, list]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable file-hash index %s: %s", path, err)
        return {}
    if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION:
        return {}
    files = raw.get("files")
    return files if isinstance(files, dict) else {}


def _write(path: Path, root: Path, files: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        partial.write_text(json.dumps({"version": INDEX_VERSION, "root": str(root.resolve()),
                                       "files": files}))
        partial.replace(path)
    except OSError as err:
        log.warning("cannot write the file-hash index %s (%s); the files will be hashed "
                    "again next time", path, err.strerror or err)


def content_hashes(root: Path, paths: list[Path], cache: Path) -> dict[Path, str]:
    """SHA-256 (hex) of each of ``paths`` (files under ``root``), from the index where a file's
    (size, mtime, ctime, inode) are those it was hashed at, else by reading it."""
    where = index_path(cache, root)
    known = _read(where)
    kept: dict[str, list] = {}
    hashes: dict[Path, str] = {}
    changed = False
    for path in paths:
        rel = path.relative_to(root).as_posix()
        stamp = _stamp(path.stat())
        entry = known.get(rel)
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == stamp:
            hashes[path], kept[rel] = entry[4], entry
            continue
        hashes[path] = file_sha256(path)
        changed = True
        after = _stamp(path.stat())
        if after == stamp and time.time() - stamp[1] / 1e9 > RACY_S:
            kept[rel] = [*stamp, hashes[path]]
    if changed or kept.keys() != known.keys():
        _write(where, root, kept)
    return hashes
