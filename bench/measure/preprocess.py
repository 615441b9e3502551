"""The device's preprocessing of test inputs: uint8 pixels to the model's float input, numpy only.

A cell's test inputs (``test_inputs.npz``, written by the deploy stage) hold the test split's
uint8 images (N, 3, H, W) once, with the mean and standard deviation (float32) the harness
normalises with. The device applies the same float32 operations in the same order as
`bench.data.normalize` (``x / 255``, then ``- mean``, then ``/ std``), so its input tensor equals
the workstation's bit for bit (tests/test_device_accuracy.py). The measurement worker loads this
module by path: it imports numpy only.
"""

from __future__ import annotations

import numpy as np

PIXEL_MAX = np.float32(255.0)
INPUT_KEYS = ("images", "labels", "index", "mean", "std", "batch_size")
"""The arrays of a test-inputs file."""


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 ``(images / 255 - mean) / std``, per channel."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"test images must be uint8 (N, C, H, W), not {images.dtype} "
                         f"{images.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (images.astype(np.float32) / PIXEL_MAX - m) / s


def load_inputs(path: str) -> dict[str, np.ndarray]:
    """The arrays of a test-inputs file (no pickles), checked for the keys it must hold."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in INPUT_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: test inputs lack {', '.join(missing)}")
        return {k: data[k] for k in INPUT_KEYS}


def batches(inputs: dict[str, np.ndarray]):
    """Normalised float32 batches of the inputs, of the size the deploy stage evaluated with."""
    images = inputs["images"]
    step = max(1, int(inputs["batch_size"]))
    for start in range(0, len(images), step):
        yield normalize(images[start:start + step], inputs["mean"], inputs["std"])
