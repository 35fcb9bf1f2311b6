"""BLIP captioning: preprocess the image, encode it once, then decode greedily or by sampling.

Candle: the ``blip`` example (vision model once, then ``text_decoder.forward`` per token with its
KV cache, ``LogitsProcessor`` sampling, stop at ``[SEP]``). Here the decoder runs through
:func:`candlejax.generation.generate`: one compiled prefill and one compiled decode step per
token against a pre-allocated cache that also holds the image's cross-attention keys/values.
"""

from __future__ import annotations

from typing import Any

from candlejax import errors
from candlejax.generation import LogitsProcessor, generate
from candlejax.models._image_pipeline import pixels_blip

__all__ = ["caption", "caption_ids"]

_BUCKET = 32  # cache lengths are rounded up to a multiple of this, so nearby max_new_tokens share a program


def caption_ids(
    model: Any, image: Any, max_new_tokens: int = 30, temperature: float | None = None, top_p: float | None = None,
    seed: int = 299792458, processor: LogitsProcessor | None = None,
) -> list[int]:  # fmt: skip
    """The caption's token ids (without the leading BOS and the final ``[SEP]``).

    ``temperature`` ``None`` (or 0) decodes greedily (transformers' ``generate(do_sample=False)``);
    otherwise samples with ``LogitsProcessor(seed, temperature, top_p)``, or with ``processor``.
    """
    from candlejax.models import blip_text
    from candlejax.models.blip import vision_forward_jit

    if max_new_tokens < 1:
        raise errors.Msg(f"blip.caption: max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg = model.config.text_config
    pixels = pixels_blip(image, model.image_size)
    dtype = model.vision_model.embeddings.class_embedding.dtype
    image_embeds = vision_forward_jit(model, pixels.to_dtype(dtype))
    if image_embeds.dim(0) != 1:
        raise errors.Msg(f"blip.caption: one image at a time, got a batch of {image_embeds.dim(0)}")
    limit = cfg.max_position_embeddings
    if 1 + max_new_tokens > limit:
        raise errors.Msg(
            f"blip.caption: max_new_tokens {max_new_tokens} exceeds max_position_embeddings - 1 ({limit - 1})"
        )
    n = min(limit, -(-(1 + max_new_tokens) // _BUCKET) * _BUCKET)
    cache = model.text_decoder.new_cache(image_embeds, n)
    lp = processor if processor is not None else LogitsProcessor(seed, temperature, top_p)
    gen = generate(blip_text.step, model.text_decoder, cache, [cfg.bos_token_id], max_new_tokens, lp,
                   eos_token_id=cfg.sep_token_id)  # fmt: skip
    return list(gen)


def caption(
    model: Any, image: Any, tokenizer: Any, max_new_tokens: int = 30, temperature: float | None = None,
    top_p: float | None = None, seed: int = 299792458, processor: LogitsProcessor | None = None,
) -> str:  # fmt: skip
    """A caption for ``image`` (path, PIL image, ``(H, W, 3)`` uint8 array or preprocessed pixels).

    ``tokenizer``: a ``tokenizers.Tokenizer``, a ``tokenizer.json`` path (or its folder), or an
    object with ``decode(ids, skip_special_tokens=True)``. See :func:`caption_ids` for the rest.
    """
    from candlejax.models._clip_pipeline import load_tokenizer

    ids = caption_ids(model, image, max_new_tokens, temperature, top_p, seed, processor)
    tok = load_tokenizer(tokenizer)
    if tok is None or not hasattr(tok, "decode"):
        raise errors.Msg("blip.caption: pass a tokenizer (tokenizers.Tokenizer or the path of tokenizer.json)")
    return tok.decode(ids, skip_special_tokens=True).strip()
