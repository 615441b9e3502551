"""What a method is: a quantisation scheme and a training objective over a backbone.

A method starts from a fresh backbone or from its FP32 parent cell's trained model, prepares it
(quantise and calibrate, or nothing), then trains it with its objective (or not: PTQ). Each step is
a small overridable hook, so a method file states only what differs; PACT+SGT is the PACT scheme
with the SGT objective. Methods never import the runner or the CLI: the runner hands them a
`MethodContext` with everything they may use.

A method file must import without torch: every grid is planned from the methods' declarations
(`name`, `Params`, `quantized`, `float_control`, `starts_from_parent`, `trains`), and a run with
nothing to do must finish without loading the training stack. So import torch, Brevitas,
`bench.quant` and `bench.objectives` inside the hooks that use them (tests/test_cached_run.py
checks this).
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from bench.config import format_validation_error
from bench.errors import ConfigError
from bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bench.objectives import Objective

FP32 = "fp32"
"""The float baseline's method name (methods/fp32.py): every quantised cell's parent and what
every figure is compared against; the one definition the runner, the stages and the report use."""


class MethodParams(BaseModel):
    """Parameters a method declares; grid files override them per method."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Penalty = Callable[["nn.Module"], "torch.Tensor"]


@dataclass
class MethodContext:
    """What the runner gives a method for one cell."""

    w_bits: int
    a_bits: int
    build_backbone: Callable[[], nn.Module]
    load_parent: Callable[[], nn.Module] | None
    fit: Callable[[nn.Module, Objective, Penalty | None], dict[str, Any]]
    calibration_batches: Callable[[], Iterable[torch.Tensor]]
    example_input: torch.Tensor


@dataclass
class MethodResult:
    """The trained (possibly quantised) model and what the method wants stored with the cell."""

    model: nn.Module
    quantized: bool
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base of every method: FP32 cross-entropy from scratch unless a hook says otherwise."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    quantized: ClassVar[bool] = False
    float_control: ClassVar[str | None] = None
    """The float method with the same training budget (epochs, objective) that this method's
    figures are compared with besides FP32, to tell the effect of quantisation apart (for QAT,
    PACT and LSQ the float model in their own graph, `fp32_fold_ft`); None when FP32 itself is
    that control."""
    control_role: ClassVar[str | None] = None
    """What a float control method controls for, in words (the report says it); None for
    methods that are not a control."""

    def parse_params(self, raw: dict[str, Any]) -> MethodParams:
        try:
            return self.Params.model_validate(raw)
        except ValidationError as err:
            raise ConfigError(f"method '{self.name}': {format_validation_error(err)}") from err

    def starts_from_parent(self, params: MethodParams) -> bool:
        """Whether the cell starts from (and so depends on) its FP32 parent's model."""
        return False

    def objective(self, params: MethodParams) -> Objective:
        from bench.objectives import CrossEntropy

        return CrossEntropy()

    def prepare(self, model: nn.Module, ctx: MethodContext, params: MethodParams) -> nn.Module:
        """Quantise and calibrate, or nothing for float methods."""
        return model

    def build_quantized(self, model: nn.Module, w_bits: int, a_bits: int, params: MethodParams,
                        example_input: torch.Tensor) -> nn.Module:
        """The method's (uncalibrated) quantised graph of model; quantised methods override it."""
        raise TypeError(f"method '{self.name}' does not quantise")

    def rebuild(self, model: nn.Module, w_bits: int, a_bits: int, params: MethodParams,
                example_input: torch.Tensor) -> nn.Module:
        """The architecture of this method's trained model from a fresh ``model`` of its
        backbone, for its stored state dict (bench.checkpoints): the backbone itself, the
        quantised graph for quantised methods."""
        if self.quantized:
            return self.build_quantized(model, w_bits, a_bits, params, example_input)
        return model

    def trains(self, params: MethodParams) -> bool:
        return True

    def penalty(self, params: MethodParams) -> Penalty | None:
        return None

    def extras(self, model: nn.Module, params: MethodParams) -> dict[str, Any]:
        return {}

    def run(self, ctx: MethodContext, params: MethodParams) -> MethodResult:
        if self.starts_from_parent(params):
            if ctx.load_parent is None:
                raise RuntimeError(f"method '{self.name}' needs its FP32 parent's model")
            model = ctx.load_parent()
        else:
            model = ctx.build_backbone()
        model = self.prepare(model, ctx, params)
        history = ctx.fit(model, self.objective(params), self.penalty(params)) \
            if self.trains(params) else {}
        extras = {"history": history, **self.extras(model, params)}
        return MethodResult(model, self.quantized, extras)


def _method_modules() -> list[str]:
    """The modules of the `methods` package besides this one: one method each."""
    import methods

    return [f"methods.{m.name}" for m in pkgutil.iter_modules(methods.__path__)
            if m.name != "base"]


METHODS: Registry[Method] = Registry("method", "methods", _method_modules)
"""Methods by name: every module of this package, and plugins' (entry points
`medq_bench.methods`)."""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to grids by its `name`."""
    METHODS.register(cls.name, cls())
    return cls


def get_method(name: str) -> Method:
    return METHODS.get(name)
