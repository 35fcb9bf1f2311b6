"""Finding a model's files in a local folder or the local Hugging Face hub cache (never downloads).

The hub cache (``huggingface_hub``'s layout and location: ``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``) keeps each repository as::

    models--{org}--{name}/
        refs/main                 # the commit hash the branch points to
        snapshots/{commit}/       # config.json, model.safetensors or model.safetensors.index.json
                                  #   + model-0000N-of-0000M.safetensors, tokenizer.json, ...
        blobs/                    # the files the snapshot entries link to

>>> files = resolve("HuggingFaceTB/SmolLM2-135M")     # or a folder path
>>> files.config, files.weights, files.tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from candlejax import errors

__all__ = [
    "ModelFiles", "entry_snapshot", "hub_cache_dir", "repo_folder_name", "resolve", "resolve_root", "snapshot_dir",
    "weight_files",
]  # fmt: skip

_HASH = re.compile(r"^[0-9a-f]{40}$")
_NAME = re.compile(r"^[0-9A-Za-z_.-]{1,255}$")  # one path component


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The files of one checkpoint: its folder, ``config.json``, the safetensors weights (one file,
    the shards in order, or the ``*.index.json``), and ``tokenizer.json`` if present."""

    root: str
    config: str
    weights: list[str]
    tokenizer: str | None


def _env_path(name: str) -> str | None:
    """``$name`` with ``~`` and ``$VAR`` expanded (as ``huggingface_hub.constants``); None if unset or empty."""
    v = os.environ.get(name)
    return os.path.expandvars(os.path.expanduser(v)) if v else None


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The hub cache folder, as ``huggingface_hub.constants.HF_HUB_CACHE``: ``cache_dir``, else
    ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``,
    ``~/.cache/huggingface/hub`` (``~`` and ``$VAR`` in the variables expanded; empty ones ignored)."""
    if cache_dir is not None:
        return Path(errors.path_arg(cache_dir, "hub_cache_dir", "cache_dir"))
    hub = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub)
    cache = _env_path("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    home = _env_path("HF_HOME") or os.path.join(cache, "huggingface")
    return Path(home) / "hub"


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    """``"org/name"`` -> ``"models--org--name"``."""
    return f"{repo_type}s--" + "--".join(repo_id.split("/"))


def snapshot_dir(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch/tag under ``refs/`` or a commit
    hash; default ``main``, else the only snapshot)."""
    return entry_snapshot(hub_cache_dir(cache_dir) / repo_folder_name(repo_id), revision, repo_id)


def entry_snapshot(repo: Path, revision: str | None = None, repo_id: str | None = None) -> Path:
    """The snapshot folder of one cache entry folder (``.../models--org--name``)."""
    repo_id = repo_id or repo.name
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        raise errors.Msg(
            f"{repo_id!r} is not in the local Hugging Face cache ({repo} not found); nothing is downloaded"
        )
    rev = revision or "main"
    if not isinstance(rev, str) or Path(rev).is_absolute() or ".." in Path(rev).parts or "\\" in rev:
        raise errors.Msg(f"{repo_id!r}: revision {rev!r} is not a branch, tag or commit name")
    if _HASH.match(rev) and (snaps / rev).is_dir():
        return snaps / rev
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8", errors="replace").strip()
        if not _NAME.match(commit) or commit in (".", ".."):  # huggingface_hub writes a commit hash
            raise errors.Msg(f"{repo_id!r}: refs/{rev} in {repo} does not hold a commit name (corrupt cache?)")
        if (snaps / commit).is_dir():
            return snaps / commit
        raise errors.Msg(f"{repo_id!r}: refs/{rev} points to {commit}, which has no snapshot in {snaps}")
    found = sorted(p for p in snaps.iterdir() if p.is_dir())
    if revision is None and len(found) == 1:
        return found[0]
    have = ", ".join(p.name for p in found) or "none"
    raise errors.Msg(f"{repo_id!r}: revision {rev!r} not found in {repo} (snapshots: {have})")


def weight_files(root: str | os.PathLike) -> list[str]:
    """The safetensors weights of a checkpoint folder, as transformers' ``from_pretrained`` picks them:
    its ``model.safetensors.index.json`` (each shard it names must exist), else ``model.safetensors``
    (other ``*.safetensors`` beside it, e.g. a ``model.fp16.safetensors`` variant, are not read), else
    all its ``*.safetensors``."""
    root = Path(root)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = wm = json.load(f)["weight_map"]
            if not (wm and isinstance(wm, dict) and all(isinstance(v, str) for v in wm.values())):
                raise TypeError("weight_map must map tensor names to shard file names")
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a list
            raise errors.Msg(f"invalid safetensors index {index}: {type(e).__name__}: {e}") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise errors.Msg(f"{index}: shards missing from {root}: {missing}")
        return [str(index)]
    single = root / "model.safetensors"
    if single.is_file():
        return [str(single)]
    others = sorted(str(p) for p in root.glob("*.safetensors"))
    if others:
        return others
    bins = sorted(p.name for p in root.glob("pytorch_model*.bin"))
    hint = f" (it has {', '.join(bins)}: convert it to safetensors or read it with VarBuilder.from_pth)" if bins else ""
    raise errors.Msg(f"no model.safetensors or model.safetensors.index.json in {root}{hint}")


def resolve_root(path_or_id: str | os.PathLike, revision: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """The folder of a checkpoint given as a folder, a hub cache entry folder (``models--org--name``)
    or a hub id ``"org/name"`` in the local cache (no file inside it is checked)."""
    p = Path(errors.path_arg(path_or_id, "hub", "a model folder or hub id"))  # Path(None): a bare TypeError
    if p.is_dir() and not (p / "config.json").is_file() and (p / "snapshots").is_dir():
        return entry_snapshot(p, revision)  # a cache entry folder, models--org--name
    if p.is_dir():
        return p
    if isinstance(path_or_id, str) and path_or_id.count("/") == 1 and not p.exists():
        return snapshot_dir(path_or_id, revision, cache_dir)
    if p.is_file():
        raise errors.Msg(f"{os.fspath(path_or_id)!r} is a file: pass the model folder holding it and config.json")
    raise errors.Msg(f"{os.fspath(path_or_id)!r} is neither a model folder nor a hub id (org/name)")


def resolve(path_or_id: str | os.PathLike, revision: str | None = None,
            cache_dir: str | os.PathLike | None = None) -> ModelFiles:  # fmt: skip
    """The files of a checkpoint given as a folder (with ``config.json``), a hub cache entry folder
    (``models--org--name``) or a hub id ``"org/name"`` in the local cache."""
    root = resolve_root(path_or_id, revision, cache_dir)
    config = root / "config.json"
    if not config.is_file():
        raise errors.Msg(f"no config.json in {root}")
    tok = root / "tokenizer.json"
    return ModelFiles(str(root), str(config), weight_files(root), str(tok) if tok.is_file() else None)
