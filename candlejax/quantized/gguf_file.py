"""Candle's ``candle::quantized::gguf_file``: the GGUF reader and writer of :mod:`candlejax.io.gguf`.

``from candlejax.quantized.gguf_file import Content`` as in Rust's
``use candle_core::quantized::gguf_file::Content``. Importing this module gives :mod:`candlejax.io.gguf`
itself (the module replaces itself in ``sys.modules``), so ``candlejax.quantized.gguf_file`` is that
one module object however it is reached.
"""

import sys
from typing import TYPE_CHECKING

from candlejax.io import gguf

if TYPE_CHECKING:  # what type checkers see: the names of the module this one becomes
    from candlejax.io.gguf import *  # noqa: F403

sys.modules[__name__] = gguf
