"""Optional packages, imported when a feature first needs them.

``import candlejax`` needs only the core dependencies (jax, numpy, safetensors, optax); tokenizers,
chat templates, audio files and progress bars come from the ``models`` extra. :func:`require` imports
one of those and, when it is missing, raises :class:`candlejax.errors.MissingDependency` naming the
package and the ``pip install`` line.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from candlejax import errors

#: The distribution (pip name) and the extra that provides each optional module.
_PROVIDERS: dict[str, tuple[str, str | None]] = {
    "tokenizers": ("tokenizers", "models"),
    "jinja2": ("jinja2", "models"),
    "tqdm": ("tqdm", "models"),
    "soundfile": ("soundfile", "models"),
    "soxr": ("soxr", "models"),
    "gguf": ("gguf", "models"),
    "sklearn": ("scikit-learn", "demo"),
    "PIL": ("pillow", "models"),
    "torch": ("torch", None),
}


def install_hint(module: str) -> str:
    """The ``pip install`` line that provides ``module`` (its extra, else the package itself)."""
    top = module.split(".")[0]
    dist, extra = _PROVIDERS.get(top, (top, None))
    return f'pip install "candlejax[{extra}]"' if extra else f"pip install {dist}"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` (``"load_tokenizer"``, ``"audio.load"``), or raise
    :class:`~candlejax.errors.MissingDependency` naming the package and the ``pip install`` line."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:  # the package is there, one of its own imports failed
            raise
        dist = _PROVIDERS.get(top, (top, None))[0]
        raise errors.MissingDependency(
            f"{feature} needs the {dist} package, which is not installed: {install_hint(module)}"
        ) from e


def available(module: str) -> bool:
    """Whether ``module`` imports (a feature that works without it, a progress bar, checks this)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


__all__ = ["available", "install_hint", "require"]
