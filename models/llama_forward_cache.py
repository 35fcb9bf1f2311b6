"""Candle's ``llama::Cache`` for the stateful ``Llama.forward(tokens, index_pos, &mut cache)``: a
host-side holder of the model's preallocated KV cache between calls (the model itself runs the pure
:func:`candlejax.models.llama.step`).

requires: candlejax.nn (HostState, StackedKvCache), candlejax.models.llama_config
provides: ``ForwardCache``, ``forward_state``
"""

from __future__ import annotations

from typing import Any

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import to_dtype
from candlejax.models.llama_config import Config
from candlejax.nn import HostState, StackedKvCache

__all__ = ["ForwardCache", "forward_state"]


class ForwardCache:
    """Candle's ``llama::Cache::new(use_kv_cache, dtype, &config, &device)``: the cache that
    ``model.forward(tokens, index_pos, cache)`` reads and updates in place (Candle's ``&mut Cache``).

    It holds the model's preallocated :class:`Cache` between calls, sized and grown by ``forward``.
    ``use_kv_cache=False`` recomputes every call from scratch, as Candle does: pass the whole
    sequence at ``index_pos`` 0. ``dtype`` is Candle's dtype for the rotary tables; here they are
    computed in f32 inside the step and the keys and values keep the model's dtype.
    """

    __slots__ = ("cache", "config", "device", "dtype", "positions", "use_kv_cache")

    def __init__(self, use_kv_cache: bool, dtype: Any, config: Config, device: Any = None):
        if not isinstance(use_kv_cache, bool):
            raise errors.Msg(f"llama Cache.new(use_kv_cache, dtype, config, device): use_kv_cache must be a bool,"
                             f" got {type(use_kv_cache).__name__}")  # fmt: skip
        if not isinstance(config, Config):
            raise errors.Msg(f"llama Cache.new(use_kv_cache, dtype, config, device): config must be a llama.Config,"
                             f" got {type(config).__name__}")  # fmt: skip
        self.use_kv_cache, self.dtype, self.config = use_kv_cache, to_dtype(dtype), config
        self.device = Device.coerce(device)
        self.cache: Any = None
        self.positions = 0  # how many positions the cache holds

    def reset(self) -> None:
        """Forget the cached positions (the next ``forward`` starts at ``index_pos`` 0)."""
        self.cache = None
        self.positions = 0

    def __repr__(self) -> str:
        n = "empty" if self.cache is None else f"{self.cache.max_seq_len} slots"
        return f"llama.ForwardCache(use_kv_cache={self.use_kv_cache}, {n})"


def forward_state(model: Any, cache: Any, index_pos: int) -> Any:
    """Where ``forward`` keeps its KV cache: the caller's :class:`ForwardCache`, else the model's own."""
    if cache is None:
        return HostState.of(model)  # a copy made by a tree transformation gets a cache of its own
    if isinstance(cache, ForwardCache):
        if cache.config != model.config:
            raise errors.Msg("llama forward: the cache was made for another config (Cache.new(use_kv_cache, dtype,"
                             " config, device) with this model's config)")  # fmt: skip
        if cache.use_kv_cache:
            return cache
        if index_pos != 0:
            raise errors.Msg(f"llama forward: a cache made with use_kv_cache=False recomputes every call; pass the"
                             f" whole sequence at index_pos 0 (got {index_pos})")  # fmt: skip
        return HostState()  # nothing kept between calls
    if isinstance(cache, StackedKvCache):
        raise errors.Msg(
            "llama forward: a preallocated Cache is functional: write `logits, cache = model.step(cache, tokens, pos)`,"
            " or pass Candle's `Cache.new(use_kv_cache, dtype, config, device)`"
        )
    raise errors.Msg(f"llama forward: cache must be a llama.ForwardCache (Cache.new(use_kv_cache, dtype, config,"
                     f" device)), got {type(cache).__name__}")  # fmt: skip
