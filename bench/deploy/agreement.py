"""Check that an exported ONNX model computes what the (fake-quant) PyTorch model computes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.deploy.runtime import session_options


@dataclass(frozen=True)
class Agreement:
    """Comparison of ONNX Runtime outputs with the PyTorch reference on the same inputs.

    ``accuracy`` and ``reference_accuracy`` are top-1 accuracies of ONNX Runtime and of the
    PyTorch model; they are ``None`` when no labels were given.
    """

    n: int
    top1_agreement: float
    max_abs_logit_diff: float
    accuracy: float | None = None
    reference_accuracy: float | None = None


def _session(session_or_path: ort.InferenceSession | str | Path) -> ort.InferenceSession:
    if isinstance(session_or_path, ort.InferenceSession):
        return session_or_path
    return ort.InferenceSession(str(session_or_path), session_options(),
                                providers=["CPUExecutionProvider"])


def _run_onnx(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    spec = session.get_inputs()[0]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    step = fixed or len(inputs)
    chunks = [
        session.run(None, {spec.name: inputs[i : i + step]})[0]
        for i in range(0, len(inputs), step)
    ]
    return np.concatenate(chunks)


def agreement(
    session_or_path: ort.InferenceSession | str | Path,
    torch_model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
) -> Agreement:
    """Compare ONNX Runtime logits with ``torch_model``'s on ``inputs`` (N, ...)."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    if x.shape[0] == 0:
        raise ValueError("agreement needs at least one input")
    onnx_logits = _run_onnx(_session(session_or_path), x.numpy())
    training = torch_model.training
    torch_device = next((p.device for p in torch_model.parameters()), x.device)
    torch_model.eval()
    try:
        with torch.no_grad():
            ref_logits = torch_model(x.to(torch_device)).detach().float().cpu().numpy()
    finally:
        torch_model.train(training)
    return compare_logits(onnx_logits, ref_logits, labels)


def compare_logits(
    onnx_logits: np.ndarray,
    ref_logits: np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
) -> Agreement:
    """Compare ONNX Runtime logits with reference (PyTorch) logits of the same inputs."""
    if onnx_logits.shape != ref_logits.shape:
        raise ValueError(
            f"output shapes differ: onnx {onnx_logits.shape}, torch {ref_logits.shape}"
        )
    onnx_top1 = onnx_logits.argmax(axis=1)
    ref_top1 = ref_logits.argmax(axis=1)
    accuracy = reference_accuracy = None
    if labels is not None:
        y = np.asarray(labels).reshape(-1)
        accuracy = float((onnx_top1 == y).mean())
        reference_accuracy = float((ref_top1 == y).mean())
    return Agreement(
        n=len(onnx_logits),
        top1_agreement=float((onnx_top1 == ref_top1).mean()),
        max_abs_logit_diff=float(np.abs(onnx_logits - ref_logits).max()),
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
    )
