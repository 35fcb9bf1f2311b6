"""``Sequential`` / ``seq``, ``Func`` / ``func``, ``FuncT`` / ``func_t``.

requires: candlejax.nn.module
provides: ``Sequential``, ``seq``, ``Func``, ``func``, ``FuncT``, ``func_t``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from candlejax import errors
from candlejax._discarded import caller_discards_result
from candlejax.nn.module import Module, ModuleT

__all__ = ["Func", "FuncT", "Sequential", "SequentialStatement", "func", "func_t", "seq"]


class SequentialStatement(errors.InPlaceStatement):
    """``s.add(layer)`` / ``s.add_fn(f)`` written as a statement: ``add`` returns the longer
    Sequential and leaves ``s`` as it is (Candle's consumes ``s``), so the statement adds nothing."""

    def __init__(self, call: str):
        self.call = call
        errors.Error.__init__(
            self,
            f"{call} returns a new Sequential with the layer added and leaves this one unchanged (Candle's"
            f" builder consumes it): rebind the result, `s = s.{call.rsplit('.', 1)[1]}(...)`, or chain"
            " `seq().add(a).add(b)`",
        )


class Func(Module):
    """A Module from a function ``f(xs) -> Tensor`` (Candle's ``func(|xs| ...)``); ``f`` is static."""

    def __init__(self, f: Callable[[Any], Any]):
        self.f = f

    @staticmethod
    def new(f: Callable[[Any], Any]) -> Func:
        """Candle's ``Func::new(f)``."""
        return Func(f)

    def forward(self, xs: Any) -> Any:
        """``f(xs)``."""
        return self.f(xs)

    def extra_repr(self) -> str:
        """The wrapped function's name, for ``repr``."""
        return getattr(self.f, "__name__", repr(self.f))


class FuncT(ModuleT):
    """A ModuleT from ``f(xs, train) -> Tensor`` (Candle's ``func_t``)."""

    def __init__(self, f: Callable[[Any, bool], Any]):
        self.f = f

    @staticmethod
    def new(f: Callable[[Any, bool], Any]) -> FuncT:
        """Candle's ``FuncT::new(f)``."""
        return FuncT(f)

    def forward_t(self, xs: Any, train: bool) -> Any:
        """``f(xs, train)``."""
        return self.f(xs, train)

    def extra_repr(self) -> str:
        """The wrapped function's name, for ``repr``."""
        return getattr(self.f, "__name__", repr(self.f))


def func(f: Callable[[Any], Any]) -> Func:
    """Candle's ``candle_nn::func``: a module whose forward is ``f(xs)``."""
    return Func(f)


def func_t(f: Callable[[Any, bool], Any]) -> FuncT:
    """Candle's ``candle_nn::func_t``: a ``ModuleT`` whose ``forward_t`` is ``f(xs, train)``."""
    return FuncT(f)


class Sequential(Module):
    """Layers applied in order (Candle's ``Sequential``; PyTorch's ``nn.Sequential``).

    ``seq().add(linear(...)).add_fn(lambda x: x.relu()).add(linear(...))``. ``add`` returns a new
    Sequential (chaining works as in Candle's builder). Layers may be Modules or plain callables.
    """

    def __init__(self, layers: list[Any] | None = None):
        self.layers = list(layers or [])

    def add(self, layer: Any) -> Sequential:
        """A new Sequential with ``layer`` appended; as a bare statement it raises :class:`SequentialStatement`."""
        __tracebackhide__ = True
        if not isinstance(layer, Module):
            if not callable(layer):
                raise errors.ArgumentType(
                    f"Sequential.add: expected a Module or a function of a Tensor, got {type(layer).__name__}"
                )
            layer = Func(layer)
        if caller_discards_result():
            raise SequentialStatement("Sequential.add")
        return Sequential([*self.layers, layer])

    def add_fn(self, f: Callable[[Any], Any]) -> Sequential:
        """A new Sequential with ``func(f)`` appended; as a bare statement it raises :class:`SequentialStatement`."""
        __tracebackhide__ = True
        if caller_discards_result():
            raise SequentialStatement("Sequential.add_fn")
        return Sequential([*self.layers, Func(f)])

    def forward(self, xs: Any) -> Any:
        """Apply the layers in order: the last layer's output."""
        for layer in self.layers:
            xs = layer(xs)
        return xs

    def forward_t(self, xs: Any, train: bool) -> Any:
        """Apply each layer's ``forward_t(xs, train)`` in order: the last layer's output."""
        for layer in self.layers:
            xs = layer.forward_t(xs, train)
        return xs

    def forward_all(self, xs: Any) -> list[Any]:
        """The output of every layer."""
        out = []
        for layer in self.layers:
            xs = layer(xs)
            out.append(xs)
        return out

    def len(self) -> int:
        """Candle's ``Sequential::len``: the number of layers."""
        return len(self.layers)

    def is_empty(self) -> bool:
        """Candle's ``Sequential::is_empty``: whether there are no layers."""
        return not self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Any:
        return self.layers[i]

    def __iter__(self) -> Any:
        return iter(self.layers)


def seq() -> Sequential:
    """An empty Sequential to ``add`` layers to."""
    return Sequential()
