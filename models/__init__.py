"""``candlejax.models``: model families with Hugging Face weight names (~ candle-transformers)."""

import importlib as _importlib
import importlib.util as _importlib_util
from types import ModuleType as _ModuleType


def __getattr__(name: str) -> _ModuleType:
    """``candlejax.models.bert`` and the other model modules, imported on first use (PEP 562), as Rust's
    ``candle_transformers::models::bert`` needs no import."""
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
