"""A tiny SentencePiece-style ``tokenizer.json`` for tests of printed text (no download).

Words ``w3 .. w{vocab_size - 1}`` as pieces ``▁w17`` after ``<unk>``, ``<s>``, ``</s>``, with the llama
``tokenizer.json``'s pre-tokenizer and decoder, whose ``Strip`` drops the leading space of a text's
first token, and a post-processor that adds ``<s>``.
"""

from __future__ import annotations

from typing import Any

SPECIALS = ["<unk>", "<s>", "</s>"]


def write_sentencepiece_tokenizer(path: Any, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS)} | {f"\u2581w{i}": i for i in range(len(SPECIALS), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # fmt: skip
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(path))


def spm_gguf_metadata(pieces: list[str], **extra: Any) -> dict[str, Any]:
    """GGUF tokenizer metadata of a SentencePiece (``llama``) vocabulary: ``<unk>``, ``<s>``, ``</s>``, the
    256 byte tokens, then ``pieces``, scored so that earlier pieces win; ``extra`` keys are added."""
    tokens = SPECIALS + [f"<0x{b:02X}>" for b in range(256)] + list(pieces)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        **extra,
    }
