"""What every model loader checks: the checkpoint's declared architecture and the tensors it read.

>>> check_architecture(config_dict, "llama", {"llama": ("LlamaForCausalLM",)})   # raises on "gemma"
>>> model = Model.load(vb, config)
>>> vb.check_all_used(strict, "llama")                                          # raises on unread tensors

A ``config.json`` names its ``model_type`` and ``architectures``; a loader that does not implement
one would run with some weights ignored or some layer computed differently, so it refuses it
(``strict=False`` warns instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from candlejax import errors

__all__ = ["check_architecture"]


def check_architecture(config: Any, loader: str, supported: Mapping[str, Iterable[str]], strict: bool = True,
                       any_architecture_prefix: str | None = None) -> None:  # fmt: skip
    """Refuse a config whose ``model_type`` is not a key of ``supported`` or whose ``architectures``
    are not among its values (``any_architecture_prefix``: accept every architecture starting with
    it, e.g. ``"Bert"`` for an encoder whose task heads are not loaded). ``config`` is a dict or an
    object with those attributes; absent keys are not checked."""
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type", None)
    archs = get("architectures", None) or []
    problems = []
    if model_type is not None and model_type not in supported:
        problems.append(f"model_type {model_type!r}")
    allowed = {a for v in supported.values() for a in v}
    for a in archs:
        if a not in allowed and not (any_architecture_prefix and str(a).startswith(any_architecture_prefix)):
            problems.append(f"architecture {a!r}")
    if not problems:
        return
    names = ", ".join(f"{t} ({', '.join(v)})" for t, v in supported.items())
    msg = f"{loader}: the checkpoint's {' and '.join(problems)} is not implemented; supported: {names}"
    if strict:
        raise errors.Msg(msg + " (pass strict=False to load anyway)")
    warnings.warn(msg, stacklevel=3)
