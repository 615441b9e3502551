"""Results that carry their origin (issue 18, point 2): Ed25519 keys, signed bundles checked by
`bench import --trust`, signed uploads a server requires once a device's key is registered, no
future `finished_at`, and an audit of every replaced record."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench.exchange.bundle import MANIFEST, BundleError, export_bundle, import_bundle
from bench.exchange.client import RequestRefused, ServerClient
from bench.exchange.signing import (
    SIGNATURE_HEADER,
    create_key,
    load_signer,
    read_public_keys,
    sign_upload,
)
from bench.exchange.upload import upload_store
from bench.server.app import create_app
from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import CellRecord, ResultsStore
from bench.store.origins import signatures_by_device
from bench.store.records import MAX_CLOCK_SKEW, utc_now
from bench.store.schema import RecordOrigin, RecordReplacement
from tests.server_helpers import batch, bearer, body, cell, measurement
from tests.test_bundle import members, resealed, retar

CELLS_MEMBER = "medq-bundle/records/cells.jsonl"


@pytest.fixture
def key(tmp_path, monkeypatch) -> Path:
    """This machine's signing key (in a private config folder), made by `bench keys create`."""
    path = tmp_path / "config" / "medq-bench" / "signing-key.pem"
    monkeypatch.setenv("MEDQ_SIGNING_KEY", str(path))
    create_key("lab-gpu", path)
    return path


@pytest.fixture
def other_key(tmp_path) -> Path:
    path = tmp_path / "intruder" / "signing-key.pem"
    create_key("intruder", path)
    return path


def source_store(root: Path) -> ResultsStore:
    store = ResultsStore(root)
    store.ingest(batch([cell("c1", device="lab-gpu"), cell("c2", device="lab-gpu", bits=8,
                                                           method="ptq")],
                       [measurement("c1", device="lab-gpu")]))
    return store


def origins(store: ResultsStore) -> list[tuple[str, str | None, bool]]:
    with Session(store.engine) as session:
        return sorted((o.kind, o.signer, o.verified) for o in session.scalars(
            select(RecordOrigin)))


# ---------------------------------------------------------------- keys


def test_keys_create_writes_a_private_key_only_its_owner_reads(cli, tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "medq-bench" / "signing-key.pem"
    monkeypatch.setenv("MEDQ_SIGNING_KEY", str(path))
    made = cli("keys", "create", "--name", "clinic-pi")
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = made.stdout.strip().splitlines()[-1]
    assert line.startswith("ed25519 ") and line.endswith(" clinic-pi")
    assert path.with_suffix(".pub").read_text().strip() == line
    assert read_public_keys([path.with_suffix(".pub")])[0].name == "clinic-pi"
    assert cli("keys", "show").stdout.strip().splitlines()[-1] == line
    again = cli("keys", "create")
    assert again.exit_code == 2 and "a signing key exists" in again.output
    assert cli("keys", "create", "--force").stdout.strip().splitlines()[-1] != line
    path.chmod(0o644)
    shown = cli("keys", "show")
    assert shown.exit_code == 2 and "may be read by others" in shown.output


def test_the_default_key_lives_in_the_users_config_folder(tmp_path, monkeypatch):
    from bench.exchange.signing import key_path

    monkeypatch.delenv("MEDQ_SIGNING_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_path() == tmp_path / "xdg" / "medq-bench" / "signing-key.pem"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert key_path() == Path.home() / ".config" / "medq-bench" / "signing-key.pem"


# ---------------------------------------------------------------- bundles


def test_a_signed_bundle_imports_with_its_verified_signer(cli, key, tmp_path):
    source = source_store(tmp_path / "src")
    out = cli("export", "--store", source.root, "--out", tmp_path / "b.tar.gz")
    assert out.exit_code == 0 and f"signed with key {load_signer().public.fingerprint}" in \
        out.output
    done = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst", "--trust",
               key.with_suffix(".pub"))
    assert done.exit_code == 0, done.output
    assert "signer of all 3 records: signed by lab-gpu (key" in done.output
    assert "verified against --trust" in done.output
    target = ResultsStore(tmp_path / "dst")
    assert origins(target) == [("cell", "lab-gpu", True)] * 2 + [("measurement", "lab-gpu", True)]
    (device,) = signatures_by_device(target.engine)
    assert device.text() == "lab-gpu: 3 verified (signed by lab-gpu)"
    plain = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst2")
    assert "signed by key" in plain.output and "not verified" in plain.output


def test_trust_refuses_an_unsigned_bundle(cli, tmp_path, key, monkeypatch):
    monkeypatch.setenv("MEDQ_SIGNING_KEY", str(tmp_path / "none.pem"))
    source = source_store(tmp_path / "src")
    out = cli("export", "--store", source.root, "--out", tmp_path / "b.tar.gz")
    assert "not signed: no signing key" in out.output
    refused = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst", "--trust",
                  key.with_suffix(".pub"))
    assert refused.exit_code == 2 and "the bundle is not signed" in refused.output
    assert not (tmp_path / "dst").exists()


def test_trust_refuses_a_bundle_signed_by_another_key(cli, tmp_path, key, other_key):
    source = source_store(tmp_path / "src")
    export_bundle(source, tmp_path / "b.tar.gz", signer=load_signer(other_key))
    refused = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst", "--trust",
                  key.with_suffix(".pub"))
    assert refused.exit_code == 2 and "which --trust does not list" in refused.output
    assert not (tmp_path / "dst").exists()


def forged(bundle: Path, out: Path, keep_signature: bool) -> Path:
    """``bundle`` with a better accuracy and a later finish for c1, hashes recomputed and the
    manifest sealed again, as a forger who knows the format (but not the key) would."""
    content = members(bundle)
    lines = [json.loads(line) for line in content[CELLS_MEMBER].splitlines()]
    for record in lines:
        if record["cell_id"] == "c1":
            record["accuracy"], record["finished_at"] = 0.99, "2026-06-01T00:00:00"
    cells = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in lines)
    signature = json.loads(content[f"medq-bundle/{MANIFEST}"]).get("signature")

    def relist(doc: dict[str, Any]) -> None:
        doc["files"]["records/cells.jsonl"] = hashlib.sha256(cells).hexdigest()
        doc["sizes"]["records/cells.jsonl"] = len(cells)

    sealed = resealed({**content, CELLS_MEMBER: cells}, relist)
    if keep_signature:
        doc = json.loads(sealed[f"medq-bundle/{MANIFEST}"])
        doc["signature"] = signature
        sealed[f"medq-bundle/{MANIFEST}"] = (json.dumps(doc, sort_keys=True, indent=1)
                                             + "\n").encode()
    return retar(out, sealed)


def test_a_tampered_then_resealed_bundle_is_refused_once_signatures_are_on(cli, key, tmp_path):
    source = source_store(tmp_path / "src")
    genuine = export_bundle(source, tmp_path / "b.tar.gz", signer=load_signer()).path
    trust = key.with_suffix(".pub")
    for keep in (True, False):
        bad = forged(genuine, tmp_path / f"forged-{keep}.tar.gz", keep)
        refused = cli("import", bad, "--store", tmp_path / "dst", "--trust", trust)
        assert refused.exit_code == 2, refused.output
        assert ("does not verify" if keep else "the bundle is not signed") in refused.output
        assert not (tmp_path / "dst").exists()
    with pytest.raises(BundleError, match="does not verify"):
        import_bundle(tmp_path / "dst", forged(genuine, tmp_path / "f.tar.gz", True))
    unsigned = import_bundle(tmp_path / "open", forged(genuine, tmp_path / "g.tar.gz", False))
    assert unsigned.signer == "not signed", "without --trust a forgery is at least unsigned"
    good = cli("import", genuine, "--store", tmp_path / "dst", "--trust", trust)
    assert good.exit_code == 0 and "3 added" in good.output
    assert ResultsStore(tmp_path / "dst").get("c1").accuracy == pytest.approx(0.82)


def test_a_record_finished_in_the_future_is_refused_on_import(cli, tmp_path):
    source = ResultsStore(tmp_path / "src")
    later = utc_now() + timedelta(days=3)
    row = cell("c1", device="lab-gpu").to_row()
    row.finished_at = later
    source.commit(row)
    assert cli("export", "--store", source.root, "--out", tmp_path / "b.tar.gz").exit_code == 0
    refused = cli("import", tmp_path / "b.tar.gz", "--store", tmp_path / "dst")
    assert refused.exit_code == 2 and "cell c1: finished_at" in refused.output
    assert "is in the future" in refused.output and not (tmp_path / "dst").exists()


# ---------------------------------------------------------------- server


class KeyedServer:
    """A server whose device `lab-gpu` has a token carrying ``key``'s public key."""

    def __init__(self, root: Path, db_url: str | None, public: Path | None) -> None:
        self.app = create_app(ServerSettings.of(db_url, root))
        keys = read_public_keys([public]) if public else [None]
        self.token = create_token(self.app.state.store.engine, "lab-gpu", "", keys[0])[1]
        self.http = TestClient(self.app)
        self.store: ResultsStore = self.app.state.store

    def post(self, records: Any, signature: str | None = None, content: bytes | None = None
             ) -> Any:
        data = content if content is not None else json.dumps(body(records)).encode()
        headers = {**bearer(self.token), "Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        return self.http.post("/api/v1/uploads", content=data, headers=headers)

    def cells(self) -> int:
        with Session(self.store.engine) as session:
            return len(session.scalars(select(CellRecord)).all())


def test_once_a_key_is_registered_only_its_signed_uploads_are_accepted(tmp_path, key,
                                                                       other_key, db_url):
    server = KeyedServer(tmp_path / "srv", db_url, key.with_suffix(".pub"))
    records = batch([cell("c1", device="lab-gpu")])
    content = json.dumps(body(records)).encode()
    unsigned = server.post(records)
    assert unsigned.status_code == 403 and "must be signed" in unsigned.json()["detail"]
    wrong = server.post(records, sign_upload(load_signer(other_key), content), content)
    assert wrong.status_code == 403 and "not registered for device 'lab-gpu'" in \
        wrong.json()["detail"]
    changed = server.post(records, sign_upload(load_signer(), b"another body"), content)
    assert changed.status_code == 403 and "does not verify" in changed.json()["detail"]
    assert server.cells() == 0
    good = server.post(records, sign_upload(load_signer(), content), content)
    assert good.status_code == 200, good.text
    assert origins(server.store) == [("cell", "lab-gpu", True)]


def test_bench_upload_signs_and_the_report_says_so(tmp_path, key, db_url):
    server = KeyedServer(tmp_path / "srv", db_url, key.with_suffix(".pub"))
    local = source_store(tmp_path / "local")
    client = ServerClient(server.http, server.token)
    with pytest.raises(RequestRefused, match="must be signed"):
        upload_store(local, client, quiet=True)
    summary = upload_store(local, client, quiet=True, signer=load_signer())
    assert summary.counts["added"] == 3 and "signed with key" in summary.text()
    with local.staging("c3") as staged:
        (staged / "model.onnx").write_bytes(b"onnx")
        local.commit(cell("c3", device="lab-gpu").to_row(), staged)
    bundled = upload_store(local, client, quiet=True, signer=load_signer(), artifacts="all")
    assert bundled.counts["added"] == 1
    assert [d.text() for d in signatures_by_device(server.store.engine)] == \
        ["lab-gpu: 4 verified (signed by lab-gpu)"]
    html = server.http.get("/report").text
    assert "lab-gpu: 4 verified (signed by lab-gpu)" in html


def test_a_device_without_a_key_may_upload_unsigned(tmp_path, db_url):
    server = KeyedServer(tmp_path / "srv", db_url, None)
    assert server.post(batch([cell("c1", device="lab-gpu")])).status_code == 200
    assert origins(server.store) == [("cell", None, False)]


def test_the_server_refuses_a_finish_in_the_future(tmp_path, db_url):
    server = KeyedServer(tmp_path / "srv", db_url, None)
    now = utc_now()
    ahead = cell("c1", device="lab-gpu").model_copy(update={"finished_at": now + timedelta(
        days=1)})
    refused = server.post(batch([ahead]))
    assert refused.status_code == 422 and "is in the future" in refused.json()["detail"]
    assert server.cells() == 0
    skewed = ahead.model_copy(update={"finished_at": now + MAX_CLOCK_SKEW / 2})
    assert server.post(batch([skewed])).status_code == 200


def test_every_replaced_record_is_kept_in_the_audit_table(tmp_path, db_url):
    server = KeyedServer(tmp_path / "srv", db_url, None)
    failed = cell("c1", device="lab-gpu", status="failed", error="boom")
    better = cell("c1", device="lab-gpu", minutes=5)
    assert server.post(batch([failed])).status_code == 200
    assert server.post(batch([better])).json()["replaced"] == 1
    with Session(server.store.engine) as session:
        (audit,) = session.scalars(select(RecordReplacement)).all()
    assert (audit.cell_id, audit.old_hash, audit.new_hash) == \
        ("c1", failed.content_hash(), better.content_hash())
    assert (audit.old_status, audit.new_status) == ("failed", "ok")
    assert audit.source.startswith("upload ")


def test_local_replacements_are_audited_too(tmp_path):
    from bench.store.measurements import save_measurement

    store = ResultsStore(tmp_path / "s")
    store.commit(cell("c1", status="failed", error="x").to_row())
    store.commit(cell("c1", minutes=2).to_row())
    save_measurement(store.engine, measurement("c1").to_row())
    save_measurement(store.engine, measurement("c1", latency=3.0).to_row())
    with Session(store.engine) as session:
        rows = session.scalars(select(RecordReplacement).order_by(RecordReplacement.id)).all()
    assert [(r.kind, r.source) for r in rows] == [("cell", "bench run"),
                                                  ("measurement", "bench measure")]
    assert all(r.old_hash and r.old_hash != r.new_hash for r in rows)
