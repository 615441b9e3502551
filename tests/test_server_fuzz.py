"""Schemathesis fuzzes every operation of the server's OpenAPI schema over loopback (a real
`bench serve`), on SQLite and on PostgreSQL, for a bounded, derandomised number of cases: no
request may make the server fail (5xx). Uploads carry the token's device, so generated records
are written and then read back by the other operations, the report included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from bench.server.settings import ServerSettings
from bench.server.tokens import create_token
from bench.store import ResultsStore
from tests.server_helpers import LiveServer, bearer

DEVICE = "fuzz-dev"
MAX_EXAMPLES = 50
"""Cases per operation, valid and invalid ones (schemathesis' positive and negative modes)."""


@pytest.fixture
def fuzz_server(tmp_path, db_url) -> Iterator[tuple[LiveServer, str]]:
    chosen = ServerSettings.of(db_url, tmp_path / "srv")
    _, token = create_token(ResultsStore(chosen.data_dir, chosen.db_url).engine, DEVICE)
    server = LiveServer(tmp_path / "srv", db_url).start()
    yield server, token
    server.kill()


def _own_device(body: Any) -> None:
    """Make generated records the token's device's, so that uploads get written."""
    if not isinstance(body, dict):
        return
    for key in ("cells", "measurements"):
        records = body.get(key)
        if isinstance(records, list):
            for record in records:
                if isinstance(record, dict) and "device" in record:
                    record["device"] = DEVICE


def test_no_request_makes_the_server_fail(fuzz_server):
    server, token = fuzz_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /api/v1/uploads", "GET /api/v1/records",
                                               "GET /report", "GET /healthz"}
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            _own_device(case.body)
            case.call_and_validate(headers=bearer(token), checks=[not_a_server_error],
                                   timeout=60)

        call()
