"""The Kvasir path (download, SHA-256, extraction, caching) on a small archive served locally."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from bench.config import DataConfig
from bench.data import prepare
from bench.data.kvasir import KVASIR_CLASSES
from bench.errors import DataError
from tests.imaging import write_image


def make_archive(tmp: Path, per_class: int = 4) -> Path:
    src = tmp / "src" / "kvasir-dataset-v2"
    for c, name in enumerate(KVASIR_CLASSES):
        for i in range(per_class):
            write_image(src / name / f"{i}.jpg", size=24, seed=c * 10 + i, fmt="JPEG")
    archive = tmp / "serve" / "kvasir-dataset-v2.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*.jpg")):
            zf.write(f, f.relative_to(src.parent))
    return archive


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    archive = make_archive(tmp_path)
    CountingHandler.hits = 0
    handler = functools.partial(CountingHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    yield archive, url
    server.shutdown()


def kvasir_cfg(url=None, sha=None, root=None):
    options = {k: v for k, v in {"url": url, "sha256": sha}.items() if v}
    return DataConfig(name="kvasir", image_size=16, root=root, options=options,
                      split={"val": 0.25, "test": 0.25})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verify_extract_and_cache(served, monkeypatch, tmp_path):
    archive, url = served
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    data = prepare(kvasir_cfg(url, sha(archive)))
    assert data.images.classes == list(KVASIR_CLASSES)
    assert len(data.images.ids) == 8 * 4
    assert CountingHandler.hits == 1
    again = prepare(kvasir_cfg(url, sha(archive)))
    assert CountingHandler.hits == 1  # archive and decoded tensors both come from the cache
    assert again.split.manifest_hash == data.split.manifest_hash


def test_checksum_mismatch_is_refused(served, monkeypatch, tmp_path):
    _, url = served
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        prepare(kvasir_cfg(url, "0" * 64))
    assert not list((tmp_path / "cache").glob("kvasir-*"))


def test_unpinned_hash_is_recorded_then_enforced(served, monkeypatch, tmp_path):
    archive, url = served
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDQ_CACHE", str(cache))
    prepare(kvasir_cfg(url))
    record = cache / "downloads" / "kvasir-dataset-v2.zip.sha256"
    assert record.read_text().strip() == sha(archive)
    (cache / "downloads" / "kvasir-dataset-v2.zip").write_bytes(b"tampered")
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        prepare(kvasir_cfg(url))


def test_unreachable_server_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="cannot download .*--data-root"):
        prepare(kvasir_cfg("http://127.0.0.1:9/kvasir-dataset-v2.zip"))
    assert not list((tmp_path / "cache" / "downloads").glob("*"))


def test_data_root_accepts_zip_and_folder(served, monkeypatch, tmp_path):
    archive, _ = served
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    from_zip = prepare(kvasir_cfg(root=str(archive), sha=sha(archive)))
    from_folder = prepare(kvasir_cfg(root=str(tmp_path / "src")))
    assert from_zip.images.fingerprint == from_folder.images.fingerprint
    assert CountingHandler.hits == 0


def test_zip_with_escaping_path_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDQ_CACHE", str(tmp_path / "cache"))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    with pytest.raises(DataError, match="unsafe path"):
        prepare(kvasir_cfg(root=str(evil)))
