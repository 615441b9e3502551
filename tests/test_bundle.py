"""Offline bundles: export -> import reproduces the source store exactly; a bundle that is
tampered with, truncated or unsafe is refused with nothing written.

Tests taking `db_url` run on both backends (SQLite and a private PostgreSQL); the source store
is built from synthetic records, without training.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.exchange.bundle import (
    CELLS,
    MANIFEST,
    TOP,
    BundleError,
    Limits,
    export_bundle,
    import_bundle,
    read_bundle,
    seal,
)
from bench.store import CellRecord, ResultsStore
from bench.store.artifacts import hash_tree
from bench.store.bounds import latency_summary
from bench.store.deploy import deploy_files
from bench.store.measurements import save_measurement
from bench.store.query import RecordFilter
from bench.store.records import CellData, MeasurementData
from bench.store.schema import MeasurementRecord

T0 = datetime(2026, 3, 1, 12, 0, 0)
DEPLOY = {"onnx_file": "model.onnx", "columns": {"size_bytes": 11, "int_kernels": 0},
          "input_shape": [3, 32, 32]}


def _cell(cell_id: str, method: str = "fp32", bits: int = 32, **changes: Any) -> CellRecord:
    base: dict[str, Any] = dict(
        cell_id=cell_id, parent_id=None, device="lab-gpu", grid="tiny", dataset="synthetic",
        backbone="smallcnn", method=method, w_bits=bits, a_bits=bits, seed=0, status="ok",
        error=None, accuracy=0.1 + 0.2, macro_f1=1 / 3, train_seconds=12.5,
        split_manifest="m" * 16, metrics={"deploy": DEPLOY, "note": "µ-accuracy"},
        config={"lr": 0.003, "nested": {"a": [1, 2.5, None]}},
        provenance={"git": {"commit": "abc123"}, "packages": {"torch": "2.14.1"}},
        started_at=T0, finished_at=T0 + timedelta(seconds=30))
    return CellRecord(**{**base, **changes})


def _measurement(cell_id: str, device: str, profile: str, p50: float) -> MeasurementRecord:
    samples = [p50 / 1000 * f for f in (0.5, 1.0, 1.3)]
    return MeasurementRecord(
        cell_id=cell_id, device=device, profile=profile, machine="m" + device[:3].replace(
            "-", ""), batch_size=1, status="ok", error=None, isolation="process",
        samples_s=samples, **latency_summary(samples), load_time_s=0.01, peak_rss_mb=50.5,
        size_bytes=11, packed_size_bytes=8, fingerprint={"hash": "x", "cpu_model": "Test"},
        profile_config={"threads": 1}, details={}, started_at=T0, finished_at=T0)


def build_source(root: Path, db_url: str | None) -> ResultsStore:
    """Three cells (two with files: a deploy stage entry, a nested folder; one failed without
    files) and two measurements on two devices."""
    store = ResultsStore(root, db_url)
    files = {"fp32a": {"model.onnx": b"onnx-fp32", "checkpoint.pt": b"\x00\x01weights",
                       "predictions/test.npy": b"npy" * 100},
             "qat4": {"model.onnx": b"onnx-qat", "model.packed.npz": b"packed",
                      "checkpoint.pt": b"qat-weights"}}
    metrics = {"fp32a": {"deploy": DEPLOY},
               "qat4": {"deploy": {**DEPLOY, "packed_file": "model.packed.npz"}}}
    for cell_id, method, bits in (("fp32a", "fp32", 32), ("qat4", "qat", 4)):
        with store.staging(cell_id) as staged:
            for name, data in files[cell_id].items():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                (staged / name).write_bytes(data)
            store.commit(_cell(cell_id, method, bits, metrics=metrics[cell_id],
                               parent_id=None if bits == 32 else "fp32a"), staged)
    store.commit(_cell("failed1", "pact", 2, status="failed", error="Traceback\nboom",
                       accuracy=None, macro_f1=None, dataset="other", metrics={}))
    save_measurement(store.engine, _measurement("fp32a", "pi-4", "raspberry-pi-4", 7.25))
    save_measurement(store.engine, _measurement("qat4", "lab-gpu", "host", 0.5))
    return store


@pytest.fixture
def source(tmp_path: Path, db_url: str | None) -> ResultsStore:
    return build_source(tmp_path / "source", db_url)


@pytest.fixture
def target(tmp_path: Path, db_url: str | None, request: pytest.FixtureRequest
           ) -> Iterator[ResultsStore]:
    """An empty store on the same backend as `source` (its own database)."""
    if db_url is None:
        yield ResultsStore(tmp_path / "target")
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    try:
        store = ResultsStore(tmp_path / "target", server.url(name))
        yield store
        store.engine.dispose()
    finally:
        server.drop_database(name)


def records(store: ResultsStore) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every cell and measurement of ``store`` as exchange data, in a stable order."""
    with Session(store.engine) as session:
        cells = [CellData.of(r) for r in session.scalars(select(CellRecord))]
        measurements = [MeasurementData.of(r) for r in session.scalars(select(MeasurementRecord))]
    return (sorted((c.model_dump() for c in cells), key=lambda d: d["cell_id"]),
            sorted((m.model_dump() for m in measurements), key=lambda d: (d["cell_id"],
                                                                          d["device"])))


def hashes(store: ResultsStore) -> set[str]:
    with Session(store.engine) as session:
        return {*session.scalars(select(CellRecord.record_hash)),
                *session.scalars(select(MeasurementRecord.record_hash))}


def snapshot(store: ResultsStore) -> tuple[Any, ...]:
    """What a refused import must leave untouched: rows, hashes and every artifact path."""
    files = {p.relative_to(store.artifact_root).as_posix()
             for p in store.artifact_root.rglob("*")}
    with Session(store.engine) as session:
        artifacts = sorted((r.cell_id, r.artifacts) for r in session.scalars(select(CellRecord)))
    return records(store), hashes(store), files, hash_tree(store.artifact_root), artifacts


def export(store: ResultsStore, path: Path, artifacts: str = "none", **filters: Any) -> Path:
    export_bundle(store, path, RecordFilter(**filters), artifacts)  # type: ignore[arg-type]
    return path


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def retar(path: Path, content: dict[str, bytes], extra: Callable[[tarfile.TarFile], None]
          | None = None) -> Path:
    """Write ``content`` ({member name: bytes}, in order) as a gzip'd tar at ``path``."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return path


def relist(doc: dict[str, Any], name: str, data: bytes) -> None:
    """List member ``name`` with the hash and size of ``data`` in the manifest ``doc``."""
    doc["files"][name] = hashlib.sha256(data).hexdigest()
    doc["sizes"][name] = len(data)


def resealed(content: dict[str, bytes], change: Callable[[dict[str, Any]], None]
             ) -> dict[str, bytes]:
    """``content`` with its manifest changed by ``change`` and sealed again, as a forger
    who knows the format would."""
    key = f"medq-bundle/{MANIFEST}"
    document = json.loads(content[key])
    change(document)
    document.pop("digest")
    return {**content, key: seal(document)}


def assert_refused(store: ResultsStore, bundle: Path, match: str | None) -> None:
    before = snapshot(store)
    with pytest.raises(BundleError, match=match):
        import_bundle(store, bundle)
    assert snapshot(store) == before


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", ["all", "deploy", "none"])
def test_round_trip_equals_source(source, target, tmp_path, mode):
    bundle = export(source, tmp_path / "b.tar.gz", mode)
    result = import_bundle(target, bundle)
    assert result.as_counts() == {"added": 5, "replaced": 0, "unchanged": 0, "stale": 0}
    assert records(target) == records(source)
    assert hashes(target) == hashes(source) == set(result.added)
    for cell in records(source)[0]:
        expected = cell["artifact_hashes"]
        if mode == "deploy":
            expected = {k: v for k, v in expected.items()
                        if k in deploy_files(CellData.model_validate(cell))}
        elif mode == "none":
            expected = {}
        assert hash_tree(target.artifact_dir(cell["cell_id"])) == expected
    if mode == "deploy":
        assert set(hash_tree(target.artifact_dir("qat4"))) == {"model.onnx", "model.packed.npz"}
    assert (target.artifact_dir("fp32a") / "model.onnx").exists() == (mode != "none")
    assert (target.get("fp32a").artifacts is not None) == (mode != "none")
    assert (target.artifact_dir("fp32a") / "checkpoint.pt").exists() == (mode == "all")


def test_export_does_not_change_the_source(source, tmp_path):
    def state() -> dict[str, str]:
        return {p.relative_to(source.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(source.root.rglob("*")) if p.is_file()
                and not p.name.endswith(("-wal", "-shm"))}

    before, rows = state(), records(source)
    export(source, tmp_path / "b.tar.gz", "all")
    assert state() == before and records(source) == rows


def test_reimport_changes_nothing(source, target, tmp_path):
    bundle = export(source, tmp_path / "b.tar.gz", "all")
    import_bundle(target, bundle)
    before = snapshot(target)
    mtimes = {p: p.stat().st_mtime_ns for p in target.artifact_root.rglob("*")}
    again = import_bundle(target, bundle)
    assert again.as_counts() == {"added": 0, "replaced": 0, "unchanged": 5, "stale": 0}
    assert snapshot(target) == before
    assert {p: p.stat().st_mtime_ns for p in target.artifact_root.rglob("*")} == mtimes


def test_a_better_record_replaces_and_a_worse_is_stale(source, target, tmp_path):
    import_bundle(target, export(source, tmp_path / "old.tar.gz"))
    source.commit(_cell("failed1", "pact", 2, dataset="other", metrics={},
                        finished_at=T0 + timedelta(hours=1)))
    result = import_bundle(target, export(source, tmp_path / "new.tar.gz"))
    assert result.as_counts() == {"added": 0, "replaced": 1, "unchanged": 4, "stale": 0}
    assert target.get("failed1").status == "ok"
    assert import_bundle(source, export(target, tmp_path / "same.tar.gz")).as_counts()[
        "unchanged"] == 5


def test_filters_select_records(source, tmp_path):
    def selected(**filters: Any) -> tuple[set[str], set[tuple[str, str]]]:
        with read_bundle(export(source, tmp_path / "f.tar.gz", **filters)) as loaded:
            assert loaded.manifest.filters["methods"] == filters.get("methods", [])
            return ({c.cell_id for c in loaded.batch.cells},
                    {(m.cell_id, m.device) for m in loaded.batch.measurements})

    everything = ({"fp32a", "qat4", "failed1"}, {("fp32a", "pi-4"), ("qat4", "lab-gpu")})
    assert selected() == everything
    assert selected(methods=["qat"]) == ({"qat4"}, {("qat4", "lab-gpu")})
    assert selected(w_bits=[32]) == ({"fp32a"}, {("fp32a", "pi-4")})
    assert selected(datasets=["other"]) == ({"failed1"}, set())
    assert selected(status=["failed"]) == ({"failed1"}, set())
    assert selected(devices=["pi-4"], cells_by_device=True) == (set(), {("fp32a", "pi-4")})
    assert selected(profiles=["host"]) == (everything[0], {("qat4", "lab-gpu")})
    assert selected(methods=["nope"]) == (set(), set())


def test_deploy_files_are_what_the_deploy_stage_recorded():
    cell = CellData.of(_cell("c", metrics={"deploy": {**DEPLOY, "packed_file": "p.npz",
                                                      "other_file": "gone.bin"}},
                             artifact_hashes={"model.onnx": "a" * 64, "p.npz": "b" * 64,
                                              "checkpoint.pt": "c" * 64}))
    assert deploy_files(cell) == ["model.onnx", "p.npz"]
    assert deploy_files(CellData.of(_cell("d", metrics={}, artifact_hashes={}))) == []


def test_a_changed_artifact_is_left_out_of_the_export(source, tmp_path):
    (source.artifact_dir("qat4") / "checkpoint.pt").write_bytes(b"changed after commit")
    summary = export_bundle(source, tmp_path / "b.tar.gz", artifacts="all")
    assert summary.skipped == ["qat4/checkpoint.pt: differs from its recorded hash"]
    assert "medq-bundle/artifacts/qat4/checkpoint.pt" not in members(summary.path)
    assert summary.sha256 == hashlib.sha256(summary.path.read_bytes()).hexdigest()


def test_a_failed_export_leaves_no_partial_bundle(source, tmp_path, monkeypatch):
    import bench.exchange.bundle as bundle_module

    out = export(source, tmp_path / "out" / "b.tar.gz")
    previous = out.read_bytes()
    (source.artifact_dir("qat4") / "checkpoint.pt").write_bytes(b"changed mid-export")
    recorded = source.get("qat4").artifact_hashes["checkpoint.pt"]
    monkeypatch.setattr(bundle_module, "file_sha256", lambda path: recorded)
    with pytest.raises(BundleError, match="changed while it was being exported"):
        export(source, out, "all")
    assert out.read_bytes() == previous and list(out.parent.iterdir()) == [out]


# ---------------------------------------------------------------- refusals


@pytest.fixture
def bundle(source, tmp_path) -> Path:
    return export(source, tmp_path / "good.tar.gz", "all")


@pytest.fixture
def loaded_target(target, tmp_path) -> ResultsStore:
    """A target that already holds a different record, so 'nothing written' is not trivial."""
    target.commit(_cell("other", device="laptop"))
    return target


def test_flipped_byte_in_records_is_refused(bundle, loaded_target, tmp_path):
    content = members(bundle)
    cells = bytearray(content[f"medq-bundle/{CELLS}"])
    at = cells.index(b'"accuracy":0.30000000000000004') + len(b'"accuracy":0.3')
    cells[at] ^= 0x01
    bad = retar(tmp_path / "bad.tar.gz", {**content, f"medq-bundle/{CELLS}": bytes(cells)})
    assert_refused(loaded_target, bad, "records/cells.jsonl does not match its SHA-256")


def test_flipped_byte_in_an_artifact_is_refused(bundle, loaded_target, tmp_path):
    content = members(bundle)
    name = "medq-bundle/artifacts/fp32a/model.onnx"
    bad = retar(tmp_path / "bad.tar.gz", {**content, name: b"onnx-fp33"})
    assert_refused(loaded_target, bad, "artifacts/fp32a/model.onnx does not match")


@pytest.mark.parametrize("offset", [0.25, 0.5, 0.75, -6, -2])
def test_flipped_byte_in_the_gzip_stream_is_refused(bundle, loaded_target, tmp_path, offset):
    data = bytearray(bundle.read_bytes())
    at = int(len(data) * offset) if offset > 0 else len(data) + int(offset)
    data[at] ^= 0x40
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    assert_refused(loaded_target, bad, None)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_bundle_is_refused(bundle, loaded_target, tmp_path, keep):
    data = bundle.read_bytes()
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes(data[:int(len(data) * keep)])
    assert_refused(loaded_target, bad, "truncated or corrupt|no medq-bundle/manifest.json")


def test_edited_manifest_is_refused(bundle, loaded_target, tmp_path):
    content = members(bundle)
    key = f"medq-bundle/{MANIFEST}"
    edited = content[key].replace(b'"created_at": "2', b'"created_at": "1')
    assert edited != content[key]
    assert_refused(loaded_target, retar(tmp_path / "m.tar.gz", {**content, key: edited}),
                   "manifest.json was edited")
    reformatted = json.dumps(json.loads(content[key])).encode()
    assert_refused(loaded_target, retar(tmp_path / "f.tar.gz", {**content, key: reformatted}),
                   "manifest.json was edited")


def test_resealed_manifest_must_still_match_the_records(bundle, loaded_target, tmp_path):
    content = members(bundle)
    cells_key = f"medq-bundle/{CELLS}"
    forged = content[cells_key].replace(b'"accuracy":0.30000000000000004', b'"accuracy":0.99')

    def point_at_forgery(doc: dict[str, Any]) -> None:
        relist(doc, CELLS, forged)
        doc["counts"]["cells"] = 2

    bad = retar(tmp_path / "bad.tar.gz", resealed({**content, cells_key: forged},
                                                  point_at_forgery))
    assert_refused(loaded_target, bad, "manifest counts 2 cells")


def test_artifact_not_in_the_cell_record_is_refused(bundle, loaded_target, tmp_path):
    content = members(bundle)
    evil = b"not the model the record describes"
    name = "artifacts/fp32a/model.onnx"
    bad = retar(tmp_path / "bad.tar.gz", resealed({**content, f"medq-bundle/{name}": evil},
                                                  lambda doc: relist(doc, name, evil)))
    assert_refused(loaded_target, bad, "not a file that cell fp32a's record lists")


def test_unknown_format_or_version_is_refused(bundle, loaded_target, tmp_path):
    content = members(bundle)
    v3 = retar(tmp_path / "v3.tar.gz", resealed(content, lambda d: d.update(version=3)))
    assert_refused(loaded_target, v3, "bundle version 3 is not supported")
    other = retar(tmp_path / "o.tar.gz", resealed(content, lambda d: d.update(format="zip")))
    assert_refused(loaded_target, other, "not a medq-bench bundle")


@pytest.mark.parametrize("name, match", [
    ("medq-bundle/../../escaped.txt", "unsafe member name"),
    ("/tmp/absolute.txt", "unsafe member name"),
    ("elsewhere/file.txt", "outside medq-bundle/"),
    ("medq-bundle/extra.txt", "not listed in the bundle's manifest"),
    ("medq-bundle/records/cells.jsonl", "appears twice"),
])
def test_unsafe_unlisted_or_repeated_member_is_refused(bundle, loaded_target, tmp_path, name,
                                                       match):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))

    assert_refused(loaded_target, retar(tmp_path / "bad.tar.gz", members(bundle), add), match)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                  tarfile.FIFOTYPE])
def test_links_and_devices_are_refused(bundle, loaded_target, tmp_path, kind):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("medq-bundle/artifacts/fp32a/link")
        info.type, info.linkname = kind, "/etc/passwd"
        tar.addfile(info)

    bad = retar(tmp_path / "bad.tar.gz", members(bundle), add)
    assert_refused(loaded_target, bad, "plain files only")


def test_manifest_must_come_first_and_list_every_member(bundle, loaded_target, tmp_path):
    content = members(bundle)
    key = f"medq-bundle/{MANIFEST}"
    later = {k: v for k, v in content.items() if k != key} | {key: content[key]}
    assert_refused(loaded_target, retar(tmp_path / "a.tar.gz", later), "must be first")
    dropped = {k: v for k, v in content.items() if not k.endswith("checkpoint.pt")}
    assert_refused(loaded_target, retar(tmp_path / "b.tar.gz", dropped),
                   "2 file.s. the manifest lists are missing")
    assert_refused(loaded_target, retar(tmp_path / "c.tar.gz", {}), "no medq-bundle/manifest")


@pytest.mark.parametrize("path", ["../../medq.sqlite", "a/../b", "./model.onnx"])
def test_records_listing_dot_paths_are_refused(bundle, loaded_target, tmp_path, path):
    content = members(bundle)
    cells_key = f"medq-bundle/{CELLS}"
    forged = content[cells_key].replace(b'"artifact_hashes":{}',
                                        f'"artifact_hashes":{{"{path}":"{"a" * 64}"}}'.encode())
    assert forged != content[cells_key]
    bad = retar(tmp_path / "bad.tar.gz", resealed({**content, cells_key: forged},
                                                  lambda doc: relist(doc, CELLS, forged)))
    assert_refused(loaded_target, bad, "not allowed in an artifact path")


def test_not_a_gzip_file_is_refused(loaded_target, tmp_path):
    bad = tmp_path / "plain.tar.gz"
    bad.write_bytes(b"just text, not a bundle\n" * 10)
    assert_refused(loaded_target, bad, "truncated or corrupt")
    assert_refused(loaded_target, tmp_path / "absent.tar.gz", "no bundle file")


def test_limits(bundle):
    size = bundle.stat().st_size
    with pytest.raises(BundleError, match="larger than the limit"):
        read_bundle(bundle, max_bytes=size - 1)
    read_bundle(bundle, max_bytes=size).close()
    with pytest.raises(BundleError, match="more than 3 members"):
        read_bundle(bundle, limits=Limits(members=3))
    with pytest.raises(BundleError, match="larger than the limit of 100 bytes"):
        read_bundle(bundle, limits=Limits(member_bytes=100))
    with pytest.raises(BundleError, match="unpacks to more than"):
        read_bundle(bundle, limits=Limits(unpacked_bytes=2000))


def header_bomb(path: Path, header_bytes: int) -> Path:
    """A gzip'd tar whose first member carries a pax `path` attribute of ``header_bytes``
    bytes (gzip shrinks it about a thousandfold), written without holding it in memory."""
    body = len(" path=\n") + header_bytes
    length = body + len(str(body + len(str(body))))
    pax = tarfile.TarInfo(f"{TOP}/PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, length
    manifest = tarfile.TarInfo(f"{TOP}/{MANIFEST}")
    manifest.size = 2
    chunk = b"a" * (1 << 20)
    with gzip.open(path, "wb") as gz:
        gz.write(pax.tobuf(tarfile.USTAR_FORMAT) + f"{length} path=".encode())
        for start in range(0, header_bytes, len(chunk)):
            gz.write(chunk[:header_bytes - start])
        gz.write(b"\n" + b"\0" * (-length % 512))
        gz.write(manifest.tobuf(tarfile.USTAR_FORMAT) + b"{}".ljust(512 + 1024, b"\0"))
    return path


PEAK_MEMORY = """
import resource, sys
from bench.exchange.bundle import BundleError, Limits, read_bundle
limits = Limits(unpacked_bytes=int(sys.argv[2])) if sys.argv[2] else Limits()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_bundle(sys.argv[1], limits=limits).close()
    refusal = "accepted"
except BundleError as err:
    refusal = f"refused: {str(err)[:200]}"
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(refusal)
"""


@pytest.mark.parametrize("unpacked", ["10000", ""])
def test_a_huge_member_header_is_refused_before_it_is_read(tmp_path, unpacked):
    bomb = header_bomb(tmp_path / "bomb.tar.gz", 200 << 20)
    assert bomb.stat().st_size < 1 << 20
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(bomb), unpacked],
                          capture_output=True, text=True, timeout=300, check=True)
    grown_mb, refusal = done.stdout.strip().splitlines()
    assert int(grown_mb) < 100, f"reading the bundle grew memory by {grown_mb} MB ({refusal})"
    assert refusal.startswith("refused: a member header") and "64 KiB" in refusal, refusal


def test_the_unpacked_stream_is_capped_past_its_members(bundle, tmp_path):
    """Zeros after the end of the archive count too (a gzip bomb needs no members): past the
    end-of-archive padding the stream is refused at once, whatever the limits."""
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(gzip.compress(gzip.decompress(bundle.read_bytes()) + bytes(8 << 20)))
    limits = Limits(unpacked_bytes=1 << 20, members=20)
    with pytest.raises(BundleError, match="data after the end of its archive"):
        read_bundle(padded)
    with pytest.raises(BundleError, match="data after the end of its archive"):
        read_bundle(padded, limits=limits)
    read_bundle(bundle, limits=limits).close()


def test_records_over_their_limit_are_refused(bundle):
    size = len(members(bundle)[f"{TOP}/{CELLS}"])
    with pytest.raises(BundleError, match=f"{CELLS} is larger than the limit of {size - 1}"):
        read_bundle(bundle, limits=Limits(records_bytes=size - 1))
    read_bundle(bundle, limits=Limits(records_bytes=size)).close()


def test_read_bundle_takes_a_file_object_and_cleans_up(bundle, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with bundle.open("rb") as handle, read_bundle(handle, workdir=work) as loaded:
        assert len(loaded.batch) == 5 and set(loaded.artifact_dirs) == {"fp32a", "qat4"}
        assert loaded.manifest.counts.cells == 3
    assert not list(work.iterdir())
    with pytest.raises(BundleError):
        read_bundle(io.BytesIO(gzip.compress(b"\0" * 1024)), workdir=work)
    assert not list(work.iterdir())


# ---------------------------------------------------------------- CLI (stores given by folder)


@pytest.fixture
def folder_source(tmp_path: Path) -> ResultsStore:
    return build_source(tmp_path / "source", None)


def test_cli_export_and_import(cli, folder_source, tmp_path):
    source = folder_source
    bundle = tmp_path / "out" / "b.tar.gz"
    result = cli("export", "--store", source.root, "--out", bundle, "--with-artifacts")
    assert result.exit_code == 0, result.output
    assert "3 cells, 2 measurements, 6 artifact files" in result.output
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() in result.output
    assert [p.name for p in bundle.parent.iterdir()] == ["b.tar.gz"]
    target = tmp_path / "target"
    first = cli("import", bundle, "--store", target)
    assert first.exit_code == 0, first.output
    assert "5 added, 0 replaced, 0 unchanged, 0 stale" in first.output
    second = cli("import", bundle, "--store", target)
    assert "0 added, 0 replaced, 5 unchanged, 0 stale" in second.output
    filtered = cli("export", "--store", source.root, "--out", tmp_path / "f.tar.gz",
                   "--method", "qat", "--w-bits", "4", "--artifacts", "deploy")
    assert "1 cells, 1 measurements, 2 artifact files" in filtered.output


def test_cli_refusals_exit_2(cli, folder_source, tmp_path):
    source = folder_source
    bundle = tmp_path / "b.tar.gz"
    assert cli("export", "--store", source.root, "--out", bundle).exit_code == 0
    data = bundle.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[:len(data) // 2])
    target = tmp_path / "target"
    refused = cli("import", tmp_path / "cut.tar.gz", "--store", target)
    assert refused.exit_code == 2 and "truncated or corrupt" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert not target.exists()
    assert cli("export", "--store", tmp_path / "none", "--out", bundle).exit_code == 2
    clash = cli("export", "--store", source.root, "--out", tmp_path / "x.tar.gz",
                "--with-artifacts", "--artifacts", "deploy")
    assert clash.exit_code == 2 and not (tmp_path / "x.tar.gz").exists()


def test_cli_import_holds_the_stores_run_lock(cli, folder_source, tmp_path):
    bundle = tmp_path / "b.tar.gz"
    assert cli("export", "--store", folder_source.root, "--out", bundle).exit_code == 0
    target = ResultsStore(tmp_path / "target")
    with target.exclusive("run"):
        busy = cli("import", bundle, "--store", target.root)
    assert busy.exit_code == 2 and "another bench run is using the store" in busy.output
    assert records(target) == ([], [])
    assert cli("import", bundle, "--store", target.root).exit_code == 0
    assert records(target) == records(folder_source)

def test_a_replacing_cell_brings_its_own_files(source, target, tmp_path):
    import_bundle(target, export(source, tmp_path / "old.tar.gz", "all"))
    with source.staging("fp32a") as staged:
        (staged / "model.onnx").write_bytes(b"onnx-fp32, retrained")
        source.commit(_cell("fp32a", finished_at=T0 + timedelta(hours=1)), staged)
    result = import_bundle(target, export(source, tmp_path / "new.tar.gz", "all"))
    assert result.as_counts()["replaced"] == 1
    assert (target.artifact_dir("fp32a") / "model.onnx").read_bytes() == b"onnx-fp32, retrained"
    assert target.get("fp32a").artifact_hashes == hash_tree(target.artifact_dir("fp32a"))
