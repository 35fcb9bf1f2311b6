"""Whether a call's value is thrown away by its caller: Candle's in-place APIs written as statements.

Candle writes ``cache.slice_set(&k, 2, pos)?;`` as a statement, mutating ``cache``. candlejax's
tensors are immutable and the same call returns the new tensor, so that statement, ported as it
is, would change nothing. :func:`caller_discards_result` lets such a method raise instead: in
CPython a call whose value is unused is followed by ``POP_TOP``. Other interpreters (or bytecode
this module does not recognise) answer ``False``, so nothing valid is ever refused.
"""

from __future__ import annotations

import dis
import functools
import sys
from types import CodeType

__all__ = ["caller_discards_result"]


def caller_discards_result(depth: int = 2) -> bool:
    """True when the frame ``depth`` levels up (1: the caller of the function calling this) drops the
    value of the call it is making: the next instruction is ``POP_TOP`` (a bare statement)."""
    getframe = getattr(sys, "_getframe", None)
    if getframe is None:
        return False
    try:
        frame = getframe(depth)
    except ValueError:
        return False
    return _pops_after(frame.f_code, frame.f_lasti)


@functools.lru_cache(maxsize=4096)
def _pops_after(code: CodeType, lasti: int) -> bool:
    # ``f_lasti`` is the call instruction or, in CPython 3.11+, the last of its inline caches (which
    # ``dis`` does not list): the value's fate is the first instruction after it
    for ins in dis.get_instructions(code):
        if ins.offset > lasti:
            return ins.opname == "POP_TOP"
    return False
