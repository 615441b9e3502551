"""Brevitas graph-mode quantisation of plain torch classifiers: build, calibrate, inspect.

``quantize`` turns an FP32 model into a fake-quantised Brevitas graph (input, weights and
activations quantised; logits left in floating point).  ``calibrate`` sets activation scales from
data (PTQ) and, for PACT models, initialises the learned clipping values from the same data.
Training the returned model gives QAT (straight-through estimator, learned activation scales) or
PACT (learned clip ``alpha`` per activation quantiser, regularised with ``clip_penalty``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import brevitas.nn as qnn
import torch
from brevitas.core.scaling.standalone import ParameterScaling
from brevitas.graph.calibrate import (
    bias_correction_mode,
    calibration_mode,
    quantization_status_manager,
)
from brevitas.graph.quantize import (
    COMPUTE_LAYER_MAP,
    QUANT_ACT_MAP,
    QUANT_IDENTITY_MAP,
    preprocess_for_quantize,
)
from brevitas.graph.quantize import quantize as brevitas_quantize
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Int8WeightPerTensorFloat,
    Int32Bias,
    Uint8ActPerTensorFloatMaxInit,
)
from torch import nn

PACT_INIT_ALPHA = 6.0
"""Placeholder alpha at construction; ``quantize`` and ``calibrate`` replace it from data."""
PACT_INIT_PERCENTILE = 99.99
"""Percentile of the FP activations used to initialise alpha."""
_MIN_ALPHA = 1e-3
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class QuantSpec:
    """Bit-widths and options of one quantisation configuration."""

    w_bits: int
    a_bits: int
    per_channel: bool = True
    first_last_bits: int | None = 8
    learned_clip: bool = False

    def __post_init__(self) -> None:
        bits = {"w_bits": self.w_bits, "a_bits": self.a_bits}
        if self.first_last_bits is not None:
            bits["first_last_bits"] = self.first_last_bits
        for name, value in bits.items():
            if not isinstance(value, int) or not 2 <= value <= 8:
                raise ValueError(f"{name} must be an int in 2..8, got {value!r}")


class _FirstConv2d(nn.Conv2d):
    """Marks the first weight layer so that it gets its own layer-map entry."""


class _FirstLinear(nn.Linear):
    """Marks the first weight layer so that it gets its own layer-map entry."""


class _LastConv2d(nn.Conv2d):
    """Marks the last weight layer so that it gets its own layer-map entry."""


class _LastLinear(nn.Linear):
    """Marks the last weight layer so that it gets its own layer-map entry."""


_FIRST_MARKERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: _FirstConv2d,
    nn.Linear: _FirstLinear,
}
_LAST_MARKERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: _LastConv2d,
    nn.Linear: _LastLinear,
}


def _weight_quant(bits: int, per_channel: bool) -> Any:
    base = Int8WeightPerChannelFloat if per_channel else Int8WeightPerTensorFloat
    return base.let(bit_width=bits)


def _layer_map(spec: QuantSpec) -> dict:
    layer_map = dict(COMPUTE_LAYER_MAP)
    for layer_type in _WEIGHT_LAYERS:
        quant_class, kwargs = layer_map[layer_type]
        layer_map[layer_type] = (
            quant_class,
            {**kwargs, "weight_quant": _weight_quant(spec.w_bits, spec.per_channel)},
        )
    if spec.first_last_bits is not None:
        bits = spec.first_last_bits
        # The first layer's input is the graph input, already quantised at ``bits``.
        first = {"weight_quant": _weight_quant(bits, spec.per_channel), "bias_quant": Int32Bias,
                 "return_quant_tensor": True}
        last = {**first, "input_quant": Int8ActPerTensorFloat.let(bit_width=bits)}
        layer_map[_FirstConv2d] = (qnn.QuantConv2d, first)
        layer_map[_FirstLinear] = (qnn.QuantLinear, first)
        layer_map[_LastConv2d] = (qnn.QuantConv2d, last)
        layer_map[_LastLinear] = (qnn.QuantLinear, last)
    return layer_map


def _act_map(spec: QuantSpec) -> dict:
    act_map = {}
    for act_type, (quant_class, kwargs) in QUANT_ACT_MAP.items():
        act_quant = kwargs["act_quant"].let(bit_width=spec.a_bits)
        act_map[act_type] = (quant_class, {**kwargs, "act_quant": act_quant})
    if spec.learned_clip:
        pact = Uint8ActPerTensorFloatMaxInit.let(bit_width=spec.a_bits)
        act_map[nn.ReLU] = (
            qnn.QuantReLU,
            {"act_quant": pact, "max_val": PACT_INIT_ALPHA, "return_quant_tensor": True},
        )
    return act_map


def _identity_map(bits: int) -> dict:
    return {
        sign: (quant_class, {**kwargs, "act_quant": kwargs["act_quant"].let(bit_width=bits)})
        for sign, (quant_class, kwargs) in QUANT_IDENTITY_MAP.items()
    }


def _module_nodes(graph_model: nn.Module, types: tuple[type, ...]) -> list[Any]:
    return [
        node
        for node in graph_model.graph.nodes
        if node.op == "call_module" and isinstance(graph_model.get_submodule(node.target), types)
    ]


def _mark_edge_layers(graph_model: nn.Module) -> None:
    """Re-type the first and last weight layer (Conv2d/Linear) to their marker classes."""
    nodes = _module_nodes(graph_model, _WEIGHT_LAYERS)
    roles = [(nodes[0], _FIRST_MARKERS)] if nodes else []
    if len(nodes) > 1:
        roles.append((nodes[-1], _LAST_MARKERS))
    for node, markers in roles:
        module = graph_model.get_submodule(node.target)
        marker = markers.get(type(module))
        if marker is None:
            raise TypeError(f"first/last layer {node.target} is {type(module).__name__}; "
                            "only Conv2d and Linear can get first_last_bits")
        module.__class__ = marker


def _set_input_quant_bits(graph_model: nn.Module, bits: int) -> None:
    """Give ``bits`` to the quantisers on the graph inputs and right before the first layer."""
    targets = set()
    for node in graph_model.graph.nodes:
        if node.op == "placeholder":
            targets.update(user.target for user in node.users if user.op == "call_module")
    first = _module_nodes(graph_model, (QuantWeightBiasInputOutputLayer,))[:1]
    for node in first:
        targets.update(inp.target for inp in node.all_input_nodes if inp.op == "call_module")
    quant_class, kwargs = _identity_map(bits)["signed"]
    for target in targets:
        if isinstance(graph_model.get_submodule(target), qnn.QuantIdentity):
            graph_model.add_module(target, quant_class(**kwargs))


def _drop_logits_quant(graph_model: nn.Module) -> None:
    """Remove the requantiser Brevitas adds after the final layer: logits stay floating point."""
    output = next(n for n in graph_model.graph.nodes if n.op == "output")
    for node in list(output.all_input_nodes):
        if node.op != "call_module" or len(node.users) != 1:
            continue
        if not isinstance(graph_model.get_submodule(node.target), qnn.QuantIdentity):
            continue
        producer = node.args[0]
        if getattr(producer, "op", None) != "call_module":
            continue
        layer = graph_model.get_submodule(producer.target)
        if not isinstance(layer, QuantWeightBiasInputOutputLayer):
            continue
        node.replace_all_uses_with(producer)
        graph_model.graph.erase_node(node)
        graph_model.delete_submodule(node.target)
        layer.return_quant_tensor = False
    graph_model.recompile()


def quantize(model: nn.Module, spec: QuantSpec, example_input: torch.Tensor) -> nn.Module:
    """Return a new fake-quantised Brevitas graph of ``model`` (which is left untouched).

    BatchNorm is folded into the preceding layers and ReLU6 becomes a quantised ReLU (so with
    quantisation disabled it acts as a plain ReLU).  The graph input is quantised (signed),
    weights are narrow-range signed with max-abs scales, ReLU outputs unsigned, other activation
    functions stay float and are requantised before the next layer; the final layer's output
    (logits) is not requantised.  The first and last Conv2d/Linear use ``spec.first_last_bits``
    for their weights and their input.  Activation scales are placeholders until ``calibrate`` or
    the first training steps; PACT alphas start from the FP activations on ``example_input``.
    The result lives on the device of ``model`` and has its train/eval mode.
    """
    graph_model = preprocess_for_quantize(copy.deepcopy(model).eval())
    if spec.first_last_bits is not None:
        _mark_edge_layers(graph_model)
    qmodel = brevitas_quantize(
        graph_model,
        quant_identity_map=_identity_map(spec.a_bits),
        compute_layer_map=_layer_map(spec),
        quant_act_map=_act_map(spec),
    )
    if spec.first_last_bits is not None:
        _set_input_quant_bits(qmodel, spec.first_last_bits)
    _drop_logits_quant(qmodel)
    device = _model_device(model)
    example_input = example_input.to(device)
    qmodel.to(device).eval()
    with torch.no_grad():
        qmodel(example_input)
    if spec.learned_clip:
        if not _pact_quant_modules(qmodel):
            raise ValueError("learned_clip needs nn.ReLU/ReLU6 activations; the model has none")
        _init_clip_values(qmodel, [example_input])
    qmodel.train(model.training)
    return qmodel


def _pact_quant_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Activation modules whose quantiser has a learned clip value (PACT alpha)."""
    found = {}
    for name, module in model.named_modules():
        act_quant = getattr(module, "act_quant", None)
        proxy = getattr(act_quant, "fused_activation_quant_proxy", None)
        if proxy is not None and isinstance(proxy.tensor_quant.scaling_impl, ParameterScaling):
            found[name] = module
    return found


class _ClipStats:
    """Averages a high percentile of each PACT module's FP activation over batches."""

    def __init__(self, modules: dict[str, nn.Module], percentile: float) -> None:
        self.percentile = percentile
        self.sums = dict.fromkeys(modules, 0.0)
        self.counts = dict.fromkeys(modules, 0)
        self.handles = [
            module.act_quant.fused_activation_quant_proxy.activation_impl.register_forward_hook(
                self._hook(name)
            )
            for name, module in modules.items()
        ]

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            flat = output.detach().flatten().float()
            k = max(1, min(flat.numel(), round(flat.numel() * self.percentile / 100.0)))
            self.sums[name] += float(flat.kthvalue(k).values)
            self.counts[name] += 1

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / n for name, n in self.counts.items() if n > 0}


def _set_alphas(modules: dict[str, nn.Module], alphas: dict[str, float]) -> None:
    with torch.no_grad():
        for name, alpha in alphas.items():
            scaling = modules[name].act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
            scaling.value.fill_(max(alpha, _MIN_ALPHA))


def _init_clip_values(
    model: nn.Module, batches: Iterable[torch.Tensor], percentile: float = PACT_INIT_PERCENTILE
) -> None:
    """Set PACT alphas from the FP activations of ``batches`` (quantisation disabled)."""
    modules = _pact_quant_modules(model)
    if not modules:
        return
    stats = _ClipStats(modules, percentile)
    try:
        with torch.no_grad(), quantization_disabled(model):
            for batch in batches:
                model(batch)
    finally:
        stats.remove()
    _set_alphas(modules, stats.means())


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    bias_correction: bool = False,
    clip_percentile: float = PACT_INIT_PERCENTILE,
) -> None:
    """PTQ calibration of a ``quantize``d model on input ``batches`` (image tensors, no labels).

    Activation scales are set from FP activation statistics (Brevitas ``calibration_mode``);
    PACT alphas are set to the batch-averaged ``clip_percentile`` of their FP activations.  With
    ``bias_correction`` a second pass over ``batches`` corrects layer biases for the quantisation
    error (so the FP forward of the graph no longer equals the original model exactly).
    """
    if bias_correction and isinstance(batches, Iterator):
        batches = list(batches)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    pact_modules = _pact_quant_modules(model)
    stats = _ClipStats(pact_modules, clip_percentile)
    seen = 0
    try:
        with torch.no_grad(), calibration_mode(model):
            for batch in batches:
                model(batch.to(device))
                seen += 1
    finally:
        stats.remove()
    if seen == 0:
        raise ValueError("calibrate needs at least one batch")
    _set_alphas(pact_modules, stats.means())
    if bias_correction:
        with torch.no_grad(), bias_correction_mode(model):
            for batch in batches:
                model(batch.to(device))
    model.train(was_training)


def clip_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """PACT clip parameters (alpha, the largest representable activation) by module name."""
    return {
        name: module.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl.value
        for name, module in _pact_quant_modules(model).items()
    }


def clip_values(model: nn.Module) -> dict[str, float]:
    """Current PACT alphas as plain floats."""
    return {name: float(param.detach().abs()) for name, param in clip_parameters(model).items()}


def clip_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared PACT alphas (zero tensor if the model has none)."""
    params = list(clip_parameters(model).values())
    if not params:
        return torch.zeros((), device=_model_device(model))
    return torch.stack([p.pow(2).sum() for p in params]).sum()


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[None]:
    """Run the quantised graph in floating point: weights, biases and activations unquantised."""
    with quantization_status_manager(
        model, disable_act_quant=True, disable_weight_quant=True, disable_bias_quant=True
    ):
        yield


def integer_weight_levels(model: nn.Module) -> dict[str, int]:
    """Per quantised layer: most distinct integer weight values found in any output channel."""
    levels = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, QuantWeightBiasInputOutputLayer):
                continue
            if not module.weight_quant.is_quant_enabled:
                continue
            ints = module.quant_weight().int()
            per_channel = ints.reshape(ints.shape[0], -1)
            levels[name] = max(int(torch.unique(row).numel()) for row in per_channel)
    return levels
