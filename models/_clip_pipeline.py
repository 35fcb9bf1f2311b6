"""CLIP zero-shot classification: tokenise the labels, preprocess the image, softmax over labels.

Candle: the ``clip`` example (``tokenize_sequences`` + ``model.forward`` + ``softmax``). The
model runs compiled (:func:`candlejax.models.clip.forward_jit`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.models._image_pipeline import pixels_clip
from candlejax.nn import ops
from candlejax.tensor import Tensor

__all__ = ["load_tokenizer", "tokenize", "zero_shot"]


def load_tokenizer(tokenizer: Any) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` path or a folder holding one; others pass through."""
    if isinstance(tokenizer, str | os.PathLike):
        from tokenizers import Tokenizer

        path = os.fspath(tokenizer)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise errors.Msg(f"tokenizer file not found: {path!r}")
        return Tokenizer.from_file(path)
    return tokenizer


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [list(e.ids) for e in tokenizer.encode_batch(list(texts))]
    if callable(tokenizer):  # a transformers tokenizer or any text -> ids function
        out = [tokenizer(t) for t in texts]
        return [list(o["input_ids"] if isinstance(o, dict) or hasattr(o, "keys") else o) for o in out]
    raise errors.Msg(
        f"clip: tokenizer must be a tokenizers.Tokenizer, a tokenizer.json path or a callable, got {tokenizer!r}"
    )


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """``(input_ids (N, S) u32, attention_mask (N, S) u8)``; each row padded with its last id (the
    EOS); rows longer than ``max_len`` keep their first ``max_len - 1`` ids and their last one."""
    rows = _encode(load_tokenizer(tokenizer), texts)
    for i, r in enumerate(rows):
        if not r:
            raise errors.Msg(f"clip: label {i} ({texts[i]!r}) tokenises to no ids")
        if len(r) > max_len:
            rows[i] = [*r[: max_len - 1], r[-1]]
    s = max(len(r) for r in rows)
    ids = np.array([r + [r[-1]] * (s - len(r)) for r in rows], np.uint32)
    mask = np.array([[1] * len(r) + [0] * (s - len(r)) for r in rows], np.uint8)
    return Tensor.from_numpy(ids), Tensor.from_numpy(mask)


def zero_shot(model: Any, image: Any, labels: Sequence[str], tokenizer: Any = None) -> Tensor:
    """Probabilities of each label for the image: ``(len(labels),)`` f32 (``(B, len(labels))`` for a
    batch of preprocessed images). ``image``: a path, PIL image, ``(H, W, 3)`` uint8 array, or
    pixel values already preprocessed; ``tokenizer``: a ``tokenizers.Tokenizer``, a path to
    ``tokenizer.json`` (or its folder), or a callable text -> ids."""
    from candlejax.models.clip import forward_jit

    if isinstance(labels, str):
        raise errors.Msg("clip.zero_shot: labels must be a list of strings, got one string (split it first)")
    labels = list(labels)
    if not labels:
        raise errors.Msg("clip.zero_shot: the label list is empty; give at least one label")
    if tokenizer is None:
        raise errors.Msg("clip.zero_shot: pass tokenizer= (a tokenizers.Tokenizer or the path of tokenizer.json)")
    size = model.image_size
    pixels = pixels_clip(image, size, size)
    ids, mask = tokenize(tokenizer, labels, model.text_model.max_position_embeddings)
    _, logits_per_image = forward_jit(model, pixels.to_dtype(model.logit_scale.dtype), ids, mask)
    probs = ops.softmax_last_dim(logits_per_image)  # (B, N)
    single = not isinstance(image, Tensor) or image.rank == 3 or image.dim(0) == 1
    return probs.squeeze(0) if single and probs.dim(0) == 1 else probs
