"""Parameter initialisation, Candle's ``candle_nn::init``.

requires: jax.random, candlejax.nn.module (Var)
provides: ``Init`` (``Init.Const``, ``Init.Randn``, ``Init.Uniform``, ``Init.Kaiming``), ``Const``,
``Randn``, ``Uniform``, ``Kaiming``, ``FanInOut``, ``NormalOrUniform``, ``NonLinearity``, ``ZERO``,
``ONE``, ``DEFAULT_KAIMING_UNIFORM``, ``DEFAULT_KAIMING_NORMAL``.

Every init is a frozen dataclass with ``sample(shape, dtype, device, key) -> jax.Array`` and
Candle's ``var(shape, dtype, device, key=None) -> Var``. Random inits need a key: a jax key (works
under ``jit``) or a ``numpy.random.Generator`` (sampled on the host, as ``VarMap`` does, so that
building a model compiles nothing); without one, ``var`` draws from the device's seeded
generator (eager only).
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax import random as _random
from candlejax.device import Device
from candlejax.dtype import DType, check_width, to_dtype
from candlejax.nn.module import Var
from candlejax.shape import as_shape
from candlejax.tensor._core import float_arg

__all__ = [
    "DEFAULT_KAIMING_NORMAL",
    "DEFAULT_KAIMING_UNIFORM",
    "ONE",
    "ZERO",
    "Const",
    "FanInOut",
    "Init",
    "Kaiming",
    "NonLinearity",
    "NormalOrUniform",
    "Randn",
    "Uniform",
    "check_init",
]


class FanInOut(enum.Enum):
    """Which fan Kaiming scales by. ``fan_in = dims[1] * prod(dims[2:])``, ``fan_out = dims[0] * prod(dims[2:])``."""

    FanIn = "fan_in"
    FanOut = "fan_out"

    def for_shape(self, shape: Any) -> int:
        """Candle's ``FanInOut::for_shape``: the fan-in or fan-out of a weight of this shape (dims 2.. as the receptive
        field)."""
        dims = as_shape(shape)
        rf = math.prod(dims[2:])
        if self is FanInOut.FanIn:
            return 1 if len(dims) < 2 else dims[1] * rf
        return 1 if not dims else dims[0] * rf


class NormalOrUniform(enum.Enum):
    """Candle's ``candle_nn::init::NormalOrUniform``: the distribution Kaiming init draws from."""
    Normal = "normal"
    Uniform = "uniform"


@dataclass(frozen=True)
class NonLinearity:
    """The gain for Kaiming init: ``NonLinearity.ReLU`` (√2), ``Linear`` (1), ``Sigmoid`` (1),
    ``Tanh`` (5/3), ``SELU`` (0.75), ``NonLinearity.ExplicitGain(g)``."""

    kind: str
    explicit: float = 0.0
    # the unit variants, set below the class; declared here for type checkers (not dataclass fields)
    ReLU: ClassVar[NonLinearity]
    Linear: ClassVar[NonLinearity]
    Sigmoid: ClassVar[NonLinearity]
    Tanh: ClassVar[NonLinearity]
    SELU: ClassVar[NonLinearity]

    def gain(self) -> float:
        """Candle's ``NonLinearity::gain``: the recommended init gain (PyTorch's ``nn.init.calculate_gain``)."""
        return {
            "relu": math.sqrt(2.0),
            "linear": 1.0,
            "sigmoid": 1.0,
            "tanh": 5.0 / 3.0,
            "selu": 0.75,
        }.get(self.kind, self.explicit)

    @staticmethod
    def ExplicitGain(g: float) -> NonLinearity:  # noqa: N802 - Candle's variant name
        """Candle's ``NonLinearity::ExplicitGain(g)``: a nonlinearity whose gain is ``g``."""
        return NonLinearity("explicit", float(g))


NonLinearity.ReLU = NonLinearity("relu")
NonLinearity.Linear = NonLinearity("linear")
NonLinearity.Sigmoid = NonLinearity("sigmoid")
NonLinearity.Tanh = NonLinearity("tanh")
NonLinearity.SELU = NonLinearity("selu")


def _float_dtype_for_sampling(dt: DType) -> Any:
    return jnp.float64 if dt is DType.F64 else jnp.float32


def _check_float(dt: DType, op: str, init: str) -> None:
    """Candle's ``rand_uniform``/``rand_normal`` raise ``UnsupportedDTypeForOp`` for integer dtypes (a cast
    of the float samples would give all zeros)."""
    if not dt.is_float():
        raise errors.UnsupportedDTypeForOp(
            dt, op, f"{init} draws floats: give the Var a float dtype, or use Init.Const(v) with an integer v"
        )


def _uniform_bounds(lo: Any, up: Any) -> tuple[float, float]:
    """``(lo, up)`` as finite floats with ``lo <= up``: Candle's ``rand_uniform`` fails otherwise (rand's
    ``Uniform::new``), as ``Tensor.rand`` does here."""
    lo, up = float_arg(lo, "Init.Uniform", "lo"), float_arg(up, "Init.Uniform", "up")
    if lo > up:
        raise errors.Msg(f"Init.Uniform: lo must not exceed up, got lo={lo}, up={up}")
    return lo, up


def _normal_params(mean: Any, stdev: Any) -> tuple[float, float]:
    """``(mean, stdev)`` as finite floats with ``stdev >= 0``: Candle's ``rand_normal`` fails otherwise
    (rand_distr's ``Normal::new``), as ``Tensor.randn`` does here."""
    mean, stdev = float_arg(mean, "Init.Randn", "mean"), float_arg(stdev, "Init.Randn", "stdev")
    if stdev < 0:
        raise errors.Msg(f"Init.Randn: stdev must be non-negative, got {stdev}")
    return mean, stdev


def check_init(init: Any, op: str = "get_with_hints") -> None:
    """Raise ``InvalidArgument`` unless ``init`` is an init (``Init.Const(v)``, ``Init.Randn(mean, stdev)``,
    ``Init.Uniform(lo, up)``, ``Init.Kaiming(...)``, any object with ``sample``) or ``None`` (``Const(0)``).
    Candle's ``Init`` is an enum, so a bare number or name is not one."""
    if init is None or callable(getattr(init, "sample", None)):
        return
    if isinstance(init, (int, float, np.number)) and not isinstance(init, bool):
        hint = f"for a constant, pass Init.Const({float(init)!r})"
    elif isinstance(init, str):
        hint = {"randn": "Init.Randn(mean, stdev)", "normal": "Init.Randn(mean, stdev)",
                "uniform": "Init.Uniform(lo, up)", "kaiming": "DEFAULT_KAIMING_NORMAL or Init.Kaiming(...)",
                "zeros": "Init.Const(0.0) (ZERO)", "ones": "Init.Const(1.0) (ONE)"}.get(init.lower(), "")  # fmt: skip
        hint = f"pass {hint}" if hint else ""
    else:
        hint = ""
    raise errors.InvalidArgument(
        f"{op}: init must be an Init (Init.Const(v), Init.Randn(mean, stdev), Init.Uniform(lo, up),"
        f" Init.Kaiming(...)), got {init!r} ({type(init).__name__})" + (f"; {hint}" if hint else "")
    )


def _host(a: np.ndarray, dt: DType, device: Any) -> jax.Array:
    """Place a host-sampled array (no XLA compile per shape: model construction stays fast)."""
    return jax.device_put(a.astype(dt.np), Device.coerce(device).jax_device)


class _InitBase:
    def sample(self, shape: Any, dtype: Any, device: Any, key: Any) -> jax.Array:  # pragma: no cover
        raise NotImplementedError

    def var(self, shape: Any, dtype: Any = DType.F32, device: Any = None, *, key: Any = None, name: str = "") -> Any:
        """``init.var(shape, dtype, &dev)``: a new Var drawn from this init."""
        dev = Device.coerce(device)
        if key is None and not isinstance(self, Const):
            key = _random.next_key(dev, "init.var")
        return Var._make(self.sample(shape, dtype, dev, key), name)

    def _place(self, a: jax.Array, dtype: Any, device: Any) -> jax.Array:
        dt = check_width(to_dtype(dtype))
        a = a.astype(dt.np)
        if device is not None and not isinstance(a, jax.core.Tracer):
            a = jax.device_put(a, Device.coerce(device).jax_device)
        return a


@dataclass(frozen=True)
class Const(_InitBase):
    """Every element ``value`` (``Init::Const``)."""

    value: float = 0.0

    def sample(self, shape: Any, dtype: Any, device: Any, key: Any = None) -> jax.Array:
        """Candle's ``Init::Const``: an array of ``shape`` filled with the constant, in ``dtype`` on ``device``."""
        dt = check_width(to_dtype(dtype))
        if isinstance(self.value, (bool, np.bool_)) or not isinstance(self.value, numbers.Real):  # "1" read as 1.0
            raise errors.ArgumentType(
                f"Init.Const: value must be a number, got {self.value!r} ({type(self.value).__name__})"
            )
        if dt.is_int():  # a cast would truncate 0.5 to 0 and wrap -1 to 4294967295 (U32)
            info, v = np.iinfo(dt.np), self.value
            if not (math.isfinite(v) and v == int(v) and info.min <= v <= info.max):
                raise errors.InvalidArgument(
                    f"Init.Const({v!r}) into a {dt.name} Var: the value must be an integer in [{info.min}, {info.max}]"
                )
        return _host(np.full(as_shape(shape), self.value), dt, device)


@dataclass(frozen=True)
class Randn(_InitBase):
    """Normal ``N(mean, stdev²)`` (``Init::Randn``)."""

    mean: float = 0.0
    stdev: float = 1.0

    def sample(self, shape: Any, dtype: Any, device: Any, key: Any) -> jax.Array:
        """Candle's ``Init::Randn { mean, stdev }``: draw ``shape`` from a normal distribution."""
        dt = check_width(to_dtype(dtype))
        _check_float(dt, "rand_normal", "Init.Randn")
        mean, stdev = _normal_params(self.mean, self.stdev)
        if isinstance(key, np.random.Generator):
            return _host(key.standard_normal(as_shape(shape)) * stdev + mean, dt, device)
        a = jax.random.normal(_random.as_key(key), as_shape(shape), _float_dtype_for_sampling(dt))
        return self._place(a * stdev + mean, dt, device)


@dataclass(frozen=True)
class Uniform(_InitBase):
    """Uniform on ``[lo, up)`` (``Init::Uniform``)."""

    lo: float = 0.0
    up: float = 1.0

    def sample(self, shape: Any, dtype: Any, device: Any, key: Any) -> jax.Array:
        """Candle's ``Init::Uniform { lo, up }``: draw ``shape`` uniformly from ``[lo, up)``."""
        dt = check_width(to_dtype(dtype))
        _check_float(dt, "rand_uniform", "Init.Uniform")
        lo, up = _uniform_bounds(self.lo, self.up)
        if isinstance(key, np.random.Generator):
            return _host(key.uniform(lo, up, as_shape(shape)), dt, device)
        a = jax.random.uniform(
            _random.as_key(key), as_shape(shape), _float_dtype_for_sampling(dt), minval=lo, maxval=up
        )
        return self._place(a, dt, device)


@dataclass(frozen=True)
class Kaiming(_InitBase):
    """Kaiming/He init: std = gain/√fan; the uniform variant draws from ±√3·std."""

    dist: NormalOrUniform = NormalOrUniform.Normal
    fan: FanInOut = FanInOut.FanIn
    non_linearity: NonLinearity = NonLinearity("relu")

    def _check(self) -> None:
        """Candle's fields are typed enums: a string such as ``"normal"`` would silently pick the uniform
        branch."""
        for what, v, cls in (("dist", self.dist, NormalOrUniform), ("fan", self.fan, FanInOut),
                             ("non_linearity", self.non_linearity, NonLinearity)):  # fmt: skip
            if not isinstance(v, cls):
                raise errors.ArgumentType(
                    f"Init.Kaiming: {what} must be a {cls.__name__}, got {v!r} ({type(v).__name__})"
                )

    def std(self, shape: Any) -> float:
        """``gain / sqrt(fan)``; ``inf`` for a zero fan (an empty tensor), as Candle's f64 division."""
        self._check()
        fan = self.fan.for_shape(shape)
        return self.non_linearity.gain() / math.sqrt(fan) if fan else math.inf

    def sample(self, shape: Any, dtype: Any, device: Any, key: Any) -> jax.Array:
        """Candle's ``Init::Kaiming``: draw ``shape`` from the Kaiming normal or uniform for the layer's fan and
        gain."""
        dt = check_width(to_dtype(dtype))
        self._check()
        _check_float(dt, "rand_normal" if self.dist is NormalOrUniform.Normal else "rand_uniform", "Init.Kaiming")
        if math.prod(as_shape(shape)) == 0:  # a zero fan: nothing to draw (Candle returns the empty tensor)
            return _host(np.zeros(as_shape(shape)), dt, device)
        std = self.std(shape)
        if self.dist is NormalOrUniform.Normal:
            return Randn(0.0, std).sample(shape, dtype, device, key)
        bound = math.sqrt(3.0) * std
        return Uniform(-bound, bound).sample(shape, dtype, device, key)


InitT = Const | Randn | Uniform | Kaiming


class Init:
    """Candle's ``Init`` enum as a namespace: ``Init.Const(0.0)``, ``Init.Randn(mean, stdev)``,
    ``Init.Uniform(lo, up)``, ``Init.Kaiming(dist, fan, non_linearity)``; default ``Const(0)``."""

    Const = Const
    Randn = Randn
    Uniform = Uniform
    Kaiming = Kaiming

    @staticmethod
    def default() -> Const:
        """Candle's ``Init::default()``: ``Init::Const(0.)``."""
        return Const(0.0)


ZERO = Const(0.0)
ONE = Const(1.0)
DEFAULT_KAIMING_UNIFORM = Kaiming(NormalOrUniform.Uniform, FanInOut.FanIn, NonLinearity.ReLU)
DEFAULT_KAIMING_NORMAL = Kaiming(NormalOrUniform.Normal, FanInOut.FanIn, NonLinearity.ReLU)
