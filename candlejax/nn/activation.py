"""``Activation`` (Candle's enum, every variant) and ``PReLU``.

requires: candlejax.nn.ops (activation functions), candlejax.nn.module
provides: ``Activation`` (``Activation.Gelu``, ``Activation.parse("gelu_new")``, ...), ``PReLU``, ``prelu``

Activations are functions in ``candlejax.nn.ops``; ``Activation`` is their Module form, so it can sit
in a ``Sequential`` or a model config. Names parse like Candle's serde (lowercase variant names
plus the Hugging Face aliases ``gelu_new`` and ``gelu_pytorch_tanh``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp

from candlejax import errors
from candlejax._dispatch import op
from candlejax.dtype import to_dtype
from candlejax.nn import ops
from candlejax.nn.init import Const
from candlejax.nn.linear import as_weight, check_param
from candlejax.nn.module import CallableBool, LayerInputShape, Module, as_array, layer_name
from candlejax.tensor._core import float_arg, wrap

__all__ = ["Activation", "PReLU", "prelu"]

# variant -> (ops kind, takes a parameter)
_VARIANTS = {
    "Gelu": "gelu_erf",
    "NewGelu": "gelu",
    "GeluPytorchTanh": "gelu",
    "Relu": "relu",
    "Relu2": "relu2",
    "Relu6": "relu6",
    "Silu": "silu",
    "Sigmoid": "sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "Swiglu": "swiglu",
    "Swish": "swish",
    "Mish": "mish",
    "HardSwish": "hard_swish",
    "QuickGelu": "quick_gelu",
    "Tanh": "tanh",
    "Elu": "elu",
    "LeakyRelu": "leaky_relu",
}

#: the parameter of ``Elu`` (alpha) / ``LeakyRelu`` (negative slope) named without one: PyTorch's defaults
_DEFAULT_PARAMS = {"Elu": 1.0, "LeakyRelu": 0.01}

_ALIASES = {
    "gelu": "Gelu", "gelu_new": "NewGelu", "newgelu": "NewGelu", "gelu_pytorch_tanh": "GeluPytorchTanh",
    "gelupytorchtanh": "GeluPytorchTanh", "gelu_fast": "NewGelu", "relu": "Relu", "relu2": "Relu2",
    "relu6": "Relu6", "silu": "Silu", "sigmoid": "Sigmoid", "hardsigmoid": "HardSigmoid",
    "hard_sigmoid": "HardSigmoid", "swiglu": "Swiglu", "swish": "Swish", "mish": "Mish",
    "hardswish": "HardSwish", "hard_swish": "HardSwish", "quick_gelu": "QuickGelu", "tanh": "Tanh",
    "elu": "Elu", "leakyrelu": "LeakyRelu", "leaky_relu": "LeakyRelu",
}  # fmt: skip


class Activation(Module):
    """Candle's ``Activation`` enum as a Module.

    Variants: ``Gelu`` (exact erf GELU, Candle's default), ``NewGelu`` / ``GeluPytorchTanh`` (tanh
    approximation), ``Relu``, ``Relu2``, ``Relu6``, ``Silu``, ``Sigmoid``, ``HardSigmoid``, ``Swiglu``,
    ``Swish``, ``Mish``, ``HardSwish``, ``QuickGelu``, ``Tanh``, and the parameterised
    ``Activation.Elu(alpha)`` and ``Activation.LeakyRelu(slope)``.

    >>> Activation.parse("gelu_new")
    Activation.NewGelu
    """

    # the unit variants, set below the class (one instance each); declared here for type checkers
    Gelu: ClassVar[Activation]
    NewGelu: ClassVar[Activation]
    GeluPytorchTanh: ClassVar[Activation]
    Relu: ClassVar[Activation]
    Relu2: ClassVar[Activation]
    Relu6: ClassVar[Activation]
    Silu: ClassVar[Activation]
    Sigmoid: ClassVar[Activation]
    HardSigmoid: ClassVar[Activation]
    Swiglu: ClassVar[Activation]
    Swish: ClassVar[Activation]
    Mish: ClassVar[Activation]
    HardSwish: ClassVar[Activation]
    QuickGelu: ClassVar[Activation]
    Tanh: ClassVar[Activation]

    def __init__(self, variant: str = "Gelu", param: float | None = None):
        if not isinstance(variant, str) or variant not in _VARIANTS:
            raise errors.Msg(f"unknown activation {variant!r}, expected one of {sorted(_VARIANTS)}")
        self.variant = variant
        if param is None:  # Elu / LeakyRelu by name: parse's (and PyTorch's) defaults, not 0
            param = _DEFAULT_PARAMS.get(variant)
        self.param = None if param is None else float_arg(param, f"Activation.{variant}", "the parameter")

    @staticmethod
    def default() -> Activation:
        """Candle's ``Activation::default()``: ``Gelu`` (the erf GELU)."""
        return Activation("Gelu")

    @staticmethod
    def Elu(alpha: float) -> Activation:  # noqa: N802 - Candle's variant name
        """Candle's ``Activation::Elu(alpha)``: ELU with the given ``alpha``."""
        return Activation("Elu", alpha)

    @staticmethod
    def LeakyRelu(negative_slope: float) -> Activation:  # noqa: N802
        """Candle's ``Activation::LeakyRelu(negative_slope)``: leaky ReLU with the given slope."""
        return Activation("LeakyRelu", negative_slope)

    @staticmethod
    def parse(s: str | dict) -> Activation:
        """Parse a config value: ``"gelu"``, ``"gelu_new"``, ``"silu"``, ``{"elu": 1.0}``, ``"leaky_relu"``."""
        if isinstance(s, Activation):
            return s
        if isinstance(s, dict) and len(s) == 1:
            (k, v), = s.items()
            return Activation(_ALIASES.get(str(k).lower(), str(k)), v)
        name = str(s).strip()
        if name in _VARIANTS:
            return Activation(name)
        v = _ALIASES.get(name.lower())
        if v is None:
            raise errors.Msg(f"unknown activation {s!r}, expected one of {sorted(_ALIASES)}")
        return Activation(v)

    def forward(self, xs: Any) -> Any:
        """Apply the activation elementwise: ``xs`` in, same shape out (Candle's ``Module for Activation``)."""
        return ops.activation(xs, _VARIANTS[self.variant], self.param or 0.0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Activation) and (self.variant, self.param) == (other.variant, other.param)

    def __hash__(self) -> int:
        return hash((self.variant, self.param))

    def __repr__(self) -> str:
        return f"Activation.{self.variant}" + ("" if self.param is None else f"({self.param})")


for _v in _VARIANTS:
    if _v not in ("Elu", "LeakyRelu"):
        setattr(Activation, _v, Activation(_v))


@op
def _prelu(x: Any, w: Any) -> Any:
    if x.shape == w.shape:  # Candle: a 1-D input with one value per weight, elementwise
        pass
    elif w.ndim == 1 and w.shape[0] != 1 and x.ndim >= 2:
        w = w.reshape((1, -1) + (1,) * (x.ndim - 2))
    else:
        w = w.reshape(())
    return jnp.where(x >= 0, x, w.astype(x.dtype) * x)


class PReLU(Module):
    """``nn.PReLU``: ``max(0, x) + weight * min(0, x)``, weight per channel (dim 1) or scalar. As
    Candle's, a 1-D input with one value per weight, ``(channels,)``, takes the weights elementwise."""

    def __init__(self, weight: Any, is_scalar: bool = False):
        self.weight = as_weight(weight, "PReLU")
        self.is_scalar = CallableBool(is_scalar)
        check_param("PReLU", self.weight, "weight (channels,)", self.weight, rank=1)
        if self.is_scalar:  # Candle's forward reshapes it to a scalar
            check_param("PReLU", self.weight, "weight", self.weight, (1,), rule="is_scalar=True takes one value")

    @staticmethod
    def new(weight: Any, is_scalar: bool) -> PReLU:
        """Candle's ``PReLU::new(weight, is_scalar)``: a PReLU from a slope tensor (one slope or one per channel)."""
        return PReLU(weight, is_scalar)

    def forward(self, xs: Any) -> Any:
        """``max(x, 0) + w * min(x, 0)``, ``w`` broadcast on dim 1 (channels): ``xs`` in, same shape out."""
        x = as_array(xs)
        w = self.weight._a
        if not self.is_scalar and w.size != 1 and x.shape != w.shape and (x.ndim < 2 or x.shape[1] != w.shape[0]):
            raise LayerInputShape(layer_name("PReLU", self.weight), f"[batch, {w.shape[0]}, ...] or [{w.shape[0]}]",
                                  x.shape)  # fmt: skip
        if w.dtype != x.dtype:  # no promotion (Candle's broadcast_mul raises)
            raise errors.DTypeMismatchBinaryOp(to_dtype(x.dtype), to_dtype(w.dtype), layer_name("PReLU", self.weight))
        return wrap(_prelu(x, w))


def prelu(num_channels: int | None, vb: Any) -> PReLU:
    """Param ``weight`` ``(num_channels,)`` (or ``(1,)`` when None), initialised to 0.25."""
    n = 1 if num_channels is None else num_channels
    return PReLU(vb.get_with_hints((n,), "weight", Const(0.25)), num_channels is None)
