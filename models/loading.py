"""What every model loader checks: the checkpoint's declared architecture and the tensors it read;
the files of a checkpoint folder and the tokenizer that goes with it.

>>> check_architecture(config_dict, "llama", {"llama": ("LlamaForCausalLM",)})   # raises on "gemma"
>>> model = Model.load(vb, config)
>>> vb.check_all_used(strict, "llama")                                          # raises on unread tensors

A ``config.json`` names its ``model_type`` and ``architectures``; a loader that does not implement
one would run with some weights ignored or some layer computed differently, so it refuses it
(``strict=False`` warns instead).
"""

from __future__ import annotations

import functools
import glob
import json
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.nn import VarBuilder as FloatVarBuilder
from candlejax.quantized import VarBuilder

__all__ = ["candle_config", "check_architecture", "check_gguf_vb", "check_sizes", "check_vb_first", "checkpoint_dir",
           "config_dict", "generation_eos_token_ids", "gguf_file", "host_array", "is_gguf", "read_config_json",
           "refuse_unknown_config_keys", "safetensors_files", "tokenizer_from"]  # fmt: skip


def host_array(data: Any, what: str) -> Any:
    """``data`` as a numpy array when it is a (nested) list or tuple, else unchanged (a Tensor, a jax or
    numpy array); rows of different lengths raise naming ``what`` (numpy's own ValueError spoke of an
    inhomogeneous shape). As ``torch.tensor(nested_list)`` (Candle: ``Tensor::new``)."""
    if not isinstance(data, (list, tuple)):
        return data
    try:
        return np.asarray(data)
    except ValueError:
        lengths = [len(r) if isinstance(r, (list, tuple)) else None for r in data]
        raise errors.Msg(
            f"{what}: rows of different lengths {[n for n in lengths if n is not None]}; pad them to one length"
            " (with an attention_mask where the model takes one)"
        ) from None


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
    errors.warn_at_caller(msg)


def refuse_unknown_config_keys(cls: Any, label: str) -> Any:
    """Make ``cls(**kwargs)`` (a config dataclass) raise a candlejax error on keys it has no field
    for, naming ``cls.from_dict`` / ``from_json_file``.

    Candle reads a config with ``serde_json::from_str::<Config>(&s)``, which ignores unknown keys;
    its Python port ``Config(**json.loads(s))`` would otherwise stop with a bare ``TypeError``
    (and a keyword typo must not be swallowed). Returns ``cls``."""
    import dataclasses

    init = cls.__init__
    names = frozenset(f.name for f in dataclasses.fields(cls))
    qual = cls.__name__
    spelling = (f"`{qual}.from_json_file(path)` or " if hasattr(cls, "from_json_file") else "") + (
        f"`{qual}.from_dict(json.loads(s))`"
    )

    @functools.wraps(init)
    def strict_init(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise errors.Msg(
                f"{label} {qual}: unknown keys {unknown}. To read a config.json as Candle's"
                f" `serde_json::from_str::<{qual}>` does (unknown keys ignored), write {spelling}"
            )
        init(self, *args, **kwargs)

    cls.__init__ = strict_init
    return cls


def candle_config(cls: Any, label: str) -> Any:
    """Candle's conventions on a config dataclass: ``cls(**kwargs)`` refuses unknown keys
    (:func:`refuse_unknown_config_keys`) and ``config.clone()`` (Rust's ``Clone``, as in
    ``Model::load(vb, config.clone())``) returns an equal, separate copy. Returns ``cls``."""
    import copy

    if "clone" not in cls.__dict__:
        def clone(self: Any) -> Any:
            """Candle's ``config.clone()``: an equal, separate copy of this config."""
            return copy.deepcopy(self)

        cls.clone = clone
    return refuse_unknown_config_keys(cls, label)


def config_dict(d: Any, label: str, source: str = "") -> Mapping[str, Any]:
    """``d`` itself when it is a dict (a ``config.json`` object), else ``ArgumentType`` naming ``label``."""
    if not isinstance(d, Mapping):
        raise errors.ArgumentType(
            f"{label}: a config must be a dict (the object of a config.json), got {type(d).__name__}"
            + (f" from {source}" if source else "")
        )
    return d


def read_config_json(path: str | os.PathLike, label: str) -> Mapping[str, Any]:
    """The object of a ``config.json``: a missing file, a folder, malformed JSON or a top level that is
    not an object raise candlejax errors naming the file (``NoSuchFile`` is also a ``FileNotFoundError``)."""
    errors.check_file(path, f"{label}: reading the config", "pass the config.json inside the checkpoint folder")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a >4300-digit int; nesting
        raise errors.InvalidArgument(f"{label}: {os.fspath(path)} is not valid JSON ({e})") from None
    return config_dict(d, label, os.fspath(path))


def check_sizes(config: Any, names: Iterable[str], label: str) -> None:
    """Raise unless each field ``names`` of ``config`` is an integer >= 1 (a field that is ``None``
    is skipped): a size of 0 would load and fail in every later forward. ``label`` names the config
    (``"llama Config"``). transformers: the ``PretrainedConfig`` validation of its sizes."""
    for name in names:
        v = getattr(config, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise errors.InvalidArgument(f"{label}: {name} must be an integer >= 1, got {v!r}")


def check_vb_first(vb: Any, where: str, candle: str, candlejax: str) -> None:
    """Raise when ``vb`` (the argument a loader takes first) is not a VarBuilder: most often a
    config given first, in the order of another spelling. The message names both spellings, e.g.
    ``candle="BlipForConditionalGeneration.new(config, vb)"``,
    ``candlejax="BlipForConditionalGeneration.load(vb, config)"``."""
    from candlejax.nn import VarBuilder

    if not isinstance(vb, VarBuilder):
        raise errors.InvalidArgument(
            f"{where}: expected a VarBuilder first, got {type(vb).__name__}; the argument orders are"
            f" {candlejax} and (Candle's) {candle}"
        )


def check_gguf_vb(vb: Any, where: str, candle: str, other: str) -> None:
    """Raise unless ``vb`` is a GGUF ``VarBuilder`` (``quantized_var_builder.VarBuilder.from_gguf``),
    naming Candle's spelling ``candle`` (the argument order) and, for a float (safetensors)
    VarBuilder, the float model's loader ``other``."""
    if isinstance(vb, VarBuilder):
        return
    if isinstance(vb, FloatVarBuilder):
        raise errors.InvalidArgument(
            f"{where}: expected a GGUF VarBuilder (quantized VarBuilder.from_gguf(path, device)), got a float"
            f" VarBuilder; for safetensors weights use {other}"
        )
    raise errors.InvalidArgument(
        f"{where}: expected a GGUF VarBuilder (VarBuilder.from_gguf(path, device)), got {type(vb).__name__};"
        f" the argument order is (Candle's) {candle}"
    )


def safetensors_files(model_dir: str | os.PathLike) -> list[str]:
    """The safetensors files of a checkpoint folder: its ``model.safetensors.index.json`` when it has
    one (so a missing shard is named), else ``model.safetensors``, else all its ``*.safetensors``
    (:func:`candlejax.models.hub.weight_files`)."""
    from candlejax.models.hub import weight_files

    d = os.fspath(model_dir)
    if os.path.isfile(d):
        raise errors.Msg(f"expected a checkpoint folder, got the file {d!r}: pass the folder holding it")
    if not os.path.isdir(d):
        raise errors.Msg(f"no such checkpoint folder: {d!r}")
    return weight_files(d)


def is_gguf(path: str | os.PathLike) -> bool:
    """A ``.gguf`` file, or a folder holding one and no ``*.safetensors`` / ``model.bin`` (the layout of
    Candle's ``--quantized`` model folders: the GGUF with ``config.json`` and ``tokenizer.json``)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        names = os.listdir(p)
        return any(n.endswith(".gguf") for n in names) and not any(
            n.endswith(".safetensors") or n == "model.bin" for n in names)  # fmt: skip
    return p.endswith(".gguf")


def gguf_file(path: str | os.PathLike, where: str) -> tuple[str, str]:
    """``(the .gguf file, its folder)`` for a GGUF file or a folder holding exactly one; ``where`` names
    the caller in errors."""
    p = os.fspath(path)
    if os.path.isdir(p):
        found = sorted(glob.glob(os.path.join(glob.escape(p), "*.gguf")))
        if len(found) != 1:
            raise errors.Msg(f"{where}: {p}: expected one .gguf file, found {len(found)}; pass the file's path")
        p = found[0]
    elif not os.path.isfile(p):
        raise errors.Msg(f"{where}: no such GGUF file: {p!r}")
    return p, os.path.dirname(os.path.abspath(p))


def checkpoint_dir(vb: Any) -> str:
    """The folder holding ``vb``'s checkpoint files when they are all in one (``""`` otherwise, e.g.
    a VarMap): ``Model.load(vb, config)`` keeps it, so the ``tokenizer.json`` beside the weights is
    the default tokenizer, as after ``from_pretrained(DIR)``."""
    files = vb.files() if hasattr(vb, "files") else []
    dirs = {os.path.dirname(os.path.abspath(f)) for f in files}
    return dirs.pop() if len(dirs) == 1 else ""


def tokenizer_from(tokenizer: Any, model_dir: str | None, where: str, own: bool = False) -> Any:
    """The tokenizer to use: ``tokenizer`` itself (a ``tokenizers.Tokenizer``, a
    :class:`candlejax.tokenizer.Tokenizer` or a callable text -> ids), read from a path
    (``tokenizer.json`` or its folder), or, when ``None``, the ``tokenizer.json`` of the folder the
    model was loaded from (``model_dir``). Raises naming ``where`` when there is none. The folder's
    tokenizer is read once and shared by calls; ``own=True`` reads a separate one, for an object that
    hands it to the user (a pipeline's ``.tokenizer``: its padding or truncation settings must not
    change other callers')."""
    from candlejax.tokenizer import load_tokenizer

    if isinstance(tokenizer, str | os.PathLike):
        return load_tokenizer(tokenizer)
    if tokenizer is not None:
        return tokenizer
    file = os.path.join(model_dir, "tokenizer.json") if model_dir else ""
    if file and os.path.isfile(file):
        return load_tokenizer(file) if own else _cached_tokenizer(file, os.stat(file).st_mtime_ns)
    why = (f"{model_dir!r}, the folder the model was loaded from, has no tokenizer.json" if model_dir
           else "the model was not loaded from a checkpoint folder (from_pretrained(DIR))")  # fmt: skip
    raise errors.Msg(f"{where}: pass tokenizer= (a tokenizers.Tokenizer or the path of tokenizer.json); {why}")


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(file: str, mtime_ns: int) -> Any:
    from candlejax.tokenizer import load_tokenizer

    return load_tokenizer(file)


def generation_eos_token_ids(folder: str | os.PathLike, label: str) -> tuple[int, ...] | None:
    """The ``eos_token_id`` ids of the ``generation_config.json`` in a model folder, where transformers'
    ``generate`` reads its stop ids (``None``: no file, or no ids in it); a malformed value raises."""
    path = os.path.join(os.fspath(folder), "generation_config.json")
    if not os.path.isfile(path):
        return None
    e = read_config_json(path, f"{label} generation_config.json").get("eos_token_id")
    ids = [] if e is None else [e] if isinstance(e, int) else list(e) if isinstance(e, list) else None
    if ids is None or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise errors.InvalidArgument(f"{label}: {path}: eos_token_id must be an id or a list of ids, got {e!r}")
    return tuple(ids) or None
