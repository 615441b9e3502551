"""`bench.cli` is a package of verb modules; exit code 2 for bad usage is mapped once, by the
app's group, for every verb, sub-app verb and group callback."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import UsageError
from bench.store import StoreBusyError
from tests.device_venv import ROOT

EXTRA_MODULES = {"": {"typer"}, "device": {"psutil"}, "server": {"uvicorn"},
                 "full": {"torch"}}


@pytest.fixture
def extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which extra installs which module, independent of the installed metadata."""
    monkeypatch.setattr("bench.extras.modules_by_extra", lambda: EXTRA_MODULES)


def raiser(error: BaseException):
    def raise_(*args: object, **kwargs: object) -> None:
        raise error
    return raise_


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def all_verbs(typer_app: typer.Typer) -> list:
    """The functions of every verb and group callback of ``typer_app``, sub-apps included."""
    verbs = [c.callback for c in typer_app.registered_commands]
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        verbs += [sub.registered_callback.callback] if sub.registered_callback else []
        verbs += all_verbs(sub)
    return verbs


def test_no_verb_is_wrapped_for_exit_codes():
    verbs = all_verbs(app)
    assert len(verbs) == 19  # 12 verbs, keys (2), serve and its token verbs (1 + 3), device (1)
    assert all(inspect.unwrap(v) is v for v in verbs)
    assert {v.__module__ for v in verbs} == {f"bench.cli.{m}" for m in (
        "run", "results", "measure", "listings", "exchange", "keys", "serve")}


def test_a_usage_error_exits_2_with_its_message(tmp_path: Path):
    result = invoke("results", "--store", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: no results store at {tmp_path / 'none'}")


def test_a_missing_extra_names_the_sub_app_verb(monkeypatch, extras, tmp_path: Path):
    monkeypatch.setattr("bench.exchange.pull.pull",
                        raiser(ModuleNotFoundError("No module named 'psutil'", name="psutil")))
    result = invoke("device", "pull", "--from", "x", "--store", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert "error: bench device pull needs the device install: pip install " \
        "'medq-bench[device]' (missing: psutil)" in result.output.replace("\n", "")


def test_a_missing_extra_names_a_nested_sub_app_verb(monkeypatch, extras, tmp_path: Path):
    monkeypatch.setattr("bench.cli.serve.server_engine",
                        raiser(ModuleNotFoundError("No module named 'uvicorn.x'",
                                                   name="uvicorn.x")))
    result = invoke("serve", "token", "create", "--device", "d", "--data", str(tmp_path))
    assert result.exit_code == 2
    assert "error: bench serve token create needs the server install: pip install " \
        "'medq-bench[server]' (missing: uvicorn)" in result.output.replace("\n", "")


def test_an_error_in_a_group_callback_names_the_group(monkeypatch, extras):
    monkeypatch.setattr("bench.server.settings.ServerSettings.of",
                        raiser(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")))
    result = invoke("serve")
    assert result.exit_code == 2
    assert "error: bench serve needs the server install" in result.output.replace("\n", "")
    monkeypatch.setattr("bench.server.settings.ServerSettings.of", raiser(UsageError("bad db")))
    result = invoke("serve")
    assert (result.exit_code, result.output) == (2, "error: bad db\n")


def test_other_errors_propagate(monkeypatch, extras, tmp_path: Path):
    for error in (ModuleNotFoundError("No module named 'nowhere'", name="nowhere"),
                  RuntimeError("a bug")):
        monkeypatch.setattr("bench.exchange.pull.pull", raiser(error))
        result = invoke("device", "pull", "--from", "x", "--store", str(tmp_path / "s"))
        assert result.exit_code == 1 and result.exception is error


def test_store_busy_is_a_usage_error_and_exits_2(monkeypatch, tmp_path: Path):
    assert issubclass(StoreBusyError, UsageError)
    busy = StoreBusyError(f"another bench run is using the store {tmp_path}")
    monkeypatch.setattr("bench.exchange.pull.pull", raiser(busy))
    result = invoke("device", "pull", "--from", "x", "--store", str(tmp_path))
    assert (result.exit_code, result.output) == (2, f"{'error: ' + str(busy)}\n")


def test_python_m_bench_cli_runs_the_app():
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "keys"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "create" in proc.stdout and "show" in proc.stdout, \
        proc.stderr
