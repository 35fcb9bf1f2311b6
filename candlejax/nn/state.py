"""Host-side state a module keeps between calls (Candle's stateful ``forward`` and its KV cache).

provides: ``HostState``
"""

from __future__ import annotations

from typing import Any


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
