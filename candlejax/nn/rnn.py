"""Recurrent layers: ``LSTM`` and ``GRU`` with PyTorch weight names and gate order; ``lax.scan`` over time.

requires: jax.lax.scan, candlejax.nn.module, candlejax.nn.init
provides: ``RNN``, ``Direction``, ``LSTMConfig``, ``LSTMState``, ``LSTM``, ``lstm``, ``GRUConfig``,
``GRUState``, ``GRU``, ``gru``

Candle's ``RNN`` trait is the ``RNN`` base class: ``zero_state(batch)``, ``step(x, state)``,
``states_to_tensor(states)``, and ``seq(x) -> [state]`` / ``seq_init(x, state)``, which by default
loop ``step``. ``LSTM`` and ``GRU`` override ``seq`` / ``seq_init`` with one ``lax.scan`` (one compiled
loop, not T Python steps; the same states); ``scan(x, state)`` returns ``(outputs (B, T, H), final
state)`` directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from candlejax import errors
from candlejax._dispatch import op
from candlejax.dtype import to_dtype
from candlejax.nn.init import DEFAULT_KAIMING_UNIFORM, Const
from candlejax.nn.linear import _as_param, as_weight
from candlejax.nn.module import CallableConfig, LayerInputShape, Module, as_array, layer_name
from candlejax.tensor import Tensor
from candlejax.tensor._core import int_arg, wrap

__all__ = ["GRU", "LSTM", "RNN", "Direction", "GRUConfig", "GRUState", "LSTMConfig", "LSTMState", "gru", "lstm"]


class RNN:
    """Candle's ``RNN`` trait: implement ``zero_state``, ``step`` and ``states_to_tensor``; ``seq`` and
    ``seq_init`` run ``step`` over the time axis of a ``(B, T, features)`` input."""

    __slots__ = ()

    def zero_state(self, batch_dim: int) -> Any:
        """Candle's ``RNN::zero_state``: the initial state for a batch of ``batch_dim``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement zero_state(batch_dim)")

    def step(self, input: Any, state: Any) -> Any:
        """Candle's ``RNN::step``: one time step, ``(B, in)`` and a state in, the next state out."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step(input, state)")

    def states_to_tensor(self, states: list[Any]) -> Any:
        """Candle's ``RNN::states_to_tensor``: the hidden states stacked as ``(B, T, hidden)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement states_to_tensor(states)")

    def seq(self, input: Any) -> list[Any]:
        """The state after every step, from ``zero_state(B)``."""
        return self.seq_init(input, self.zero_state(as_array(input).shape[0]))

    def seq_init(self, input: Any, init_state: Any) -> list[Any]:
        """The state after every step, from ``init_state``."""
        x = as_array(input)
        if x.ndim != 3:
            raise errors.UnexpectedNumberOfDims(3, x.ndim, x.shape, "RNN.seq_init input (batch, seq_len, features)")
        states: list[Any] = []
        state = init_state
        for t in range(x.shape[1]):
            state = self.step(wrap(x[:, t, :]), state)
            states.append(state)
        return states


class Direction(enum.Enum):
    """Only changes the weight names (``..._reverse``), as in Candle; reverse the input yourself."""

    Forward = "forward"
    Backward = "backward"


@dataclass(frozen=True)
class LSTMConfig(CallableConfig):
    w_ih_init: Any = DEFAULT_KAIMING_UNIFORM
    w_hh_init: Any = DEFAULT_KAIMING_UNIFORM
    b_ih_init: Any = field(default_factory=lambda: Const(0.0))
    b_hh_init: Any = field(default_factory=lambda: Const(0.0))
    layer_idx: int = 0
    direction: Direction = Direction.Forward

    @staticmethod
    def default() -> LSTMConfig:
        """Candle's ``LSTMConfig::default()``."""
        return LSTMConfig()

    @staticmethod
    def default_no_bias() -> LSTMConfig:
        """Candle's ``LSTMConfig::default_no_bias()``: no bias tensors."""
        return LSTMConfig(b_ih_init=None, b_hh_init=None)


@dataclass(frozen=True)
class GRUConfig(CallableConfig):
    w_ih_init: Any = DEFAULT_KAIMING_UNIFORM
    w_hh_init: Any = DEFAULT_KAIMING_UNIFORM
    b_ih_init: Any = field(default_factory=lambda: Const(0.0))
    b_hh_init: Any = field(default_factory=lambda: Const(0.0))

    @staticmethod
    def default() -> GRUConfig:
        """Candle's ``GRUConfig::default()``."""
        return GRUConfig()

    @staticmethod
    def default_no_bias() -> GRUConfig:
        """Candle's ``GRUConfig::default_no_bias()``: no bias tensors."""
        return GRUConfig(b_ih_init=None, b_hh_init=None)


class LSTMState(Module):
    """``(h, c)``, each ``(B, H)``."""

    def __init__(self, h: Any, c: Any):
        self.h = h
        self.c = c

    @staticmethod
    def new(h: Any, c: Any) -> LSTMState:
        """``LSTMState::new(h, c)``."""
        return LSTMState(h, c)


class GRUState(Module):
    """``h`` ``(B, H)``."""

    def __init__(self, h: Any):
        self.h = h


def _check_state(state: Any, cls: type, call: str) -> None:
    """Candle's ``step`` / ``seq_init`` take the RNN's own state struct: anything else raises naming it."""
    if not isinstance(state, cls):
        raise errors.InvalidArgument(f"{call}: the state must be a {cls.__name__} (zero_state(batch) makes one),"
                                     f" got {type(state).__name__}")  # fmt: skip


def _states_h(states: Any, cls: type, call: str) -> list[Any]:
    """The ``h`` of every state of a list (Candle's ``&[State]``), each checked to be a ``cls``."""
    if not isinstance(states, (list, tuple)):
        raise errors.InvalidArgument(f"{call}: the states must be a list of {cls.__name__} (what seq returns),"
                                     f" got {type(states).__name__}")  # fmt: skip
    for s in states:
        _check_state(s, cls, call)
    return [wrap(as_array(s.h)) for s in states]


def _mm(x: Any, w: Any, b: Any) -> Any:
    y = x @ w.T
    return y if b is None else y + b


def _lstm_cell(gates: Any, c: Any) -> tuple[Any, Any]:
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


@op
def _lstm_step(x: Any, h: Any, c: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    return _lstm_cell(_mm(x, w_ih, b_ih) + _mm(h, w_hh, b_hh), c)


@op
def _lstm_scan(x: Any, h: Any, c: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    xi = jnp.swapaxes(_mm(x, w_ih, b_ih), 0, 1)  # (T, B, 4H)

    def body(carry: Any, xt: Any) -> Any:
        h, c = carry
        h, c = _lstm_cell(xt + _mm(h, w_hh, b_hh), c)
        return (h, c), (h, c)

    _, (hs, cs) = lax.scan(body, (h, c), xi)
    return jnp.swapaxes(hs, 0, 1), jnp.swapaxes(cs, 0, 1)


def _gru_cell(xi: Any, hh: Any, h: Any) -> Any:
    xr, xz, xn = jnp.split(xi, 3, axis=-1)
    hr, hz, hn = jnp.split(hh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


@op
def _gru_step(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    return _gru_cell(_mm(x, w_ih, b_ih), _mm(h, w_hh, b_hh), h)


@op
def _gru_scan(x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    xi = jnp.swapaxes(_mm(x, w_ih, b_ih), 0, 1)

    def body(h: Any, xt: Any) -> Any:
        h = _gru_cell(xt, _mm(h, w_hh, b_hh), h)
        return h, h

    _, hs = lax.scan(body, h, xi)
    return jnp.swapaxes(hs, 0, 1)


def _opt(t: Any) -> Any:
    return None if t is None else t._a


class _RNNBase(Module, RNN):
    _gates = 4
    _kind = "LSTM"

    def __init__(self, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, hidden_dim: int | None = None,
                 config: Any = None):  # fmt: skip
        if config is None:
            cfg_type = LSTMConfig if self._gates == 4 else GRUConfig
            config = cfg_type.default() if b_ih is not None or b_hh is not None else cfg_type.default_no_bias()
        self._config = config
        self.w_ih = as_weight(w_ih, self._kind, "w_ih")
        self.w_hh = as_weight(w_hh, self._kind, "w_hh")
        self.b_ih = _as_param(b_ih)
        self.b_hh = _as_param(b_hh)
        self.hidden_dim = int(hidden_dim if hidden_dim is not None else self.w_hh.shape[1])
        self.in_dim = int(self.w_ih.shape[1])
        if tuple(self.w_ih.shape) != (self._gates * self.hidden_dim, self.in_dim):
            raise errors.UnexpectedShape(f"{self._kind} w_ih", (self._gates * self.hidden_dim, self.in_dim),
                                         self.w_ih.shape)  # fmt: skip

    def extra_repr(self) -> str:
        return f"in={self.in_dim}, hidden={self.hidden_dim}"

    def config(self) -> Any:
        """The config it was built with (from tensors: the default config, without biases if it has none)."""
        return self._config

    def _weights(self) -> tuple[Any, ...]:
        return self.w_ih._a, self.w_hh._a, _opt(self.b_ih), _opt(self.b_hh)

    def _check(self, x: Any, rank: int, *state: Any) -> None:
        """Input ``(B, in)`` / ``(B, T, in)`` and state arrays ``(B, H)``, all in the weights' dtype
        (as Candle's products, nothing is promoted or broadcast)."""
        if x.ndim != rank or x.shape[-1] != self.in_dim:
            exp = f"[batch, {self.in_dim}]" if rank == 2 else f"[batch, seq_len, {self.in_dim}]"
            raise LayerInputShape(layer_name(self._kind, self.w_ih), exp, x.shape)
        w = self.w_ih._a.dtype
        for name, a in (("input", x), *(("state", s) for s in state)):
            if a.dtype != w:
                raise errors.DTypeMismatchBinaryOp(to_dtype(a.dtype), to_dtype(w), f"{self._kind} {name} @ weight")
        for s in state:
            if tuple(s.shape) != (x.shape[0], self.hidden_dim):
                raise LayerInputShape(f"{layer_name(self._kind, self.w_ih)} state",
                                      f"[batch {x.shape[0]}, {self.hidden_dim}]", s.shape)  # fmt: skip

    def _zeros(self, batch: int) -> Any:
        batch = int_arg(batch, f"{self._kind}.zero_state", "batch_dim")
        if batch < 0:
            raise errors.InvalidArgument(f"{self._kind}.zero_state: batch_dim must be >= 0, got {batch}")
        return jnp.zeros((batch, self.hidden_dim), self.w_ih._a.dtype)


class LSTM(_RNNBase):
    """``nn.LSTM`` (one layer, batch_first): gates ``i, f, g, o``; weights ``(4H, in)`` / ``(4H, H)``."""

    _gates, _kind = 4, "LSTM"

    @staticmethod
    def new(in_dim: int, hidden_dim: int, config: LSTMConfig, vb: Any) -> LSTM:
        """``LSTM::new(in_dim, hidden_dim, config, vb)``: the same as :func:`lstm`."""
        return lstm(in_dim, hidden_dim, config, vb)

    def zero_state(self, batch_dim: int) -> LSTMState:
        """Candle's ``RNN::zero_state`` for ``LSTM``: zero ``h`` and ``c`` ``(batch_dim, hidden)``."""
        z = self._zeros(batch_dim)
        return LSTMState(wrap(z), wrap(z))

    def step(self, input: Any, state: LSTMState) -> LSTMState:
        """One time step: input ``(B, in)``."""
        _check_state(state, LSTMState, "LSTM.step")
        x, h, c = as_array(input), as_array(state.h), as_array(state.c)
        self._check(x, 2, h, c)
        h, c = _lstm_step(x, h, c, *self._weights())
        return LSTMState(wrap(h), wrap(c))

    def scan(self, input: Any, state: LSTMState | None = None) -> tuple[Any, LSTMState]:
        """Run over ``(B, T, in)``: return ``(h for every step (B, T, H), final state)``."""
        x = as_array(input)
        st = self.zero_state(x.shape[0] if x.ndim == 3 else 0) if state is None else state
        self._check(x, 3, as_array(st.h), as_array(st.c))
        hs, cs = _lstm_scan(x, as_array(st.h), as_array(st.c), *self._weights())
        if x.shape[1] == 0:  # no step: the initial state
            return wrap(hs), LSTMState(wrap(as_array(st.h)), wrap(as_array(st.c)))
        return wrap(hs), LSTMState(wrap(hs[:, -1]), wrap(cs[:, -1]))

    def seq_init(self, input: Any, init_state: LSTMState) -> list[LSTMState]:
        """Candle's ``RNN::seq_init``: the state after each step of ``(B, T, in)``, from ``init_state``."""
        _check_state(init_state, LSTMState, "LSTM.seq_init")
        x = as_array(input)
        self._check(x, 3, as_array(init_state.h), as_array(init_state.c))
        hs, cs = _lstm_scan(x, as_array(init_state.h), as_array(init_state.c), *self._weights())
        return [LSTMState(wrap(hs[:, t]), wrap(cs[:, t])) for t in range(x.shape[1])]

    def seq(self, input: Any) -> list[LSTMState]:
        """Candle's ``seq``: the state after every step (one scan, sliced per step)."""
        x = as_array(input)
        return self.seq_init(x, self.zero_state(x.shape[0]))

    def states_to_tensor(self, states: list[LSTMState]) -> Any:
        """Stack the ``h`` of every state: ``(B, T, H)``."""
        return Tensor.stack(_states_h(states, LSTMState, "LSTM.states_to_tensor"), 1)

    def forward(self, input: Any) -> Any:
        """``(B, T, in) -> (B, T, H)`` from a zero state."""
        return self.scan(input)[0]


def _rnn_names(cfg: Any) -> tuple[str, str, str, str]:
    idx = getattr(cfg, "layer_idx", 0)
    rev = "_reverse" if getattr(cfg, "direction", Direction.Forward) is Direction.Backward else ""
    return tuple(f"{n}_l{idx}{rev}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))  # type: ignore[return-value]


def _rnn_config(gates: int, cfg: Any) -> Any:
    """``None`` is Candle's ``Default::default()`` config (as for the conv factories); anything but the
    layer's config struct raises naming it."""
    cls = LSTMConfig if gates == 4 else GRUConfig
    if cfg is None:
        return cls.default()
    if not isinstance(cfg, cls):
        article = "an" if cls is LSTMConfig else "a"
        raise errors.ArgumentType(f"{cls.__name__[:-6].lower()}: config must be {article} {cls.__name__} (or None for"
                                  f" the default), got {type(cfg).__name__}")  # fmt: skip
    return cfg


def _rnn_params(gates: int, in_dim: int, hidden: int, cfg: Any, vb: Any) -> tuple[Any, Any, Any, Any]:
    if int(hidden) < 1 or int(in_dim) < 1:  # PyTorch: "hidden_size must be greater than zero"
        raise errors.Msg(f"{ {3: 'GRU', 4: 'LSTM'}.get(gates, 'RNN')}: hidden_dim ({hidden}) and in_dim ({in_dim})"
                         " must be >= 1")  # fmt: skip
    n_wih, n_whh, n_bih, n_bhh = _rnn_names(cfg)
    w_ih = vb.get_with_hints((gates * hidden, in_dim), n_wih, cfg.w_ih_init)
    w_hh = vb.get_with_hints((gates * hidden, hidden), n_whh, cfg.w_hh_init)
    b_ih = None if cfg.b_ih_init is None else vb.get_with_hints((gates * hidden,), n_bih, cfg.b_ih_init)
    b_hh = None if cfg.b_hh_init is None else vb.get_with_hints((gates * hidden,), n_bhh, cfg.b_hh_init)
    return w_ih, w_hh, b_ih, b_hh


def lstm(in_dim: int, hidden_dim: int, config: LSTMConfig | None, vb: Any) -> LSTM:
    """Params ``weight_ih_l{idx}``, ``weight_hh_l{idx}``, ``bias_ih_l{idx}``, ``bias_hh_l{idx}`` (PyTorch names);
    ``config`` ``None`` is ``LSTMConfig.default()``."""
    config = _rnn_config(4, config)
    return LSTM(*_rnn_params(4, in_dim, hidden_dim, config, vb), hidden_dim, config)


class GRU(_RNNBase):
    """``nn.GRU`` (one layer, batch_first): gates ``r, z, n``; weights ``(3H, in)`` / ``(3H, H)``."""

    _gates, _kind = 3, "GRU"

    @staticmethod
    def new(in_dim: int, hidden_dim: int, config: GRUConfig, vb: Any) -> GRU:
        """``GRU::new(in_dim, hidden_dim, config, vb)``: the same as :func:`gru`."""
        return gru(in_dim, hidden_dim, config, vb)

    def zero_state(self, batch_dim: int) -> GRUState:
        """Candle's ``RNN::zero_state`` for ``GRU``: a zero hidden state ``(batch_dim, hidden)``."""
        return GRUState(wrap(self._zeros(batch_dim)))

    def step(self, input: Any, state: GRUState) -> GRUState:
        """Candle's ``RNN::step`` for ``GRU``: one time step, ``(B, in)`` and a state in, the next state out."""
        _check_state(state, GRUState, "GRU.step")
        x, h = as_array(input), as_array(state.h)
        self._check(x, 2, h)
        return GRUState(wrap(_gru_step(x, h, *self._weights())))

    def scan(self, input: Any, state: GRUState | None = None) -> tuple[Any, GRUState]:
        """Run the whole sequence ``(B, T, in)`` in one scan: ``(hidden states (B, T, hidden), last state)``."""
        x = as_array(input)
        st = self.zero_state(x.shape[0] if x.ndim == 3 else 0) if state is None else state
        self._check(x, 3, as_array(st.h))
        hs = _gru_scan(x, as_array(st.h), *self._weights())
        if x.shape[1] == 0:  # no step: the initial state
            return wrap(hs), GRUState(wrap(as_array(st.h)))
        return wrap(hs), GRUState(wrap(hs[:, -1]))

    def seq_init(self, input: Any, init_state: GRUState) -> list[GRUState]:
        """Candle's ``RNN::seq_init``: the state after each step of ``(B, T, in)``, from ``init_state``."""
        _check_state(init_state, GRUState, "GRU.seq_init")
        x = as_array(input)
        self._check(x, 3, as_array(init_state.h))
        hs = _gru_scan(x, as_array(init_state.h), *self._weights())
        return [GRUState(wrap(hs[:, t])) for t in range(x.shape[1])]

    def seq(self, input: Any) -> list[GRUState]:
        """Candle's ``RNN::seq``: the state after each step of ``(B, T, in)``, from the zero state."""
        x = as_array(input)
        return self.seq_init(x, self.zero_state(x.shape[0]))

    def states_to_tensor(self, states: list[GRUState]) -> Any:
        """Candle's GRU concatenates on dim 1: ``(B, T·H)`` (LSTM stacks to ``(B, T, H)``)."""
        return Tensor.cat(_states_h(states, GRUState, "GRU.states_to_tensor"), 1)

    def forward(self, input: Any) -> Any:
        """``(B, T, in) -> (B, T, H)`` from a zero state."""
        return self.scan(input)[0]


def gru(in_dim: int, hidden_dim: int, config: GRUConfig | None, vb: Any) -> GRU:
    """Params ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0`` (PyTorch names); ``config``
    ``None`` is ``GRUConfig.default()``."""
    config = _rnn_config(3, config)
    return GRU(*_rnn_params(3, in_dim, hidden_dim, config, vb), hidden_dim, config)
