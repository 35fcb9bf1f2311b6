"""CLIP zero-shot classification for serving: the labels are encoded once, each image once.

requires: candlejax.models.clip, candlejax.vision, tokenizers
provides: ``ZeroShotClassifier``

:func:`candlejax.models.clip.zero_shot` runs the text and the vision tower for every call; a
server that scores many images against the same labels keeps the labels' normalised text features
(:meth:`ZeroShotClassifier.text_features`, cached per label tuple) and runs only the compiled
vision tower per image. The probabilities are the same (softmax of ``exp(logit_scale)`` times the
cosine similarities).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.dtype import DType
from candlejax.models import clip
from candlejax.models.loading import tokenizer_from
from candlejax.tensor import int_arg, unwrap

__all__ = ["ZeroShotClassifier"]


def _unit(x: Any) -> Any:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


_unit_jit = jax.jit(_unit)


@jax.jit
def _probs(img: Any, txt: Any, logit_scale: Any, n: Any) -> Any:
    """Softmax of ``exp(logit_scale)`` times the cosine similarities over the first ``n`` labels
    (the padded label rows of ``txt`` at -inf)."""
    logits = jnp.exp(logit_scale) * (_unit(img) @ txt.T)  # (1, padded N)
    return jax.nn.softmax(jnp.where(jnp.arange(txt.shape[0]) < n, logits, -jnp.inf), axis=-1)


class ZeroShotClassifier:
    """``ZeroShotClassifier(model, tokenizer=None)``: ``clf(image, labels)`` -> ``[(label, p), ...]``,
    most probable first. ``tokenizer`` as in :func:`~candlejax.models.clip.zero_shot` (default:
    the checkpoint folder's ``tokenizer.json``). transformers: ``pipeline("zero-shot-image-classification")``.
    """

    def __init__(self, model: clip.ClipModel, tokenizer: Any = None, cache_size: int = 64):
        self.cache_size = int_arg(cache_size, "ZeroShotClassifier", "cache_size")
        if self.cache_size < 0:
            raise errors.InvalidArgument(
                f"ZeroShotClassifier: cache_size must be a non-negative int (0: keep no labels), got {cache_size!r}"
            )
        self.model = model
        self.tokenizer = tokenizer_from(tokenizer, model.path, "ZeroShotClassifier", own=True)
        self._text: dict[tuple[str, ...], list[Any]] = {}

    def __repr__(self) -> str:
        return f"ZeroShotClassifier(model={type(self.model).__name__}, cache_size={self.cache_size})"

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, tokenizer: Any = None, dtype: Any = DType.F32,
                        device: Any = None) -> ZeroShotClassifier:  # fmt: skip
        """A ``CLIPModel`` checkpoint folder (``config.json``, ``*.safetensors``, ``tokenizer.json``)."""
        model_dir = errors.path_arg(model_dir, "ZeroShotClassifier.from_pretrained", "model_dir")
        return cls(clip.ClipModel.from_pretrained(model_dir, dtype, device), tokenizer)

    def text_features(self, labels: Sequence[str]) -> Any:
        """The labels' L2-normalised projected text features ``(N, projection_dim)`` (a jax array), cached."""
        entry = self._entry(labels)
        if entry[2] is None:  # sliced once, on the first ask: the same array each time
            entry[2] = entry[0][: entry[1]]
        return entry[2]

    def _entry(self, labels: Sequence[str]) -> list[Any]:
        """The cached ``[padded, n, sliced or None]``: the labels' normalised features padded to a
        power-of-two count (copies of the last label), so that label lists of new sizes reuse the
        compiled text tower (:func:`clip.tokenize`), the number of labels, :meth:`text_features`' rows."""
        if isinstance(labels, str):
            raise errors.Msg("ZeroShotClassifier: labels must be a list of strings, got one string (split it first)")
        if not hasattr(labels, "__iter__") or isinstance(labels, bytes | dict):
            raise errors.InvalidArgument(
                f"ZeroShotClassifier: labels must be a list of strings, got {labels!r:.60} ({type(labels).__name__})"
            )
        key = tuple(labels)
        bad = [x for x in key if not isinstance(x, str)]
        if bad:  # a list among them failed at the cache's dict lookup (unhashable), an int in the tokenizer
            raise errors.InvalidArgument(
                f"ZeroShotClassifier: labels must be strings, got {bad[0]!r:.60} ({type(bad[0]).__name__})"
            )
        if not key:
            raise errors.Msg("ZeroShotClassifier: the label list is empty; give at least one label")
        # one lookup, and evictions that tolerate a key gone already: threads may share the classifier
        entry = self._text.get(key)
        if entry is not None:
            return entry
        ids, mask = clip.tokenize(self.tokenizer, key, self.model.text_model.max_position_embeddings, bucket=True)
        entry = [_unit_jit(unwrap(clip.text_features_jit(self.model, ids, mask))), len(key), None]
        if self.cache_size > 0:  # 0: nothing kept
            while len(self._text) >= self.cache_size:
                try:
                    self._text.pop(next(iter(self._text)), None)
                except (StopIteration, RuntimeError):  # emptied or changed meanwhile by another thread
                    break
            self._text[key] = entry
        return entry

    def probs(self, image: Any, labels: Sequence[str]) -> np.ndarray:
        """Probabilities ``(len(labels),)`` f32 for one image (see :func:`~candlejax.models.clip.preprocess`);
        a list (or tuple) of images -> ``(len(images), len(labels))``, one row per image."""
        if isinstance(image, list | tuple):
            if not image:
                raise errors.InvalidArgument("ZeroShotClassifier: an empty list of images")
            return np.stack([self.probs(im, labels) for im in image])
        txt, n, _ = self._entry(labels)
        pixels = clip.preprocess(image, self.model.image_size)
        if pixels.dim(0) != 1:
            raise errors.Msg(
                f"ZeroShotClassifier: one image at a time, got a batch of {pixels.dim(0)} preprocessed images;"
                " pass a list of images for one row of probabilities per image"
            )
        img = unwrap(clip.image_features_jit(self.model, pixels.to_dtype(self.model.logit_scale.dtype)))
        return np.asarray(_probs(img, txt, unwrap(self.model.logit_scale), n), np.float32)[0, :n]

    def __call__(self, image: Any, labels: Sequence[str]) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """``[(label, p), ...]`` most probable first; a list of images -> one such list per image
        (as transformers' pipeline)."""
        p = self.probs(image, labels)
        if p.ndim == 2:
            return [sorted(zip(labels, map(float, row), strict=True), key=lambda t: -t[1]) for row in p]
        return sorted(zip(labels, map(float, p), strict=True), key=lambda t: -t[1])
