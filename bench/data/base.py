"""The in-memory form every data set is prepared into, and the data-set registry."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bench.config import DataConfig, format_validation_error
from bench.errors import ConfigError
from bench.registry import Registry

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ImageSet:
    """Decoded, resized images of one data set.

    images: uint8 (N, 3, H, W); labels: int64 (N,); masks: bool (N, H, W) lesion masks, or None;
    ids: a stable identifier per image (relative path, or generator index); fingerprint: a hash
    of the content, so the split manifest changes when the data does.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    classes: list[str]
    ids: list[str]
    fingerprint: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.images.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError("images, labels and ids must have the same length")


Loader = Callable[[DataConfig, Path], ImageSet]
Source = Callable[[DataConfig, Path], "str | None"]
"""A cheap fingerprint of a data set's source that decodes nothing (a generator's options, a
folder's file names, sizes and mtimes, an archive's hash), given the config and the cache
folder. The split manifest is cached under it (bench/data/manifests.py), so a grid is planned
without preparing its images. None: the source cannot be told without preparing it (e.g. an
archive not yet extracted); DataError: the data is not available here."""


class NoOptions(BaseModel):
    """The options of a data set that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    load: Loader
    description: str
    has_masks: bool
    nominal_images: int | None = None
    options: type[BaseModel] = NoOptions
    source: Source | None = None

    def parse_options(self, options: dict[str, object], where: str = "") -> BaseModel:
        """The grid's `options` of this data set, validated; ConfigError naming the key (and
        ``where`` the data set is in the grid, e.g. `datasets.0`)."""
        try:
            return self.options.model_validate(options)
        except ValidationError as err:
            problems = format_validation_error(err).replace("; ", "; options.")
            place = f"{where} " if where else ""
            raise ConfigError(f"{place}data set '{self.name}': options.{problems}") from err


DATASETS: Registry[DatasetInfo] = Registry(
    "data set", "datasets", ("bench.data.imagefolder", "bench.data.kvasir", "bench.data.synthetic"))
"""Data sets by name: the built-in ones and plugins' (entry points `medq_bench.datasets`)."""


def register_dataset(name: str, description: str, has_masks: bool = False,
                     nominal_images: int | None = None,
                     options: type[BaseModel] = NoOptions, source: Source | None = None
                     ) -> Callable[[Loader], Loader]:
    """Register a loader; nominal_images lets a dry run estimate cost without the data,
    ``options`` is the pydantic model of the grid's `options` for this data set (checked when
    the grid is planned; extra keys are errors) and ``source`` its source fingerprint (without
    one the data set is prepared whenever a grid that uses it is planned).

    A data set module must import without torch (a grid is planned, and a fully cached run
    finishes, without the training stack): import torch inside the loader."""
    def add(load: Loader) -> Loader:
        DATASETS.register(name, DatasetInfo(name, load, description, has_masks, nominal_images,
                                            options, source))
        return load
    return add


def options_of(cfg: DataConfig) -> Any:
    """The validated options of ``cfg``'s data set (its registered options model)."""
    return get_dataset(cfg.name).parse_options(cfg.options)


def machine_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_memory(need_bytes: int, what: str) -> None:
    """ConfigError before allocating if ``what`` (the option and its value, in words) needs
    more memory than this machine has."""
    ram = machine_memory_bytes()
    if ram is not None and need_bytes > ram:
        raise ConfigError(f"{what} needs about {human_bytes(need_bytes)} of memory, more than "
                          f"this machine's {human_bytes(ram)} of RAM")


def get_dataset(name: str) -> DatasetInfo:
    return DATASETS.get(name)


def cache_dir() -> Path:
    """Where prepared data sets and downloads are cached: MEDQ_CACHE, else
    $XDG_CACHE_HOME/medq-bench, else ~/.cache/medq-bench, the home folder from the password
    database when HOME is empty (never `/.cache`). Created if it can be; one that cannot be
    (read-only, under a file, a full disk) is logged once and every cache write is then
    skipped with a warning: a cache saves time, its absence does not stop a run. ConfigError
    when no folder can be named at all."""
    path = _cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if path not in _UNUSABLE:
            _UNUSABLE.add(path)
            log.warning("cannot create the cache folder %s (%s): nothing will be cached; "
                        "set MEDQ_CACHE to a writable folder", path, err.strerror or err)
    return path


_UNUSABLE: set[Path] = set()


def _cache_root() -> Path:
    if os.environ.get("MEDQ_CACHE"):
        return Path(os.environ["MEDQ_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "medq-bench"
    home = os.environ.get("HOME") or _password_home()
    if not home or not Path(home).is_absolute():
        raise ConfigError("no cache folder: HOME is empty and this user has no home folder; "
                          "set MEDQ_CACHE to a writable folder")
    return Path(home) / ".cache" / "medq-bench"


def _password_home() -> str | None:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir or None
    except (ImportError, KeyError):
        return None


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
