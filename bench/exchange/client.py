"""A results server's HTTP API as seen by a client: retries with back-off, errors with reasons.

Connection errors, timeouts, 429 and 502/503/504 are retried with exponential back-off and full
jitter, a bounded number of times; any other error status fails at once with the server's
message. The `httpx.Client` is injectable, so tests can hand in FastAPI's `TestClient` or an
`httpx.MockTransport`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.errors import UsageError
from bench.exchange.signing import SIGNATURE_HEADER

RETRY_STATUS = frozenset({429, 502, 503, 504})
RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
USAGE_STATUS = {401: "the token is missing, wrong or revoked",
                403: "the token may not do this",
                413: "the request is larger than the server accepts",
                422: "the server refused the records as invalid"}
API = "/api/v1"
PAGE = 1000
CHUNK = 1 << 20
MAX_RECORDS = 1_000_000
"""The most records one listing takes from a server, whatever total it announces."""


class ServerError(RuntimeError):
    """The server failed (5xx, or retries ran out): the CLI exits with 1."""


class BadResponse(UsageError):
    """The server answered with something the API never sends (invalid JSON, pages that do not
    advance, a file larger than its record says): the CLI exits with 2, nothing is written."""


class RequestRefused(UsageError):
    """The server refused the request (4xx other than 429): the CLI exits with 2."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """Up to ``attempts`` tries; before try n+1 sleep a random time up to
    min(max_delay, base_delay * 2**n) (full jitter), or the server's Retry-After if longer."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2 ** attempt)
        wait = self.rng.uniform(0, ceiling)
        return min(self.max_delay, max(wait, retry_after or 0.0))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def server_message(response: httpx.Response) -> str:
    """The server's reason: FastAPI's `detail` (a string or validation errors), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(_validation_text(d) for d in detail[:5]) + (
            f" (and {len(detail) - 5} more)" if len(detail) > 5 else "")
    return str(detail)[:500]


def _validation_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    where = ".".join(str(p) for p in error.get("loc", ()))
    return f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", error))


class ServerClient:
    """The API of the server at ``client``'s base URL, with ``token`` if given."""

    def __init__(self, client: httpx.Client, token: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retry = retry or RetryPolicy()

    @classmethod
    def connect(cls, url: str, token: str | None = None, retry: RetryPolicy | None = None,
                timeout: float = 60.0) -> ServerClient:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"server URL must start with http:// or https://: {url!r}")
        return cls(httpx.Client(base_url=url.rstrip("/"), timeout=timeout), token, retry)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send with retries; the response of the first try that is not retried."""
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        return self._retried(method, path, lambda: self.client.request(method, path, **kwargs))

    def download(self, path: str, target: Path, max_bytes: int) -> str:
        """GET ``path`` into the file ``target``, written in chunks as it arrives (retried like
        `request`, each try from the start); the SHA-256 of what was written. BadResponse,
        with ``target`` removed, as soon as the body exceeds ``max_bytes`` or its own
        Content-Length, so a hostile server cannot fill the disk."""
        digest = hashlib.sha256()

        def fetch() -> httpx.Response:
            nonlocal digest
            with self.client.stream("GET", path, headers=self.headers) as response:
                if not response.is_success:
                    response.read()
                    return response
                limit = min(max_bytes, _content_length(response, max_bytes))
                digest, written = hashlib.sha256(), 0
                with target.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        written += len(chunk)
                        if written > limit:
                            break
                        digest.update(chunk)
                        handle.write(chunk)
                if written > limit:
                    target.unlink()
                    raise BadResponse(f"GET {path}: the body is larger than {limit} bytes "
                                      "(its recorded size or Content-Length); refused")
                return response

        self._retried("GET", path, fetch)
        return digest.hexdigest()

    def _retried(self, method: str, path: str, send: Callable[[], httpx.Response]
                 ) -> httpx.Response:
        """Call ``send`` until a try is not to be retried; that try's response, checked."""
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = send()
            except RETRY_ERRORS as err:
                if last:
                    raise ServerError(f"{method} {path}: {type(err).__name__}: {err} "
                                      f"(gave up after {self.retry.attempts} tries)") from err
                self.retry.sleep(self.retry.delay(attempt))
                continue
            if response.status_code in RETRY_STATUS and not last:
                self.retry.sleep(self.retry.delay(attempt, _retry_after(response)))
                continue
            return _checked(method, path, response, self.retry.attempts)
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of an API call; BadResponse if it is not JSON."""
        response = self.request(method, f"{API}{path}", **kwargs)
        try:
            return response.json()
        except (ValueError, RecursionError) as err:
            raise BadResponse(f"{method} {API}{path}: the answer is not valid JSON") from err

    def whoami(self) -> str:
        return str(self.json("GET", "/whoami")["device"])

    def known(self, hashes: list[str], chunk: int = 5000) -> set[str]:
        """Which of ``hashes`` the server holds."""
        found: set[str] = set()
        for start in range(0, len(hashes), chunk):
            body = {"hashes": hashes[start:start + chunk]}
            found.update(self.json("POST", "/records/known", json=body)["known"])
        return found

    def missing_artifacts(self, cell_ids: list[str], chunk: int = 5000
                          ) -> dict[str, list[str]]:
        """For each of ``cell_ids`` the server holds, the listed files it lacks."""
        missing: dict[str, list[str]] = {}
        for start in range(0, len(cell_ids), chunk):
            body = {"cell_ids": cell_ids[start:start + chunk]}
            missing.update(self.json("POST", "/artifacts/missing", json=body)["missing"])
        return missing

    def upload(self, content: bytes, content_type: str, signature: str | None = None
               ) -> dict[str, Any]:
        """POST an upload; ``signature``: its `X-Medq-Signature` header (see signing)."""
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        response = self.request("POST", f"{API}/uploads", content=content, headers=headers)
        return dict(response.json())

    def devices(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/devices")["items"])

    def records(self, kind: str, params: dict[str, Any], max_records: int = MAX_RECORDS
                ) -> Iterator[dict[str, Any]]:
        """Every record of ``kind`` matching ``params``, page by page. BadResponse unless each
        page holds at most PAGE items, each `next_offset` lies past the last, and all the
        items stay within the first page's `total` (and ``max_records``)."""
        offset, total, taken = 0, None, 0
        while True:
            page = self.json("GET", "/records", params={**params, "kind": kind,
                                                        "limit": PAGE, "offset": offset})
            items, announced, after = _page_parts(page)
            total = announced if total is None else total
            taken += len(items)
            where = f"GET {API}/records (offset {offset})"
            if len(items) > PAGE or taken > min(total, max_records):
                raise BadResponse(f"{where}: more records than the server's total of {total} "
                                  f"(or the limit of {max_records})")
            yield from items
            if after is None:
                return
            if after <= offset or after > total:
                raise BadResponse(f"{where}: next_offset {after} does not advance within the "
                                  f"total of {total}")
            offset = after


def _content_length(response: httpx.Response, default: int) -> int:
    """The body's declared length (``default`` if undeclared, or if it is encoded and so
    declares the encoded length)."""
    if response.headers.get("content-encoding", "identity") != "identity":
        return default
    try:
        return max(0, int(response.headers.get("content-length", default)))
    except ValueError:
        return default


def _page_parts(page: Any) -> tuple[list[Any], int, int | None]:
    """A records page's items, total and next offset, checked to have the API's types."""
    items = page.get("items") if isinstance(page, dict) else None
    total = page.get("total") if isinstance(page, dict) else None
    after = page.get("next_offset") if isinstance(page, dict) else None
    if not isinstance(items, list) or not _whole(total) or not (after is None or _whole(after)):
        raise BadResponse(f"GET {API}/records: the answer is not a page of records "
                          "(items, total, next_offset)")
    return items, total, after


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked(method: str, path: str, response: httpx.Response, attempts: int
             ) -> httpx.Response:
    status = response.status_code
    if status < 400:
        return response
    reason = server_message(response)
    if status in RETRY_STATUS:
        raise ServerError(f"{method} {path}: HTTP {status} {reason} "
                          f"(gave up after {attempts} tries)")
    if status < 500:
        what = USAGE_STATUS.get(status, "the server refused the request")
        raise RequestRefused(f"{method} {path}: HTTP {status}: {what}: {reason}", status)
    raise ServerError(f"{method} {path}: HTTP {status}: {reason}")
