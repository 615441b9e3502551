"""Measurement worker: load one model, time it with the protocol, print one JSON line.

Run as a script (``python .../_worker.py '<spec json>'``) by ``bench.measure.isolation``, in a
fresh process or container whose limits the parent has already set. It imports only the
standard library, numpy and the runtime under test, and loads ``protocol.py`` from its own
folder by path, so that neither the ``bench`` package's imports nor its memory count against
the limits, and a container needs only this folder mounted.

Spec keys: model, runtime ("onnxruntime" | "openvino" | "torch", `RUNNERS`), provider, openvino
(OpenVINO's settings: inference_precision, device), intra_op, inter_op (0: runtime default),
batch_size, input_shape (per sample), warmup, min_repetitions, min_duration_s, seed,
and optionally session_config (ONNX Runtime session config entries the cell was deployed with)
and accuracy ({"inputs": path of a test-inputs file}: after timing, run the model over those
inputs, preprocessed by ``preprocess.py`` from this folder, numpy only).
Output: {"ok": true, "samples_s", "load_time_s", "peak_rss_mb", "providers", "affinity",
"runtime_version"} (plus "runtime_coverage" where the runtime says how it executes each layer,
and "logits", one list per test image, with accuracy; ``peak_rss_mb`` is
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
from typing import NamedTuple

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
class Runner(NamedTuple):
    """A loaded model: the timed call, the providers, the runtime's version, where the runtime
    can run given inputs the function of a batch that returns its logits, and how the runtime
    executes the model's layers where it says."""

    call: Callable[[], object]
    providers: list[str]
    version: str
    infer: Callable[[object], object] | None = None
    coverage: dict | None = None


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

    return Runner(lambda: session.run(None, feed), session.get_providers(), ort.__version__,
                  infer)


COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution",
                            "FullyConnected", "MatMul"})
"""OpenVINO runtime-model layer types that carry a model's multiply-accumulates."""
INTEGER_PRECISIONS = frozenset({"u8", "i8", "u4", "i4"})


def openvino_coverage(layers: list[tuple[str, str]]) -> dict:
    """Per (layer type, runtime precision) of OpenVINO's runtime model, the share of compute
    layers (`COMPUTE_LAYERS`) that execute in an integer precision, and their counts."""
    compute = [(t, p) for t, p in layers if t in COMPUTE_LAYERS]
    integer = sum(p in INTEGER_PRECISIONS for _, p in compute)
    counts: dict[str, int] = {}
    for t, p in compute:
        counts[f"{t}:{p}"] = counts.get(f"{t}:{p}", 0) + 1
    return {"int_coverage": integer / len(compute) if compute else None,
            "int_layers": integer, "compute_layers": len(compute), "layers": counts}


def _openvino_runner(spec: dict) -> Runner:
    import numpy as np
    import openvino as ov

    settings = spec.get("openvino") or {}
    config: dict[str, object] = {
        "INFERENCE_PRECISION_HINT": settings.get("inference_precision", "f32"),
        "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if spec["intra_op"] > 0:
        config["INFERENCE_NUM_THREADS"] = spec["intra_op"]
    device = settings.get("device", "CPU")
    compiled = ov.Core().compile_model(spec["model"], device, config)
    request = compiled.create_infer_request()
    rng = np.random.default_rng(spec["seed"])
    x = rng.standard_normal((spec["batch_size"], *spec["input_shape"])).astype("float32")

    def infer(batch: object) -> object:
        request.infer({0: np.asarray(batch, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    layers = [(op.get_rt_info()["layerType"].astype(str),
               op.get_rt_info()["runtimePrecision"].astype(str))
              for op in compiled.get_runtime_model().get_ops()]
    coverage = {**openvino_coverage(layers),
                "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT")
                .to_string()}
    return Runner(lambda: request.infer({0: x}), [f"openvino-{device}"], ov.__version__, infer,
                  coverage)


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

    return Runner(call, ["torch-eager-cpu"], torch.__version__)


RUNNERS: dict[str, tuple[str, Callable[[dict], Runner]]] = {
    "onnxruntime": ("onnxruntime", _onnxruntime_runner),
    "openvino": ("openvino", _openvino_runner),
    "torch": ("torch", _torch_runner),
}
"""Each runtime's module (imported first, so that a missing one fails as "import") and the
function that loads a model in it."""


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
        module, make = RUNNERS[spec["runtime"]]
        importlib.import_module(module)
        stage = "load"
        start = time.perf_counter()
        loaded = make(spec)
        load_time = time.perf_counter() - start
        stage = "run"
        samples = protocol.run_protocol(
            loaded.call, spec["warmup"], spec["min_repetitions"], spec["min_duration_s"]
        )
        peak = _peak_rss_mb()
        extra = {}
        if loaded.coverage is not None:
            extra["runtime_coverage"] = loaded.coverage
        if spec.get("accuracy"):
            stage = "accuracy"
            extra["logits"] = _logits(loaded.infer, spec["accuracy"]["inputs"])
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        memory = isinstance(err, MemoryError) or is_memory_failure(message)
        return {"ok": False, "stage": stage, "error": message, "memory": memory}
    return {
        "ok": True,
        "samples_s": samples,
        "load_time_s": load_time,
        "peak_rss_mb": peak,
        "providers": loaded.providers,
        "affinity": sorted(os.sched_getaffinity(0)),
        "runtime_version": loaded.version,
        **extra,
    }


def main(argv: list[str]) -> int:
    result = run(json.loads(argv[1]))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
