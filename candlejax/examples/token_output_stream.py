"""``candle_examples::token_output_stream``: streaming decoded text one token at a time.

requires: candlejax.generation
provides: ``TokenOutputStream`` (``TokenOutputStream(tokenizer)`` or ``.new(tokenizer)``; ``next_token``,
``decode_rest``, ``decode_all``, ``get_token``, ``tokenizer()``, ``into_inner``, ``clear``)
"""

from __future__ import annotations

from candlejax.generation import TokenOutputStream

__all__ = ["TokenOutputStream"]
