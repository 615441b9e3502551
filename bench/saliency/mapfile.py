"""A cell's saliency maps file: the evaluated image indices, their targets, one stack per method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAPS_FILE = "saliency_maps.npz"
_META = ("index", "targets")


@dataclass(frozen=True)
class StoredMaps:
    """index: data-set indices of the evaluated images (N,); targets: attributed classes (N,);
    maps: saliency method -> float32 (N, H, W)."""

    index: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]


def save_maps(folder: Path, stored: StoredMaps) -> Path:
    """Write `folder/saliency_maps.npz` (compressed); method names are the array names."""
    path = folder / MAPS_FILE
    np.savez_compressed(path, index=stored.index, targets=stored.targets,
                        **{m: a.astype(np.float32) for m, a in stored.maps.items()})
    return path


def load_maps(folder: Path) -> StoredMaps | None:
    """The maps stored in `folder`, or None when it has no maps file."""
    path = folder / MAPS_FILE
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return StoredMaps(npz["index"], npz["targets"],
                          {k: npz[k] for k in npz.files if k not in _META})
