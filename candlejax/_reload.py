"""Refusing to reload the modules that define candlejax's core classes.

Re-running such a module (``importlib.reload``, IPython's ``%autoreload``) makes new ``Tensor`` /
``Var`` / ``Module`` / ``DType`` / ``QTensor`` classes: the objects made before are no longer instances of them,
and candlejax's ``isinstance`` checks and JAX's pytree registry tell them apart. JAX does not support
reloading either, so these modules raise :class:`candlejax.errors.ModuleReload` at the top of a
re-run, before anything is redefined, and stay as they were.
"""

from __future__ import annotations

from candlejax import errors

_LOADED: set[str] = set()  # modules that ran to their end once: a second run is a reload


def refuse(name: str) -> None:
    """Raise ``ModuleReload`` when the module ``name`` has already been loaded (call it first thing)."""
    if name in _LOADED:
        raise errors.ModuleReload(
            f"{name} cannot be reloaded (importlib.reload / %autoreload): its classes would be redefined and"
            " the Tensors, Vars and Modules made before would no longer be instances of them; the module is"
            " left as it was. Restart the kernel (the Python process) to load changed candlejax code;"
            f" `%aimport -{name}` keeps %autoreload from trying again"
        )


def loaded(name: str) -> None:
    """Mark the module ``name`` as loaded (call it last: a first import that failed may be retried)."""
    _LOADED.add(name)
