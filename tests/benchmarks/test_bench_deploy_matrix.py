"""Every shipped backbone deploys at every shipped bit-width, at 32 and 224 px.

Skipped in the default run (a fresh backbone per case: the 32 px half took about 10 minutes on
a loaded 2-core machine, 224 px far more; `tests/test_integer_deploy.py` covers a subset). Run with

    MEDQ_BENCH=1 python -m pytest tests/benchmarks/test_bench_deploy_matrix.py -o addopts="" -s

Each case quantises a backbone with data BatchNorm statistics (`tests.backbones`; no training),
calibrates on random images, exports with the deploy stage's exporter and runs it in ONNX
Runtime. Checked: the export and the run succeed; every backbone but MobileNetV3-Small runs
every compute node as an integer kernel (integer coverage 1.0, `bench.deploy.coverage`); the
deployed top-1 agrees with
the fake-quant model on >= 7 of 8 random images (random-weight logits lie close together). Each
case prints its coverage and agreement.
PACT (and so PACT+SGT) runs on EfficientNet-B0 and MobileNetV3-Small too: their SiLU and
Hardswish outputs get a signed learned clip.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.deploy import export_quantized
from bench.deploy.kernels import graph_coverage
from bench.deploy.runtime import session_options
from bench.models import BACKBONES
from tests.backbones import quantised_backbone, random_images

BITS = [(8, 8), (4, 8), (4, 4), (4, 2), (2, 2)]
FULLY_INTEGER = set(BACKBONES) - {"mobilenet_v3_small"}
"""MobileNetV3's Hardswish and Hardsigmoid have no integer kernel in ONNX Runtime."""
CASES = [(b, w, a, "stats") for b in BACKBONES for w, a in BITS]
CASES += [(b, w, a, "pact") for b in ("efficientnet_b0", "mobilenet_v3_small") for w, a in BITS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize(("backbone", "w", "a", "scheme"), CASES)
def test_backbone_deploys(backbone, w, a, scheme, size, tmp_path):
    qmodel = quantised_backbone(backbone, size, w, a, scheme)
    path = export_quantized(qmodel, random_images(1, size, 0), tmp_path / "model.onnx")
    coverage = graph_coverage(path)
    x = random_images(8, size, 4)
    session = ort.InferenceSession(str(path), session_options(),
                                   providers=["CPUExecutionProvider"])
    deployed = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        reference = qmodel(x).numpy()
    agreement = float((deployed.argmax(1) == reference.argmax(1)).mean())
    print(f"\n{backbone} {scheme} W{w}A{a} {size}px: integer coverage {coverage.by_nodes:.3f} "
          f"(MACs {coverage.by_macs:.4f}, float {coverage.float_nodes}), "
          f"agreement {agreement:.3f}, max |logit diff| {np.abs(deployed - reference).max():.4f}")
    if backbone in FULLY_INTEGER:
        assert coverage.integer
    assert agreement >= 7 / 8
