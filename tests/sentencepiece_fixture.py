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
