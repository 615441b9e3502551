"""The ONNX Runtime session settings a deployed model is evaluated, counted and timed with.

``session.x64quantprecision=1`` is ONNX Runtime's remedy for the int16 saturation of its U8S8
integer kernels on x86 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without VNNI: ``vpmaddubsw``
adds two uint8 x int8 products into a saturating int16; see the key's comment in
``onnxruntime_session_options_config_keys.h``): layers whose int8 weights leave the 7-bit range
run as U8U8 instead. It changes nothing on CPUs with VNNI or on ARM. Without it, every 8-bit
weight layer (the first and last layers at every bit width) can saturate on such a CPU. The
deploy stage records these settings with the cell and `bench measure` times the shipped file
with them.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnxruntime as ort

SESSION_CONFIG: dict[str, str] = {"session.x64quantprecision": "1"}


def session_options(config: Mapping[str, str] | None = None) -> ort.SessionOptions:
    """Session options with ``config`` entries (default ``SESSION_CONFIG``), warnings off."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (SESSION_CONFIG if config is None else config).items():
        options.add_session_config_entry(key, value)
    return options
