"""``candlejax.models``: model families with Hugging Face weight names (~ candle-transformers)."""

import importlib
import importlib.util
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    """``candlejax.models.bert`` and the other model modules, imported on first use (PEP 562), as Rust's
    ``candle_transformers::models::bert`` needs no import."""
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
