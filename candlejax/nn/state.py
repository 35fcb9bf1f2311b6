"""Host-side state a module keeps between calls (Candle's stateful ``forward`` and its KV cache).

provides: ``HostState``, ``check_continuation``, ``traced``
"""

from __future__ import annotations

from typing import Any

import jax

from candlejax import errors


class HostState:
    """Data a module keeps on the host between calls: the KV cache of a Candle-style stateful
    ``forward(x, index_pos)``, a tokenizer. Stored as a module attribute it is a static field
    that never changes the module's pytree structure (every instance compares equal), so it does not
    invalidate compiled functions. :meth:`of` returns the state of one module object: a copy made by
    a tree transformation (``jax.tree.map``, unflattening) gets a fresh state instead of sharing the
    original's cache. PyTorch keeps such state in module buffers; Candle in ``&mut self`` fields.
    """

    __slots__ = ("cache", "owner", "positions", "value")

    def __init__(self, value: Any = None) -> None:
        self.value = value
        self.cache: Any = None
        self.positions = 0  # how many positions ``cache`` holds, where a model counts them
        self.owner = 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostState)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "HostState()"

    @staticmethod
    def of(module: Any, attr: str = "_forward_state") -> HostState:
        """``module``'s own state in attribute ``attr`` (created, or replaced when it belongs to the
        module this one was copied from)."""
        st = getattr(module, attr, None)
        if not isinstance(st, HostState) or st.owner != id(module):
            st = HostState()
            st.owner = id(module)
            setattr(module, attr, st)
        return st


def check_continuation(op: str, held_positions: int, held_batch: int | None, batch: int, index_pos: int) -> None:
    """A stateful ``forward(x, index_pos)`` continues the sequence its cache holds: ``index_pos`` 0 starts
    over, up to ``held_positions`` continues (or rewinds, overwriting the later slots). A gap would
    attend to slots never written, and another batch needs a new sequence (Candle's concatenating
    caches fail in ``cat``). ``held_batch``: the cache's batch, ``None`` when there is none."""
    if index_pos == 0:
        return
    if index_pos > held_positions:
        raise errors.Msg(f"{op}: the cache holds {held_positions} positions, x starts at index_pos {index_pos};"
                         f" continue at {held_positions} or start over at 0")  # fmt: skip
    if held_batch != batch:
        raise errors.Msg(f"{op}: the cache holds batch {held_batch or 0}, x has batch {batch}; start a new sequence"
                         " at index_pos 0")  # fmt: skip


def traced(tree: Any) -> bool:
    """Whether ``tree`` (an array, a Tensor, a pytree of them) holds a JAX tracer: a value computed
    inside ``jax.jit`` / ``grad`` / ``vmap`` / ``scan``. A stateful ``forward`` keeps no such value on
    the host (it would end the transformation's scope as JAX's UnexpectedTracerError at the next call);
    it drops its cache instead, so the next call starts a new sequence."""
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(tree))
