"""BLIP image captioning for serving: a model, its tokenizer and the decoding settings in one object.

requires: candlejax.models.blip, tokenizers
provides: ``ImageCaptioner``
"""

from __future__ import annotations

import os
from typing import Any

from candlejax import errors
from candlejax.dtype import DType
from candlejax.models import blip, quantized_blip
from candlejax.models.loading import is_gguf, tokenizer_from
from candlejax.tensor import int_arg

__all__ = ["ImageCaptioner"]


class ImageCaptioner:
    """``ImageCaptioner(model, tokenizer=None, max_new_tokens=30, temperature=None, top_p=None, seed=...,
    prompt=None)``: ``cap(image)`` -> the caption (:func:`candlejax.models.blip.caption`; a list of
    images -> a list of captions; ``prompt``: conditional captioning, the caption begins with it).
    transformers: ``pipeline("image-to-text")``."""

    def __init__(self, model: blip.BlipForConditionalGeneration, tokenizer: Any = None, *, max_new_tokens: int = 30,
                 temperature: float | None = None, top_p: float | None = None, seed: int = 299792458,
                 prompt: str | None = None):  # fmt: skip
        self.model = model
        self.tokenizer = tokenizer_from(tokenizer, model.path, "ImageCaptioner", own=True)
        self.max_new_tokens = int_arg(max_new_tokens, "ImageCaptioner", "max_new_tokens")  # "5" failed at a '<'
        self.temperature, self.top_p, self.seed = temperature, top_p, int_arg(seed, "ImageCaptioner", "seed")
        self.input_ids = None if prompt is None else blip.prompt_input_ids(model, self.tokenizer, prompt)

    def __repr__(self) -> str:
        return (f"ImageCaptioner(model={type(self.model).__name__}, max_new_tokens={self.max_new_tokens},"
                f" temperature={self.temperature}, top_p={self.top_p}, seed={self.seed})")  # fmt: skip

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, tokenizer: Any = None, dtype: Any = DType.F32,
                        device: Any = None, **settings: Any) -> ImageCaptioner:  # fmt: skip
        """A ``BlipForConditionalGeneration`` checkpoint folder (``config.json``, ``*.safetensors``,
        ``tokenizer.json``), or a GGUF file / a folder holding one (:mod:`candlejax.models.quantized_blip`);
        ``settings``: the decoding keywords of the constructor."""
        model_dir = errors.path_arg(model_dir, "ImageCaptioner.from_pretrained", "model_dir")
        if is_gguf(model_dir):  # Candle's --quantized BLIP: the GGUF with config.json and tokenizer.json
            model = quantized_blip.BlipForConditionalGeneration.from_pretrained(model_dir, dtype, device)
        else:
            model = blip.BlipForConditionalGeneration.from_pretrained(model_dir, dtype, device)
        return cls(model, tokenizer, **settings)

    def ids(self, image: Any) -> list[int] | list[list[int]]:
        """The caption's token ids (:func:`candlejax.models.blip.caption_ids`; one list per image of a batch)."""
        return blip.caption_ids(self.model, image, self.max_new_tokens, self.temperature, self.top_p, self.seed,
                                input_ids=self.input_ids)  # fmt: skip

    def decode(self, ids: list[int]) -> str:
        """The caption text of ``ids``, special tokens dropped and whitespace stripped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def __call__(self, image: Any) -> str | list[str]:
        ids = self.ids(image)
        if ids and isinstance(ids[0], list):
            return [self.decode(row) for row in ids]  # type: ignore[arg-type]
        return self.decode(ids)  # type: ignore[arg-type]
