"""Deployed model size: integer weights bit-packed at their bit width, params and MACs.

The packed file is an uncompressed ``.npz``. For each quantised layer it holds the integer
weights packed little-endian, ``bits`` bits per value, in two's complement when signed
(``<layer>/weight``), the weight shape, bit width and signedness, and the scale, zero point
and bias as **float32**. Weights of layers left unquantised are stored as float32 too.
Brevitas' activation quantiser parameters are not included (a few floats per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FLOAT_DTYPE = np.float32


@dataclass(frozen=True)
class PackedInfo:
    """What ``pack_quantized`` wrote; ``size_bytes`` is the size of the file on disk."""

    path: Path
    size_bytes: int
    weight_bytes: int
    n_params: int
    n_float_params: int
    bits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PackedLayer:
    """One layer read back from a packed file; ``weight`` holds the integer values."""

    weight: np.ndarray
    bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray
    bias: np.ndarray | None

    def dequantize(self) -> np.ndarray:
        """Float weights ``(weight - zero_point) * scale``."""
        return (self.weight.astype(FLOAT_DTYPE) - self.zero_point) * self.scale


def expected_packed_bits(n_params: int, bits: int) -> int:
    """Payload bits of ``n_params`` values packed at ``bits`` bits each (no padding)."""
    _check_bits(bits)
    return n_params * bits


def expected_packed_bytes(n_params: int, bits: int) -> int:
    """Bytes of one packed tensor: its payload rounded up to whole bytes."""
    return math.ceil(expected_packed_bits(n_params, bits) / 8)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"bit width must be between 1 and 8, got {bits}")


def _value_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def pack_bits(values: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Pack integer ``values`` into a uint8 array of ``ceil(n * bits / 8)`` bytes."""
    _check_bits(bits)
    flat = np.asarray(values).reshape(-1).astype(np.int16)
    low, high = _value_range(bits, signed)
    if flat.size and (flat.min() < low or flat.max() > high):
        raise ValueError(
            f"values span [{flat.min()}, {flat.max()}], outside the {bits}-bit "
            f"{'signed' if signed else 'unsigned'} range [{low}, {high}]"
        )
    low_bits = (flat & ((1 << bits) - 1)).astype(np.uint8)
    if bits == 8:
        return low_bits
    matrix = np.unpackbits(low_bits[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(matrix.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int, signed: bool) -> np.ndarray:
    """Inverse of ``pack_bits``: ``n`` integers as int16."""
    _check_bits(bits)
    matrix = np.unpackbits(packed, bitorder="little")[: n * bits].reshape(n, bits)
    padded = np.zeros((n, 8), dtype=np.uint8)
    padded[:, :bits] = matrix
    values = np.packbits(padded, axis=1, bitorder="little")[:, 0].astype(np.int16)
    if signed:
        values[values >= 1 << (bits - 1)] -= 1 << bits
    return values


def _is_quant_layer(module: nn.Module) -> bool:
    weight_quant = getattr(module, "weight_quant", None)
    return hasattr(module, "quant_weight") and bool(getattr(weight_quant, "is_quant_enabled", 0))


def _float(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(FLOAT_DTYPE)


def _quant_layer_arrays(
    name: str, module: nn.Module, w_bits: int | None
) -> tuple[dict[str, np.ndarray], int, int]:
    qt = module.quant_weight()
    ints = qt.int().cpu().numpy()
    signed = bool(qt.signed)
    bits = round(float(qt.bit_width)) if w_bits is None else w_bits
    try:
        packed = pack_bits(ints, bits, signed)
    except ValueError as err:
        raise ValueError(f"layer {name!r}: {err}") from err
    arrays = {
        f"{name}/weight": packed,
        f"{name}/shape": np.asarray(ints.shape, dtype=np.int64),
        f"{name}/meta": np.asarray([bits, int(signed)], dtype=np.int64),
        f"{name}/scale": _float(qt.scale),
        f"{name}/zero_point": _float(qt.zero_point),
    }
    if getattr(module, "bias", None) is not None:
        arrays[f"{name}/bias"] = _float(module.bias)
    return arrays, ints.size, bits


def pack_quantized(model: nn.Module, w_bits: int | None, path: str | Path) -> PackedInfo:
    """Write the bit-packed weights of a Brevitas model to ``path`` (an ``.npz`` file).

    Each quantised layer is packed at ``w_bits`` (or its own bit width when ``None``); a
    layer whose integers do not fit ``w_bits`` raises ``ValueError`` naming it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    bits: dict[str, int] = {}
    n_params = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if _is_quant_layer(module):
                layer_arrays, n, bits[name] = _quant_layer_arrays(name, module, w_bits)
                arrays.update(layer_arrays)
                n_params += n
        for pname, param in model.named_parameters():
            owner, _, leaf = pname.rpartition(".")
            if owner not in bits and not _is_quantiser_param(pname):
                arrays[f"{owner}/float_{leaf}"] = _float(param)
    if not bits:
        raise ValueError("model has no layer with quantised weights to pack")
    with path.open("wb") as f:
        np.savez(f, **arrays)
    weight_bytes = sum(a.nbytes for k, a in arrays.items() if k.endswith("/weight"))
    n_float = sum(a.size for k, a in arrays.items() if a.dtype == FLOAT_DTYPE)
    return PackedInfo(
        path=path,
        size_bytes=path.stat().st_size,
        weight_bytes=weight_bytes,
        n_params=n_params,
        n_float_params=n_float,
        bits=bits,
    )


def unpack(path: str | Path) -> dict[str, PackedLayer]:
    """Read a file written by ``pack_quantized``: quantised layers by module name."""
    layers: dict[str, PackedLayer] = {}
    with np.load(path, allow_pickle=False) as data:
        names = sorted({k.rsplit("/", 1)[0] for k in data.files if k.endswith("/meta")})
        for name in names:
            bits, signed = (int(v) for v in data[f"{name}/meta"])
            shape = tuple(int(v) for v in data[f"{name}/shape"])
            n = math.prod(shape)
            weight = unpack_bits(data[f"{name}/weight"], bits, n, bool(signed)).reshape(shape)
            bias_key = f"{name}/bias"
            layers[name] = PackedLayer(
                weight=weight,
                bits=bits,
                signed=bool(signed),
                scale=data[f"{name}/scale"],
                zero_point=data[f"{name}/zero_point"],
                bias=data[bias_key] if bias_key in data.files else None,
            )
    return layers


def _is_quantiser_param(name: str) -> bool:
    return any(part.endswith("_quant") for part in name.split(".")[:-1])


def count_params(model: nn.Module) -> int:
    """Learnable weights and biases, quantiser parameters excluded."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] in ("weight", "bias") and not _is_quantiser_param(name)
    )


def count_params_and_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Learnable weights and biases (quantiser parameters excluded) and MACs of one forward.

    MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (conv, matmul and friends),
    halved since it counts a multiply-add as two FLOPs; they scale with the batch size of
    ``example_input``.
    """
    n_params = count_params(model)
    training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(example_input)
    finally:
        model.train(training)
    return n_params, counter.get_total_flops() // 2
