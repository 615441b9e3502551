"""The one Registry type: duplicates refused, one unknown-name message, shell wildcards, and
plugins from an installed package's entry points."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.data import DATASETS
from bench.errors import UsageError
from bench.measure.profiles import PROFILES, ProfileError
from bench.models import BACKBONES
from bench.registry import Registry, RegistryError, UnknownNameError, matching, pattern_regex
from bench.runner.executors import EXECUTORS
from bench.runner.plan import Overrides, apply_overrides
from bench.runner.stages import STAGES
from bench.saliency.methods import SALIENCY_METHODS
from bench.store import ResultsStore
from bench.store.query import RecordFilter
from bench.store.records import CellData
from bench.store.schema import CellRecord
from methods import METHODS
from tests.conftest import tiny_grid_dict

ROOT = Path(__file__).resolve().parents[1]
EVERY_KIND = {"method": METHODS, "data set": DATASETS, "backbone": BACKBONES, "stage": STAGES,
              "executor": EXECUTORS, "saliency method": SALIENCY_METHODS,
              "hardware profile": PROFILES}


def test_a_name_registered_twice_is_refused_naming_both():
    registry: Registry[object] = Registry("widget", "widgets")
    registry.register("a", 1)
    registry.register("a", 1)               # the same item again: a no-op
    with pytest.raises(RegistryError, match="widget 'a' is registered twice"):
        registry.register("a", 2)
    assert issubclass(RegistryError, UsageError)
    assert registry.get("a") == 1


@pytest.mark.parametrize("kind", sorted(EVERY_KIND))
def test_every_kind_has_the_same_unknown_name_message(kind):
    registry = EVERY_KIND[kind]
    assert registry.kind == kind and registry.group.startswith("medq_bench.")
    with pytest.raises(UnknownNameError) as err:
        registry.get("no-such-thing")
    known = ", ".join(registry.names())
    assert str(err.value) == f"unknown {kind} 'no-such-thing'; known: {known}"
    assert registry.get("no-such-thing", None) is None
    assert len(registry) == len(registry.names()) > 0


def test_profiles_keep_their_own_error_type():
    with pytest.raises(ProfileError, match="unknown hardware profile 'nope'"):
        PROFILES.get("nope")


def test_names_take_shell_wildcards():
    assert BACKBONES.names("mobilenet*") == ["mobilenet_v2", "mobilenet_v3_small"]
    assert METHODS.names(["pact*", "fp32"]) == ["fp32", "pact", "pact_sgt"]
    assert METHODS.select(["pact*"]) == ["pact", "pact_sgt"]
    with pytest.raises(UnknownNameError, match=r"no method matches 'vgg\*'"):
        METHODS.select(["vgg*"])
    with pytest.raises(UnknownNameError, match="unknown method 'vgg'"):
        METHODS.select(["vgg"])


@pytest.mark.parametrize("pattern", ["mobilenet*", "a?c", "[ab]x", "[!a]x", "x.y", "pact+sgt",
                                     "a[b", "*_v[23]*", "w(8)"])
def test_the_sql_regex_of_a_pattern_matches_what_fnmatch_matches(pattern):
    names = ["mobilenet_v2", "abc", "ax", "bx", "cx", "x.y", "xzy", "pact+sgt", "pactsgt",
             "a[b", "mobilenet_v3_small", "resnet18", "w(8)", "w8"]
    expected = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    assert [n for n in names if re.search(pattern_regex(pattern), n)] == expected
    assert matching([pattern], names) == expected


def test_grid_filters_take_wildcards():
    from bench.config import load_grid

    grid = load_grid("paper")
    chosen = apply_overrides(grid, Overrides(backbones=("mobilenet*",), methods=("pact*",)))
    assert [b.name for b in chosen.backbones] == [
        b.name for b in grid.backbones if b.name.startswith("mobilenet")]
    assert {m.name for m in chosen.methods} == {"pact", "pact_sgt"}
    with pytest.raises(UsageError, match="is not in grid"):
        apply_overrides(grid, Overrides(backbones=("efficientnet*",)))


def test_record_filters_take_wildcards_in_sql_and_in_python(db_url):
    """The SQL side is a regular expression on both backends (SQLite's REGEXP from SQLAlchemy,
    PostgreSQL's ~): it must select what fnmatch selects, case-sensitively."""
    from datetime import datetime

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(db_url or "sqlite://")
    CellRecord.metadata.create_all(engine)
    now = datetime(2026, 1, 1)
    cells = [("mobilenet_v2", "pact"), ("resnet18", "pact_sgt"), ("mobilenet_v3_small", "qat"),
             ("Mobilenet_v2", "pact"), ("mobilenet_v2", "w(8)+x"), ("mobilenet_v2", "w88+x")]
    with Session(engine) as session:
        session.add_all(CellRecord(
            cell_id=f"c{i}", device="here", grid="g", dataset="synthetic", backbone=backbone,
            method=method, w_bits=4, a_bits=4, seed=0, status="ok", split_manifest="m",
            metrics={}, config={}, provenance={}, started_at=now, finished_at=now)
            for i, (backbone, method) in enumerate(cells))
        session.commit()
        chosen = RecordFilter(backbones=["mobilenet*"], methods=["pact*", "qat", "w(?)+[!y]"])
        rows = list(session.scalars(chosen.cells()))
        in_python = [r.cell_id for r in session.scalars(RecordFilter().cells())
                     if chosen.matches(CellData.of(r))]
    assert [r.cell_id for r in rows] == in_python == ["c0", "c2", "c4"]   # case-sensitive


# ------------------------------------------------------------------ a plugin package

PLUGIN = '''
"""A method and a backbone from a package that is not medq-bench."""
from methods.base import Method, register
from bench.models import register_backbone


@register
class PluginFP32(Method):
    name = "plugin_fp32"
    description = "FP32 cross-entropy, registered by a plugin"


def _build(num_classes):
    from bench.smallcnn import SmallCNN

    return SmallCNN(num_classes)


register_backbone("plugin_cnn", _build, None, "the small CNN, registered by a plugin")
'''


def install_plugin(site: Path, module: str, source: str, groups: tuple[str, ...]) -> None:
    """Put a package and its dist-info (what pip install writes) on ``site``."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[medq_bench.{group}]\n{module} = {module}\n\n" for group in groups))


def bench(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_a_method_and_a_backbone_from_an_installed_plugin_run(tmp_path):
    site = tmp_path / "site"
    install_plugin(site, "medq_demo_plugin", PLUGIN, ("methods", "backbones"))
    listed = bench(site, "methods", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "plugin_fp32" in listed.stdout and "registered by a plugin" in listed.stdout
    assert "plugin_cnn" in bench(site, "backbones", cwd=tmp_path).stdout

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_dict(
        backbones=["plugin_cnn"], methods=[{"name": "plugin_fp32"}], seeds=1)))
    run = bench(site, "run", "--grid", str(grid), "--store", str(tmp_path / "store"), "--quiet",
                cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "1 ran, 0 cached, 0 failed" in run.stdout
    records = ResultsStore(tmp_path / "store").records()
    assert [(r.backbone, r.method, r.status) for r in records] == [
        ("plugin_cnn", "plugin_fp32", "ok")]


def test_a_plugin_that_takes_a_builtin_name_or_fails_to_import_is_named(tmp_path):
    clash = tmp_path / "clash"
    install_plugin(clash, "medq_clash", PLUGIN.replace('"plugin_fp32"', '"fp32"'), ("methods",))
    out = bench(clash, "methods", cwd=tmp_path)
    assert out.returncode == 2
    assert "method 'fp32' is registered twice" in out.stderr

    broken = tmp_path / "broken"
    install_plugin(broken, "medq_broken", "import no_such_module\n", ("methods",))
    out = bench(broken, "methods", cwd=tmp_path)
    assert out.returncode == 2
    assert "method plugin 'medq_broken'" in out.stderr and "no_such_module" in out.stderr
