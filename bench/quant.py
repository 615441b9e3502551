"""Brevitas graph-mode quantisation of plain torch classifiers: build, calibrate, inspect.

``quantize`` turns an FP32 model into a fake-quantised Brevitas graph (input, weights and
activations quantised; logits left in floating point) under one of three schemes
(`bench.quantizers` has their definitions and sources):

- ``stats`` (PTQ, QAT): activation ranges are observed statistics: averaged over the
  calibration batches by ``calibrate``, then a moving average during fine-tuning, frozen in eval
  mode; they never receive a gradient. Weight scales are the per-channel max |w|.
- ``pact``: every ReLU output is quantised unsigned over [0, alpha] with PACT's learned alpha
  (a symmetric [-alpha, alpha] after SiLU/Hardswish); other activations as ``stats``.
- ``lsq``: learned step sizes for every weight and activation quantiser (LSQ).

SiLU quantises its input, its sigmoid gate and its output, and a product of two tensors (a
squeeze-excitation's gate times its feature map) its output (``bench.integer_ops``), so that
ONNX Runtime runs them as QLinearSigmoid and QLinearMul instead of in float.

At a residual join each input keeps its own quantiser and the two are added in floating point
(ONNX Runtime runs it as one integer QLinearAdd, which takes a scale per input), so a ReLU
output that feeds a skip connection keeps its 2^a unsigned levels and its own range.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import brevitas.nn as qnn
import torch
from brevitas.graph.calibrate import (
    bias_correction_mode,
    calibration_mode,
    quantization_status_manager,
)
from brevitas.graph.quantize import COMPUTE_LAYER_MAP, preprocess_for_quantize
from brevitas.graph.quantize import quantize as brevitas_quantize
from brevitas.graph.quantize_impl import ADD_FNS, ADD_METHODS
from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat, Int32Bias
from brevitas.quant_tensor import _unpack_quant_tensor
from torch import nn

from bench.integer_ops import IntegerMul, IntegerSiLU
from bench.quantizers import (
    DEFAULT_RANGE_MOMENTUM,
    MIN_ALPHA,
    RELU6_MAX,
    LSQStep,
    ObservedRangeScaling,
    PACTClip,
    QuantHardswish,
    QuantReLU6,
    abs_percentile,
    lsq_act,
    lsq_weight,
    observed_range_act,
    pact_act,
)

PACT_INIT_ALPHA = 6.0
"""Placeholder alpha at construction; ``quantize`` and ``calibrate`` replace it from data."""
PACT_INIT_PERCENTILE = 99.99
"""Percentile of the FP activations used to initialise alpha."""
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_RELUS = (nn.ReLU, nn.ReLU6)
Scheme = Literal["stats", "pact", "lsq"]
SCHEMES: tuple[str, ...] = get_args(Scheme)


@dataclass(frozen=True)
class QuantSpec:
    """Bit-widths and options of one quantisation configuration.

    ``scheme`` picks how ranges are set (module docstring); ``range_momentum`` is the moving
    average weight of the observed ranges during training (0 freezes them after calibration).
    """

    w_bits: int
    a_bits: int
    per_channel: bool = True
    first_last_bits: int | None = 8
    scheme: Scheme = "stats"
    range_momentum: float = DEFAULT_RANGE_MOMENTUM

    def __post_init__(self) -> None:
        bits = {"w_bits": self.w_bits, "a_bits": self.a_bits}
        if self.first_last_bits is not None:
            bits["first_last_bits"] = self.first_last_bits
        for name, value in bits.items():
            if not isinstance(value, int) or not 2 <= value <= 8:
                raise ValueError(f"{name} must be an int in 2..8, got {value!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if not 0.0 <= self.range_momentum <= 1.0:
            raise ValueError(f"range_momentum must be in [0, 1], got {self.range_momentum!r}")

    def act_quant(self, bits: int, signed: bool) -> Any:
        """The scheme's quantiser for an activation that is not a ReLU output."""
        if self.scheme == "lsq":
            return lsq_act(bits, signed)
        return observed_range_act(bits, signed, self.range_momentum)

    def relu_quant(self, bits: int) -> Any:
        """The scheme's quantiser for a ReLU output (unsigned)."""
        return pact_act(bits, signed=False) if self.scheme == "pact" else \
            self.act_quant(bits, signed=False)

    def relu6_quant(self, bits: int) -> Any:
        """The scheme's quantiser for a ReLU6 output: a ReLU's, its range capped at 6 (a
        learned alpha or step; an observed range of ReLU6 outputs never passes 6)."""
        if self.scheme == "pact":
            return pact_act(bits, signed=False).let(pact_max_alpha=RELU6_MAX)
        if self.scheme == "lsq":
            return lsq_act(bits, signed=False).let(lsq_max_range=RELU6_MAX)
        return self.relu_quant(bits)

    def signed_act_quant(self, bits: int) -> Any:
        """The scheme's quantiser for a signed activation output (PACT: a learned clip)."""
        return pact_act(bits, signed=True) if self.scheme == "pact" else \
            self.act_quant(bits, signed=True)


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


def _weight_quant(spec: QuantSpec, bits: int) -> Any:
    base = Int8WeightPerChannelFloat if spec.per_channel else Int8WeightPerTensorFloat
    base = base.let(bit_width=bits)
    return lsq_weight(base) if spec.scheme == "lsq" else base


def _layer_map(spec: QuantSpec) -> dict:
    layer_map = dict(COMPUTE_LAYER_MAP)
    for layer_type in _WEIGHT_LAYERS:
        quant_class, kwargs = layer_map[layer_type]
        layer_map[layer_type] = (
            quant_class, {**kwargs, "weight_quant": _weight_quant(spec, spec.w_bits)})
    if spec.first_last_bits is not None:
        bits = spec.first_last_bits
        # The first layer's input is the graph input, already quantised at ``bits``.
        first = {"weight_quant": _weight_quant(spec, bits), "bias_quant": Int32Bias,
                 "return_quant_tensor": True}
        last = {**first, "input_quant": spec.act_quant(bits, signed=True)}
        layer_map[_FirstConv2d] = (qnn.QuantConv2d, first)
        layer_map[_FirstLinear] = (qnn.QuantLinear, first)
        layer_map[_LastConv2d] = (qnn.QuantConv2d, last)
        layer_map[_LastLinear] = (qnn.QuantLinear, last)
    return layer_map


def _act_map(spec: QuantSpec) -> dict:
    """Activations quantised at their output; the others stay float and are requantised.

    Sigmoid, SiLU and Hardswish also quantise their input (signed, as the scheme sets ranges),
    as Brevitas does before a float activation: the layer before them then ends in a quantiser
    and runs on an integer kernel in ONNX Runtime (a ReLU needs none: it commutes with the
    requantisation, which ONNX Runtime fuses). SiLU quantises its sigmoid gate too
    (``bench.integer_ops.IntegerSiLU``); under PACT the outputs of SiLU and Hardswish get the
    signed learned clip. (ONNX Runtime has no integer Hardswish: it runs in float between
    quantisers, and the pools after it run integer.)"""
    silu = (IntegerSiLU, {"act_quant": spec.signed_act_quant(spec.a_bits),
                          "input_quant": spec.act_quant(spec.a_bits, signed=True),
                          "gate_quant": spec.act_quant(spec.a_bits, signed=False),
                          "return_quant_tensor": True})
    act_map: dict = {nn.ReLU: (qnn.QuantReLU, {"act_quant": spec.relu_quant(spec.a_bits),
                                                "return_quant_tensor": True}),
                     nn.ReLU6: (QuantReLU6, {"act_quant": spec.relu6_quant(spec.a_bits),
                                             "return_quant_tensor": True}),
                     nn.SiLU: silu,
                     nn.Sigmoid: (qnn.QuantSigmoid, {
                         "act_quant": spec.act_quant(spec.a_bits, signed=False),
                         "input_quant": spec.act_quant(spec.a_bits, signed=True),
                         "return_quant_tensor": True}),
                     nn.Hardswish: (QuantHardswish, {
                         "act_quant": spec.signed_act_quant(spec.a_bits),
                         "input_quant": spec.act_quant(spec.a_bits, signed=True),
                         "return_quant_tensor": True})}
    return act_map


def _identity_map(spec: QuantSpec, bits: int) -> dict:
    return {sign: (qnn.QuantIdentity, {"act_quant": spec.act_quant(bits, signed=sign == "signed"),
                                       "return_quant_tensor": True})
            for sign in ("signed", "unsigned")}


class ResidualAdd(nn.Module):
    """A residual join: the sum of two tensors that keep their own quantisers, in float.

    Brevitas would otherwise force both inputs onto one shared scale, which replaces a PACT
    ReLU's range (and sign) on the skip path; ONNX Runtime's QLinearAdd needs no shared scale.
    """

    def forward(self, x: Any, y: Any) -> torch.Tensor:
        return _unpack_quant_tensor(x) + _unpack_quant_tensor(y)


def _is_tensor_add(node: Any) -> bool:
    is_add = (node.op == "call_function" and node.target in ADD_FNS) or (
        node.op == "call_method" and node.target in ADD_METHODS)
    return is_add and len(node.args) == 2 and not node.kwargs and all(
        isinstance(a, type(node)) for a in node.args)


def _separate_residual_joins(graph_model: nn.Module, spec: QuantSpec, act_map: dict) -> None:
    """Replace each tensor + tensor by a ResidualAdd module; requantise its sum (one signed
    quantiser for all users) unless every user is an activation quantised at its output."""
    graph = graph_model.graph
    for node in list(graph.nodes):
        if not _is_tensor_add(node):
            continue
        name = f"{node.name}_join"
        graph_model.add_module(name, ResidualAdd())
        with graph.inserting_after(node):
            join = graph.call_module(name, args=tuple(node.args))
        node.replace_all_uses_with(join)
        graph.erase_node(node)
        users = list(join.users)
        if users and all(u.op == "call_module" and type(graph_model.get_submodule(u.target))
                         in act_map for u in users):
            continue
        quant_class, kwargs = _identity_map(spec, spec.a_bits)["signed"]
        quant_name = f"{node.name}_output_quant"
        graph_model.add_module(quant_name, quant_class(**kwargs))
        with graph.inserting_after(join):
            quant = graph.call_module(quant_name, args=(join,))
        join.replace_all_uses_with(quant, delete_user_cb=lambda user, q=quant: user is not q)
    graph.lint()
    graph_model.recompile()


def _is_tensor_product(node: Any) -> bool:
    is_mul = (node.op == "call_function" and node.target in (operator.mul, torch.mul)) or (
        node.op == "call_method" and node.target == "mul")
    return is_mul and len(node.args) == 2 and not node.kwargs and all(
        isinstance(a, type(node)) for a in node.args)


def _quantise_products(graph_model: nn.Module, spec: QuantSpec) -> None:
    """Replace each tensor * tensor by an ``IntegerMul`` that quantises the product (signed):
    ONNX Runtime then runs it as QLinearMul (a squeeze-excitation's gate times its input)."""
    graph = graph_model.graph
    for node in list(graph.nodes):
        if not _is_tensor_product(node):
            continue
        name = f"{node.name}_product"
        graph_model.add_module(name, IntegerMul(act_quant=spec.act_quant(spec.a_bits, True),
                                                return_quant_tensor=True))
        with graph.inserting_after(node):
            product = graph.call_module(name, args=tuple(node.args))
        node.replace_all_uses_with(product)
        graph.erase_node(node)
    graph.lint()
    graph_model.recompile()


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


def _set_input_quant_bits(graph_model: nn.Module, spec: QuantSpec, bits: int) -> None:
    """Give ``bits`` to the quantisers on the graph inputs and right before the first layer."""
    targets = set()
    for node in graph_model.graph.nodes:
        if node.op == "placeholder":
            targets.update(user.target for user in node.users if user.op == "call_module")
    first = _module_nodes(graph_model, (QuantWeightBiasInputOutputLayer,))[:1]
    for node in first:
        targets.update(inp.target for inp in node.all_input_nodes if inp.op == "call_module")
    quant_class, kwargs = _identity_map(spec, bits)["signed"]
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


def fold(model: nn.Module) -> nn.Module:
    """The float graph that ``quantize`` quantises: a new torch.fx graph of ``model`` with
    Brevitas' preprocessing (functional calls as modules, shared stateless modules duplicated,
    ``mean`` as average pooling, BatchNorm merged into the preceding layer, stochastic depth
    removed) and ReLU6 left as ReLU6; ``model`` is left untouched. In eval mode."""
    return preprocess_for_quantize(copy.deepcopy(model).eval(), relu6_to_relu=False)


def quantize(model: nn.Module, spec: QuantSpec, example_input: torch.Tensor) -> nn.Module:
    """Return a new fake-quantised Brevitas graph of ``model`` (which is left untouched).

    The float graph is ``fold(model)`` (BatchNorm folded into the preceding layers, ReLU6 kept:
    a quantised ReLU6 clips at 6, so with quantisation disabled the graph computes ``model``'s
    function).  The graph input is quantised (signed),
    weights are signed (narrow range, max-abs scales; LSQ: full range, learned steps), ReLU
    outputs unsigned, other activation functions stay float and are requantised before the next
    layer (PACT: SiLU and Hardswish outputs get a signed learned clip); each residual join adds
    its inputs on their own scales (``ResidualAdd``); the final layer's output (logits) is not
    requantised.  The first and last Conv2d/Linear use ``spec.first_last_bits`` for their
    weights and their input.  Observed ranges are placeholders until ``calibrate``; PACT alphas
    and LSQ steps start from the FP weights and the FP activations on ``example_input``.
    The result lives on the torch device of ``model`` and has its train/eval mode.
    """
    graph_model = fold(model)
    if spec.first_last_bits is not None:
        _mark_edge_layers(graph_model)
    act_map = _act_map(spec)
    _separate_residual_joins(graph_model, spec, act_map)
    _quantise_products(graph_model, spec)
    qmodel = brevitas_quantize(
        graph_model,
        quant_identity_map=_identity_map(spec, spec.a_bits),
        compute_layer_map=_layer_map(spec),
        quant_act_map=act_map,
    )
    if spec.first_last_bits is not None:
        _set_input_quant_bits(qmodel, spec, spec.first_last_bits)
    _drop_logits_quant(qmodel)
    torch_device = _model_torch_device(model)
    example_input = example_input.to(torch_device)
    qmodel.to(torch_device).eval()
    if spec.scheme == "pact" and not _pact_quant_modules(qmodel):
        raise ValueError("PACT needs ReLU, ReLU6, SiLU or Hardswish activations; the model "
                         "has none")
    _init_weight_steps(qmodel)
    with torch.no_grad():
        qmodel(example_input)
    _init_learned_ranges(qmodel, [example_input])
    qmodel.train(model.training)
    return qmodel


def _act_scaling_modules(model: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    """Activation modules (by name) whose output quantiser's scaling is of type ``kind``."""
    return {name: module for name, module in model.named_modules()
            if isinstance(_proxy_scaling(getattr(module, "act_quant", None)), kind)}


def _proxy_scaling(proxy: Any) -> Any:
    """The scaling of an activation quantiser (Brevitas ``ActQuantProxyFromInjector``)."""
    fused = getattr(proxy, "fused_activation_quant_proxy", None)
    return getattr(getattr(fused, "tensor_quant", None), "scaling_impl", None)


def _act_quantisers(model: nn.Module, kind: type[nn.Module]) -> dict[str, nn.Module]:
    """Every activation quantiser (by name) whose scaling is of type ``kind``, wherever it sits:
    a layer's output (``act_quant``) and its input (``input_quant``: the last layer's, a
    Sigmoid's in squeeze-excitation), the graph input and residual requantisers."""
    return {name: module for name, module in model.named_modules()
            if isinstance(_proxy_scaling(module), kind)}


def _scaling(module: nn.Module) -> nn.Module:
    return module.act_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl


def _pact_quant_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Activation modules whose quantiser has a learned clip value (PACT alpha)."""
    return _act_scaling_modules(model, PACTClip)


class _ActStats:
    """Per activation quantiser, the batch mean of a statistic of its FP input (the output of
    its activation function), recorded by forward hooks while batches run through the model."""

    def __init__(self, quantisers: dict[str, nn.Module], stat: Any) -> None:
        self.stat = stat
        self.sums = dict.fromkeys(quantisers, 0.0)
        self.counts = dict.fromkeys(quantisers, 0)
        self.handles = [
            proxy.fused_activation_quant_proxy.activation_impl.register_forward_hook(
                self._hook(name))
            for name, proxy in quantisers.items()
        ]

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self.sums[name] += float(self.stat(output.detach()))
            self.counts[name] += 1

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / n for name, n in self.counts.items() if n > 0}


def _pact_stats(model: nn.Module, percentile: float) -> _ActStats:
    return _ActStats({name: module.act_quant for name, module in
                      _pact_quant_modules(model).items()},
                     lambda x: abs_percentile(x, percentile))


def _lsq_stats(model: nn.Module) -> _ActStats:
    return _ActStats(_act_quantisers(model, LSQStep), lambda x: x.abs().mean())


def _set_alphas(modules: dict[str, nn.Module], alphas: dict[str, float]) -> None:
    with torch.no_grad():
        for name, alpha in alphas.items():
            scaling = _scaling(modules[name])
            scaling.alpha.fill_(max(min(alpha, scaling.max_alpha or alpha), MIN_ALPHA))


def _apply_stats(model: nn.Module, pact: _ActStats, lsq: _ActStats) -> None:
    """PACT alphas = the averaged percentile; LSQ steps = 2 mean|x| / sqrt(Q_P)."""
    _set_alphas(_pact_quant_modules(model), pact.means())
    steps = _act_quantisers(model, LSQStep)
    for name, mean_abs in lsq.means().items():
        _proxy_scaling(steps[name]).init_from(mean_abs)


def _init_learned_ranges(
    model: nn.Module, batches: Iterable[torch.Tensor], percentile: float = PACT_INIT_PERCENTILE
) -> None:
    """Set PACT alphas and every LSQ activation step from the FP activations of ``batches``."""
    pact, lsq = _pact_stats(model, percentile), _lsq_stats(model)
    if not (pact.handles or lsq.handles):
        return
    try:
        with torch.no_grad(), quantization_disabled(model):
            for batch in batches:
                model(batch)
    finally:
        pact.remove()
        lsq.remove()
    _apply_stats(model, pact, lsq)


def _init_weight_steps(model: nn.Module) -> None:
    """LSQ weight steps from the (BN-folded) weights: 2 mean|w| / sqrt(Q_P) per step."""
    for module in model.modules():
        if not isinstance(module, QuantWeightBiasInputOutputLayer):
            continue
        step = getattr(module.weight_quant.tensor_quant, "scaling_impl", None)
        if isinstance(step, LSQStep):
            weight = module.weight.detach()
            dims = tuple(range(1, weight.dim())) if step.step.numel() > 1 else None
            mean_abs = weight.abs().mean(dim=dims, keepdim=True) if dims else weight.abs().mean()
            step.init_from(mean_abs.reshape(step.step.shape))


def _model_torch_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    bias_correction: bool = False,
    clip_percentile: float = PACT_INIT_PERCENTILE,
) -> None:
    """PTQ calibration of a ``quantize``d model on input ``batches`` (image tensors, no labels).

    One pass with activation quantisation off (Brevitas ``calibration_mode``): observed ranges
    become the batch mean of their statistic, PACT alphas the batch-averaged
    ``clip_percentile`` of their FP activations, every LSQ activation step (at a layer's output
or input) 2 mean|x| / sqrt(Q_P) of the FP values it quantises.
    With ``bias_correction`` a second pass over ``batches`` corrects layer biases for the
    quantisation error (so the FP forward of the graph no longer equals the original model).
    """
    if bias_correction and isinstance(batches, Iterator):
        batches = list(batches)
    torch_device = _model_torch_device(model)
    was_training = model.training
    model.eval()
    for scaling in model.modules():
        if isinstance(scaling, ObservedRangeScaling):
            scaling.observations.zero_()
    pact, lsq = _pact_stats(model, clip_percentile), _lsq_stats(model)
    seen = 0
    try:
        with torch.no_grad(), calibration_mode(model):
            for batch in batches:
                model(batch.to(torch_device))
                seen += 1
    finally:
        pact.remove()
        lsq.remove()
    if seen == 0:
        raise ValueError("calibrate needs at least one batch")
    _apply_stats(model, pact, lsq)
    if bias_correction:
        with torch.no_grad(), bias_correction_mode(model):
            for batch in batches:
                model(batch.to(torch_device))
    model.train(was_training)


def clip_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """PACT clip parameters (alpha, the largest representable activation) by module name."""
    return {name: _scaling(module).alpha for name, module in _pact_quant_modules(model).items()}


def clip_values(model: nn.Module) -> dict[str, float]:
    """Current PACT alphas as plain floats (as the quantiser uses them)."""
    return {name: float(_scaling(module).clipped_alpha().detach())
            for name, module in _pact_quant_modules(model).items()}


def clip_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared PACT alphas (zero tensor if the model has none)."""
    params = list(clip_parameters(model).values())
    if not params:
        return torch.zeros((), device=_model_torch_device(model))
    return torch.stack([p.pow(2).sum() for p in params]).sum()


def lsq_steps(model: nn.Module) -> dict[str, nn.Parameter]:
    """LSQ step sizes (weights and activations) by the name of their scaling module."""
    return {name: module.step for name, module in model.named_modules()
            if isinstance(module, LSQStep)}


def observed_ranges(model: nn.Module) -> dict[str, ObservedRangeScaling]:
    """The observed-range scalings (PTQ/QAT activation ranges) by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, ObservedRangeScaling)}


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
