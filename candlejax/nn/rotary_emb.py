"""Candle's ``candle_nn::rotary_emb`` path: ``rope``, ``rope_i``, ``rope_thd`` and their step-by-step
``*_slow`` references, which live in :mod:`candlejax.nn.ops` (as Candle also exports them from
``candle_nn::ops``). The table-building layer is :class:`candlejax.nn.RotaryEmbedding`.

requires: candlejax.nn.ops
provides: ``rope``, ``rope_i``, ``rope_thd``, ``rope_slow``, ``rope_i_slow``, ``rope_thd_slow``
"""

from candlejax.nn.ops import rope, rope_i, rope_i_slow, rope_slow, rope_thd, rope_thd_slow

__all__ = ["rope", "rope_i", "rope_i_slow", "rope_slow", "rope_thd", "rope_thd_slow"]
