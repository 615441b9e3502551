"""The light install's code paths import nothing that only `medq-bench[full]` installs, and a
verb that needs more says which extra. Fast: full-only modules are made unimportable in a
subprocess (tests/test_device_install.py checks a real device install)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
import typer

from bench.cli import exits_on_usage_error
from bench.extras import EXTRAS, modules_by_extra
from tests.device_venv import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LIGHT_MODULES = ("bench", "bench.cli", "bench.measure", "bench.measure.runner",
                 "bench.measure.isolation", "bench.measure.fingerprint", "bench.provenance",
                 "bench.exchange.bundle", "bench.exchange.pull", "bench.exchange.upload",
                 "bench.exchange.client", "bench.compare")


def pyproject_modules() -> dict[str, set[str]]:
    """modules_by_extra() of pyproject.toml itself (not of an install that may be stale)."""
    extras = PYPROJECT["optional-dependencies"]
    return modules_by_extra([*PYPROJECT["dependencies"], *(
        f'{r}; extra == "{extra}"' for extra, rs in extras.items() for r in rs)])


def full_only_modules() -> set[str]:
    modules = pyproject_modules()
    return modules["full"] - modules["device"] - modules["server"] - modules[""]


def run_without_full(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with every full-only module unimportable (``sys.modules[name] = None``)."""
    blocked = ",".join(sorted(full_only_modules()))
    prelude = f"import sys\nfor name in {blocked!r}.split(','):\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_full_only_set_is_the_heavy_stack():
    heavy = full_only_modules()
    assert {"torch", "torchvision", "brevitas", "captum", "pandas", "scipy", "docker"} <= heavy
    assert not heavy & {"onnxruntime", "psutil", "httpx", "numpy"}
    assert set(PYPROJECT["optional-dependencies"]) <= set(EXTRAS)


def test_light_modules_import_without_full_only_packages():
    imports = "\n".join(f"import {m}" for m in LIGHT_MODULES)
    proc = run_without_full(imports)
    assert proc.returncode == 0, proc.stderr


def test_help_and_profiles_work_without_full_only_packages():
    code = "from bench.cli import app\napp(sys.argv[1:])"
    help_ = run_without_full(code, "--help")
    assert help_.returncode == 0 and "profiles" in help_.stdout, help_.stderr
    profiles = run_without_full(code, "profiles")
    assert profiles.returncode == 0 and "raspberry-pi-4" in profiles.stdout, profiles.stderr


def test_full_only_verb_exits_2_naming_the_full_install(tmp_path):
    proc = run_without_full("from bench.cli import app\napp(sys.argv[1:])", "run", "--store",
                            str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    assert "error: bench run needs the full install: pip install 'medq-bench[full]' (missing: " \
        in proc.stderr
    assert proc.stderr.rsplit("(missing: ", 1)[1].split(")")[0] in full_only_modules()


def test_wrapper_names_the_smallest_extra_and_reraises_other_missing_modules(capsys):
    @exits_on_usage_error
    def verb(missing: str) -> None:
        raise ModuleNotFoundError(f"No module named {missing!r}", name=f"{missing}.sub")

    with pytest.raises(typer.Exit) as exit_:
        verb("psutil")
    assert exit_.value.exit_code == 2
    assert "bench verb needs the device install: pip install 'medq-bench[device]' " \
        "(missing: psutil)" in capsys.readouterr().err.replace("\n", "")
    with pytest.raises(ModuleNotFoundError):
        verb("no_such_module")
