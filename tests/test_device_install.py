"""The light device install (`pip install 'medq-bench[device]'`): no torch, and every verb
either works or names the install it needs. Builds a fresh venv once (about a minute)."""

from __future__ import annotations

import json
import tomllib

import pytest

from bench.extras import import_name
from tests.device_venv import ROOT, DeviceVenv, device_venv_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def full_only_distributions() -> set[str]:
    """What `full` adds to the base, `device` and `server` (torch, pandas, docker...)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    lighter = {*project["dependencies"], *extras["device"], *extras["server"]}
    return {r for r in extras["full"] if not r.startswith("medq-bench")} - lighter


def test_device_venv_has_no_full_only_package(device_venv: DeviceVenv):
    listed = device_venv.run("python", "-m", "pip", "list", "--format", "json")
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "medq-bench" in installed and "onnxruntime" in installed
    assert not installed & {d.lower() for d in full_only_distributions()}
    proc = device_venv.run("python", "-c", "import torch")
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


def test_help_and_profiles_work(device_venv: DeviceVenv):
    help_ = device_venv.bench("--help")
    assert help_.returncode == 0 and "measure" in help_.stdout, help_.stderr
    profiles = device_venv.bench("profiles")
    assert profiles.returncode == 0, profiles.stderr
    assert "raspberry-pi-4" in profiles.stdout and "host" in profiles.stdout


def test_full_only_verbs_name_the_full_install(device_venv: DeviceVenv, tmp_path):
    proc = device_venv.bench("run", "--store", tmp_path / "s")
    assert proc.returncode == 2, proc.stderr
    assert "bench run needs the full install" in proc.stderr
    assert "pip install 'medq-bench[full]' (missing: " in proc.stderr
    missing = proc.stderr.rsplit("(missing: ", 1)[1].split(")")[0]
    assert missing in {import_name(d) for d in full_only_distributions()}
    assert not (tmp_path / "s").exists()


def test_methods_are_listed_without_the_training_stack(device_venv: DeviceVenv):
    """The methods' declarations import no torch, so a device install can list them."""
    proc = device_venv.bench("methods")
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in ("fp32", "qat", "pact", "lsq", "pact_sgt"))


def test_measure_runs_on_an_empty_store(device_venv: DeviceVenv, tmp_path):
    store = tmp_path / "store"
    made = device_venv.run("python", "-c",
                           f"from bench.store import ResultsStore; ResultsStore({str(store)!r})")
    assert made.returncode == 0, made.stderr
    proc = device_venv.bench("measure", "--profile", "host", "--store", store, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "0 measured" in proc.stdout and "profile host" in proc.stdout
