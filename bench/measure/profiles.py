"""Named hardware profiles: the resource limits and timing protocol of one measurement setup.

Profiles are TOML files. Shipped ones live in the ``hardware_profiles`` package, plugins add
theirs with `register_profile` (entry points `medq_bench.hardware_profiles`), and any other
file can be given by path.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.errors import ConfigError
from bench.measure.protocol import MAX_SAMPLES
from bench.registry import Registry, UnknownNameError

PROFILE_PACKAGE = "hardware_profiles"
SUFFIX = ".toml"


class ProfileError(ConfigError):
    """A hardware profile cannot be found or is invalid; the message names file and field."""


class UnknownProfileError(UnknownNameError, ProfileError):
    """No hardware profile is registered under the name."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threads(_Strict):
    """Runtime thread pools; 0 leaves the size to the runtime (one per physical core)."""

    intra_op: int = Field(1, ge=0)
    inter_op: int = Field(1, ge=0)


class OpenVINOSettings(_Strict):
    """OpenVINO's settings (``runtime = "openvino"``), recorded with each measurement.

    ``inference_precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` for the layers that are
    not quantised. It defaults to ``f32``, stated explicitly: OpenVINO's own default on CPUs with
    AVX-512 FP16/BF16 or AMX is a lower precision, where the deployed accuracy was computed in
    f32. Quantised (QDQ) layers run in int8 either way (its low-precision transformations)."""

    inference_precision: Literal["f32", "f16", "bf16"] = "f32"
    device: Literal["CPU"] = "CPU"


class Profile(_Strict):
    """One hardware profile. ``name`` defaults to the file name without ``.toml``."""

    name: str = ""
    description: str
    runtime: Literal["onnxruntime", "openvino", "torch"] = "onnxruntime"
    openvino: OpenVINOSettings = OpenVINOSettings()
    execution_provider: str = "CPUExecutionProvider"
    threads: Threads = Threads()
    cpuset: list[int] | None = None
    cpu_quota: float | None = Field(None, gt=0)
    memory_limit_mb: int | None = Field(None, gt=0)
    batch_sizes: list[int] = Field([1], min_length=1)
    warmup: int = Field(10, ge=0)
    min_repetitions: int = Field(100, ge=1, le=MAX_SAMPLES)
    min_duration_s: float = Field(1.0, ge=0)
    percentiles: list[float] = Field([50.0, 90.0, 99.0], min_length=1)
    isolation: Literal["process", "docker"] = "process"
    kernels: Literal["exact", "fast"] = "exact"
    """ONNX Runtime integer kernels (``bench.deploy.runtime.KERNELS``), resolved on the
    measuring machine: ``exact`` gives the deployed accuracy's results on every CPU; ``fast``
    is ONNX Runtime's default, whose U8S8 kernels saturate on x86 without VNNI."""

    @model_validator(mode="after")
    def _check_lists(self) -> Profile:
        if self.cpuset is not None and (not self.cpuset or min(self.cpuset) < 0):
            raise ValueError("cpuset must list at least one CPU id, all >= 0")
        if min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes must all be >= 1")
        if not all(0 < p < 100 for p in self.percentiles):
            raise ValueError("percentiles must lie strictly between 0 and 100")
        if self.runtime != "openvino" and "openvino" in self.model_fields_set:
            raise ValueError("an [openvino] table needs runtime = \"openvino\"")
        return self

    def limits_text(self) -> str:
        """The resource limits in words: pinned CPUs, CPU quota, memory."""
        parts = []
        if self.cpuset is not None:
            parts.append(f"cpus {','.join(str(c) for c in self.cpuset)}")
        if self.cpu_quota is not None:
            parts.append(f"quota {self.cpu_quota:g} CPU")
        if self.memory_limit_mb is not None:
            parts.append(f"memory {self.memory_limit_mb} MB")
        return ", ".join(parts) or "none"


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(loc) for loc in e["loc"]) or "(profile)"
        parts.append(f"{field}: {e['msg']}")
    return "; ".join(parts)


def parse_profile(text: str, source: str, name: str) -> Profile:
    """Validate TOML ``text``; ``source`` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{source}: not valid TOML: {err}") from err
    data.setdefault("name", name)
    try:
        return Profile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(f"{source}: {_format_errors(err)}") from err


def _shipped_dir() -> Path:
    """The folder of the shipped profiles (also when an editable install maps the package as
    a namespace package, which ``importlib.resources`` cannot list)."""
    package = importlib.import_module(PROFILE_PACKAGE)
    return next(Path(p) for p in package.__path__ if Path(p).is_dir())


def register_profile(path: Path, name: str | None = None) -> Path:
    """Make the profile file ``path`` available by name (default: its file name without
    ``.toml``); it is read and validated when loaded."""
    return PROFILES.register(name or path.name[: -len(SUFFIX)], path)


def _register_shipped() -> list[str]:
    for path in sorted(_shipped_dir().iterdir()):
        if path.name.endswith(SUFFIX):
            register_profile(path)
    return []


PROFILES: Registry[Path] = Registry("hardware profile", "hardware_profiles", _register_shipped,
                                    unknown=UnknownProfileError)
"""Profile files by name: the shipped ones and plugins'."""


def list_profiles() -> list[str]:
    """Names of the registered profiles (shipped and plugins'), sorted."""
    return PROFILES.names()


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a registered profile by name (``edge-1core-1g``) or any profile file by path."""
    text = str(name_or_path)
    if text.endswith(SUFFIX) or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise ProfileError(f"{path}: profile file not found")
        return parse_profile(path.read_text(), str(path), path.stem)
    path = PROFILES.get(text)
    shipped = path.parent == _shipped_dir()
    source = f"{PROFILE_PACKAGE}/{path.name}" if shipped else str(path)
    return parse_profile(path.read_text(), source, text)
