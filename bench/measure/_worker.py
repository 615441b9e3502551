"""Measurement worker: load one model, time it with the protocol, print one JSON line.

Run as a script (``python .../_worker.py '<spec json>'``) by ``bench.measure.isolation``, in a
fresh process or container whose limits the parent has already set. It imports only the
standard library, numpy and the runtime under test, and loads ``protocol.py`` from its own
folder by path, so that neither the ``bench`` package's imports nor its memory count against
the limits, and a container needs only this folder mounted.

Spec keys: model, runtime ("onnxruntime" | "torch"), provider, intra_op, inter_op (0: runtime
default), batch_size, input_shape (per sample), warmup, min_repetitions, min_duration_s, seed,
and optionally session_config (ONNX Runtime session config entries the cell was deployed with)
and accuracy ({"inputs": path of a test-inputs file}: after timing, run the model over those
inputs, preprocessed by ``preprocess.py`` from this folder, numpy only).
Output: {"ok": true, "samples_s", "load_time_s", "peak_rss_mb", "providers", "affinity",
"runtime_version"} (plus "logits", one list per test image, with accuracy; ``peak_rss_mb`` is
taken before it) or {"ok": false, "stage", "error", "memory"}.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

MEMORY_MARKERS = (
    "bad_alloc",
    "failed to allocate",
    "cannot allocate memory",
    "out of memory",
    "failed to map segment",
    "memoryerror",
)


def is_memory_failure(text: str) -> bool:
    """Whether an error message or stderr reads like an allocation failure."""
    lowered = text.lower()
    return any(marker in lowered for marker in MEMORY_MARKERS)


def _load_sibling(name: str):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_medq_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak_rss_mb() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


_NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}
Runner = tuple[Callable[[], object], list[str], str, Callable[[object], object] | None]
"""A loaded model: the timed call, the providers, the runtime's version and, where the runtime
can run given inputs, the function of a batch that returns its logits."""


def _onnxruntime_runner(spec: dict) -> Runner:
    import numpy as np
    import onnxruntime as ort

    provider = spec["provider"]
    if provider not in ort.get_available_providers():
        raise RuntimeError(
            f"execution provider {provider} is not available; this onnxruntime build offers "
            f"{ort.get_available_providers()}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["intra_op"]
    options.inter_op_num_threads = spec["inter_op"]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in (spec.get("session_config") or {}).items():
        options.add_session_config_entry(key, value)
    providers = [provider]
    if provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    session = ort.InferenceSession(spec["model"], options, providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"session fell back to {session.get_providers()} instead of {provider}")
    inp = session.get_inputs()[0]
    dtype = _NUMPY_DTYPES.get(inp.type, "float32")
    rng = np.random.default_rng(spec["seed"])
    x = rng.standard_normal((spec["batch_size"], *spec["input_shape"])).astype(dtype)
    feed = {inp.name: x}

    def infer(batch: object) -> object:
        return session.run(None, {inp.name: np.asarray(batch, dtype=dtype)})[0]

    return (lambda: session.run(None, feed)), session.get_providers(), ort.__version__, infer


def _torch_runner(spec: dict) -> Runner:
    import torch

    if spec["intra_op"] > 0:
        torch.set_num_threads(spec["intra_op"])
    if spec["inter_op"] > 0:
        torch.set_num_interop_threads(spec["inter_op"])
    model = torch.load(spec["model"], weights_only=False).eval()
    generator = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn((spec["batch_size"], *spec["input_shape"]), generator=generator)

    def call() -> object:
        with torch.inference_mode():
            return model(x)

    return call, ["torch-eager-cpu"], torch.__version__, None


def _logits(infer: Callable[[object], object] | None, inputs_path: str) -> list[list[float]]:
    """The model's logits over the test inputs, in the deploy stage's batches."""
    import numpy as np

    if infer is None:
        raise RuntimeError("this runtime cannot run the test inputs (accuracy mode needs an "
                           "ONNX model)")
    preprocess = _load_sibling("preprocess")
    inputs = preprocess.load_inputs(inputs_path)
    chunks = [np.asarray(infer(batch), dtype=np.float32) for batch in preprocess.batches(inputs)]
    return np.concatenate(chunks).tolist() if chunks else []


def run(spec: dict) -> dict:
    """Load, warm up and time the model described by ``spec``; failures are returned."""
    stage = "import"
    try:
        protocol = _load_sibling("protocol")
        torch_runtime = spec["runtime"] == "torch"
        importlib.import_module("torch" if torch_runtime else "onnxruntime")
        stage = "load"
        start = time.perf_counter()
        make = _torch_runner if torch_runtime else _onnxruntime_runner
        call, providers, version, infer = make(spec)
        load_time = time.perf_counter() - start
        stage = "run"
        samples = protocol.run_protocol(
            call, spec["warmup"], spec["min_repetitions"], spec["min_duration_s"]
        )
        peak = _peak_rss_mb()
        extra = {}
        if spec.get("accuracy"):
            stage = "accuracy"
            extra["logits"] = _logits(infer, spec["accuracy"]["inputs"])
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        memory = isinstance(err, MemoryError) or is_memory_failure(message)
        return {"ok": False, "stage": stage, "error": message, "memory": memory}
    return {
        "ok": True,
        "samples_s": samples,
        "load_time_s": load_time,
        "peak_rss_mb": peak,
        "providers": providers,
        "affinity": sorted(os.sched_getaffinity(0)),
        "runtime_version": version,
        **extra,
    }


def main(argv: list[str]) -> int:
    result = run(json.loads(argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
