"""Validated configuration: grid files, the resolved config of one cell, and cell identity."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bench.errors import ConfigError

FP32_BITS = 32
DEFAULT_RANGE_MOMENTUM = 0.01
"""EMA weight of each training batch in an observed activation range (PyTorch's
MovingAverageMinMaxObserver default); here, for methods' parameters, and used by
bench.quantizers."""

# Options of the SGT objective (bench.objectives) that method parameters declare: here, so that
# methods import without torch.
MaskValues = Literal["uniform", "uniform_per_channel"]
Granularity = Literal["pixel", "feature"]
SaliencyPass = Literal["shared", "eval"]


MAX_SEEDS = 10_000
"""The most seeds a grid may list or count (`seeds: N`, `--seeds N`), checked before the list
is built."""
MAX_GRID_BYTES = 1 << 20
"""The largest grid file read (1 MiB; the paper grid is about 2 KB)."""


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false are not numbers: `epochs: true` is an error, not 1 epoch."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError(f"{value!r} is not a number")
        return value


class SplitConfig(Frozen):
    """Stratified train/val/test split; the same seed always gives the same split."""

    val: float = Field(0.15, ge=0.0, lt=1.0)
    test: float = Field(0.25, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training_images(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"split.val + split.test = {self.val:g} + {self.test:g} = "
                             f"{self.val + self.test:g} leaves no image to train on; they must "
                             "add up to less than 1")
        return self


class DataConfig(Frozen):
    """A data set and how it is prepared. `options` are passed to the data set's loader."""

    name: str = "synthetic"
    root: str | None = None
    image_size: int = Field(32, ge=8, le=1024)
    split: SplitConfig = SplitConfig()
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(Frozen):
    """Optimisation settings for one training phase."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    schedule: Literal["constant", "cosine", "step"] = "cosine"


class BackboneConfig(Frozen):
    name: str = "smallcnn"
    pretrained: bool = False


class MethodEntry(Frozen):
    """One method of a grid, with the bit-widths it runs at and parameter overrides."""

    name: str
    bits: list[tuple[int, int]] = Field(default_factory=lambda: [(8, 8)], min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("bits")
    @classmethod
    def _check_bits(cls, bits: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for w, a in bits:
            if not (2 <= w <= 8 and 2 <= a <= 8):
                raise ValueError(f"bit-widths must be between 2 and 8, got W{w}A{a}")
        return bits


class GridConfig(Frozen):
    """A grid: data sets x backbones x methods x bit-widths x seeds."""

    name: str
    description: str = ""
    datasets: list[DataConfig] = Field(default_factory=lambda: [DataConfig()], min_length=1)
    backbones: list[BackboneConfig] = Field(default_factory=lambda: [BackboneConfig()],
                                            min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0, 1], min_length=1)
    train: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(epochs=2, lr=1e-4)
    calibration_batches: int = Field(8, ge=1)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_from_count(cls, seeds: Any) -> Any:
        """`seeds: N` is 0..N-1; bounded by MAX_SEEDS before the list is built."""
        if isinstance(seeds, bool) or (isinstance(seeds, list)
                                       and any(isinstance(s, bool) for s in seeds)):
            raise ValueError("seeds are a count or a list of integers, not true/false")
        if isinstance(seeds, int):
            check_seed_count(seeds)
            return list(range(seeds))
        if isinstance(seeds, list):
            check_seed_count(len(seeds))
        return seeds

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbone_names(cls, backbones: Any) -> Any:
        return [{"name": b} if isinstance(b, str) else b for b in backbones]


def check_seed_count(n: int) -> None:
    if n > MAX_SEEDS:
        raise ValueError(f"{n:,} seeds asked for; at most {MAX_SEEDS:,}")


class CellConfig(Frozen):
    """Everything that determines one cell's result; its hash is the cell's identity."""

    dataset: DataConfig
    backbone: BackboneConfig
    method: str
    params: dict[str, Any]
    w_bits: int
    a_bits: int
    seed: int
    train: TrainConfig
    calibration_batches: int
    parent_id: str | None
    split_manifest: str
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def cell_id(self) -> str:
        return cell_hash(self.model_dump(mode="json"))


def cell_hash(payload: dict[str, Any]) -> str:
    """Short content hash of a JSON-able payload (canonical key order)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def builtin_grids() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("bench.grids").iterdir()
                  if p.name.endswith(".yaml"))


def load_grid(name_or_path: str) -> GridConfig:
    """Load a built-in grid by name or a user's YAML file; errors name line and column."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        if not path.is_file():
            raise ConfigError(f"grid file not found: {path}")
        if (size := path.stat().st_size) > MAX_GRID_BYTES:
            raise ConfigError(f"{path}: a grid file of {size:,} bytes; at most "
                              f"{MAX_GRID_BYTES:,} are read (is it a grid?)")
        text, source = read_text_file(path, "grid"), str(path)
    elif name_or_path in builtin_grids():
        text = resources.files("bench.grids").joinpath(f"{name_or_path}.yaml").read_text()
        source = f"built-in grid '{name_or_path}'"
    else:
        raise ConfigError(f"unknown grid '{name_or_path}'; built-in grids: "
                          f"{', '.join(builtin_grids())}, or pass a YAML file path")
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to be a grid") from None
    except DuplicateKeyError as err:
        raise ConfigError(f"{source}: {err}") from err
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError(f"{source}: invalid YAML at {where}: {err.problem}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not a YAML text file ({' '.join(str(err).split())})"
                          ) from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a grid must be a YAML mapping")
    raw.setdefault("name", path.stem if path.suffix else name_or_path)
    try:
        return GridConfig.model_validate(raw)
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to be a grid") from None
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from err


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ConfigError naming the file if it is UTF-16 or binary."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{path}: the {what} file is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: the {what} file is not UTF-8 text (byte "
                          f"0x{data[err.start]:02x} at offset {err.start}); is it a binary "
                          "file?") from err


class DuplicateKeyError(yaml.YAMLError):
    """A key appears twice in one YAML mapping; the message gives both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in a mapping is an error instead of the
    last one silently winning (merge keys, ``<<``, may still override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue
            if first is not None:
                raise DuplicateKeyError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at "
                    f"line {first.start_mark.line + 1}); a key may appear once in a mapping")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def format_validation_error(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}"
                     for e in err.errors())
