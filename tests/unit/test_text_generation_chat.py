"""TextGeneration.chat_turn: which ids a later turn feeds after the cache of the earlier ones, with
the model's generation stubbed out (no weights; the real-model check is in
tests/models/test_quantized_llama.py)."""

from __future__ import annotations

import pytest
from sentencepiece_fixture import spm_gguf_metadata

from candlejax.pipelines import TextGeneration
from candlejax.tokenizer import Tokenizer

INST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _spm_tokenizer(template: str) -> Tokenizer:
    pieces = ["▁", "t", "h", "e", "w", "o", "r", "l", "d", "I", "N", "S", "T", "[", "]", "/", "▁t", "he", "▁the"]
    pieces += ["▁w", "or", "ld", "▁wor", "▁world", "▁[", "IN", "ST", "INST"]
    return Tokenizer.from_gguf_metadata(spm_gguf_metadata(pieces, **{"tokenizer.chat_template": template}))


class _Gen:
    def __init__(self, tokens, eos):
        self.tokens, self.last_token = list(tokens), eos if eos is not None else tokens[-1]
        self.finish_reason = "eos" if eos is not None else "length"
        self.pending_token = None if eos is not None else self.last_token

    def continuation(self, new=()):
        return [*([] if self.pending_token is None else [self.pending_token]), *new]


def _stub(tg: TextGeneration, replies: list[tuple[list[int], int | None]]) -> list[list[int]]:
    """Replace ``stream`` with one that records the ids fed and "generates" the next reply."""
    fed: list[list[int]] = []

    def stream(ids, max_new_tokens, processor=None, *, continue_cache=False, **kw):
        if not continue_cache:
            tg.history = []
        ids = [*(tg.generation.continuation() if continue_cache and tg.generation else ()), *ids]
        fed.append(ids)
        tokens, eos = replies[len(fed) - 1]
        tg.generation, tg.cache = _Gen(tokens, eos), object()
        tg.history = [*tg.history, *ids, *tokens, *([eos] if eos is not None else [])]
        yield tg.tokenizer.decode(tokens)

    tg.stream = stream
    return fed


def _tg(tok: Tokenizer) -> TextGeneration:
    tg = TextGeneration.__new__(TextGeneration)
    tg.tokenizer, tg.eos_token_ids = tok, tok.eos_token_ids
    tg.cache, tg.pos, tg.history, tg.generation, tg.messages, tg._chat_held = None, 0, [], None, [], None
    return tg


@pytest.mark.parametrize("finish", ["eos", "length"])
def test_second_turn_feeds_only_the_new_message_sentencepiece(finish):
    """A SentencePiece reply decodes with a leading space inside the conversation ("[/INST] the world")
    but alone as "the world", which the template renders right after "[/INST]": the decoded cache
    did not match the rendered conversation there, and the whole reply was fed a second time."""
    tok = _spm_tokenizer(INST)
    reply = tok.encode(" the world", add_special_tokens=False)
    tg = _tg(tok)
    fed = _stub(tg, [(reply, 2 if finish == "eos" else None), ([5], None)])
    "".join(tg.chat_turn("the", 8))
    assert fed[0] == tok.apply_chat_template([{"role": "user", "content": "the"}], add_generation_prompt=True)
    "".join(tg.chat_turn("world", 8))
    pending = [] if finish == "eos" else [reply[-1]]  # the last id, not yet in the cache
    # the EOS the template writes after the reply; "[INST]" follows it, so has no "▁" (transformers)
    after_eos = tok.encode("</s>[INST] world [/INST]", add_special_tokens=False)
    assert fed[1] == [*pending, *(after_eos[1:] if finish == "eos" else after_eos)]
    assert tg.messages[1] == {"role": "assistant", "content": "the world"}


def test_second_turn_byte_level_unchanged():
    """A ChatML conversation: the second turn starts after the reply's <|im_end|>."""
    from candlejax.tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "He", "ll", "Hell", "Hello", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer.from_gguf_metadata({
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 2) + [3, 3],
        "tokenizer.ggml.merges": ["H e", "l l", "He ll", "Hell o"],
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
        "tokenizer.chat_template": CHATML,
    })  # fmt: skip
    reply = tok.encode("Hello world", add_special_tokens=False)
    tg = _tg(tok)
    fed = _stub(tg, [(reply, tok.eos_token_id), ([5], None)])
    "".join(tg.chat_turn("Hi", 8))
    "".join(tg.chat_turn("Bye", 8))
    assert fed[1] == tok.encode("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)


def test_messages_kept_when_the_caller_stops_early():
    tok = _spm_tokenizer(INST)
    reply = tok.encode(" the world", add_special_tokens=False)
    tg = _tg(tok)
    fed = _stub(tg, [(reply, 2), ([5], None)])
    turn = tg.chat_turn("the", 8)
    next(turn)
    turn.close()  # a client that hung up after the first piece
    assert tg.messages[-1] == {"role": "assistant", "content": "the world"}
    "".join(tg.chat_turn("world", 8))
    assert fed[1] == tok.encode("</s>[INST] world [/INST]", add_special_tokens=False)[1:]  # after the EOS


ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [INST, ZEPHYR])
@pytest.mark.parametrize("finish", ["eos", "length"])
def test_later_turn_ids_are_those_of_the_whole_conversation(template, finish):
    """transformers tokenizes the whole conversation: after a special token (the reply's ``</s>``) a
    SentencePiece tokenizer adds no ``▁``. The new turn's text was tokenized alone, as the start of
    a text, and fed the model an extra ``▁`` there (TinyLlama's ``</s>\\n<|user|>``: ``▁``, ``\\n``)."""
    from transformers import PreTrainedTokenizerFast

    tok = _spm_tokenizer(template)
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, bos_token="<s>", eos_token="</s>", chat_template=template)
    reply = tok.encode("the world", add_special_tokens=False)
    tg = _tg(tok)
    fed = _stub(tg, [(reply, 2 if finish == "eos" else None), ([5], None)])
    "".join(tg.chat_turn("the", 8))
    "".join(tg.chat_turn("world", 8))
    msgs = [{"role": "user", "content": "the"}, {"role": "assistant", "content": "the world"},
            {"role": "user", "content": "world"}]  # fmt: skip
    whole = ref.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    new = fed[1][0 if finish == "eos" else 1 :]  # (without the pending last reply id)
    assert new == whole[len(whole) - len(new) :]
    assert tok.decode(whole[: len(whole) - len(new)], False).endswith("the world</s>" if finish == "eos" else "world")


def test_tail_ids_fall_back_where_offsets_leave_a_gap():
    """A byte-level ``tokenizer.json`` trims the space off a token's offsets: a tail that starts
    after a space must not take the whole-text token that holds that space too."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors

    from candlejax.pipelines.text_generation import _ids_of_tail
    from candlejax.tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab |= {"He": 256, "ll": 257, "Hell": 258, "Hello": 259, "Ġw": 260, "or": 261, "Ġwor": 262, "ld": 263}
    vocab["Ġworld"] = 264
    hf = HFTokenizer(models.BPE(vocab, [("H", "e"), ("l", "l"), ("He", "ll"), ("Hell", "o"), ("Ġ", "w"), ("o", "r"),
                               ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]))  # fmt: skip
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=True)
    tok = Tokenizer(hf)
    assert tok.encode("Hello world").get_offsets()[1] == (6, 11)  # "Ġworld", its space trimmed off
    assert _ids_of_tail(tok, "Hello world", 6) == tok.encode("world")  # not "Ġworld"
    assert _ids_of_tail(tok, "Hello world", 5) == [264]
    assert _ids_of_tail(tok, "Hello world", 0) == [259, 264]


def test_chat_turn_and_encode_check_the_message_and_system():
    """A message or system prompt that is not a str raised the template's TypeError / UndefinedError."""
    from candlejax import errors

    tg = _tg(_spm_tokenizer(CHATML))
    _stub(tg, [([5], None)])
    for bad in (None, 5, ["the"]):
        with pytest.raises(errors.InvalidArgument, match=r"chat_turn takes a str message, got"):
            "".join(tg.chat_turn(bad, 8))
    with pytest.raises(errors.InvalidArgument, match=r"chat_turn: system must be a str or None, got 5 \(int\)"):
        "".join(tg.chat_turn("the", 8, system=5))
    with pytest.raises(errors.InvalidArgument, match=r"encode: system must be a str or None, got 5 \(int\)"):
        tg.encode("the", chat=True, system=5)
    assert tg.messages == [] and tg.generation is None


def test_stream_takes_a_numpy_integer_count():
    """``max_new_tokens`` as a numpy integer (transformers' ``generate`` takes one) was refused."""
    import numpy as np

    from candlejax import errors

    tg = _tg(_spm_tokenizer(CHATML))
    seen = []
    tg._stream = lambda ids, n, processor, **kw: iter(seen.append((ids, n)) or ())
    assert "".join(tg.stream([1, 2], np.int64(3))) == "" and seen == [([1, 2], 3)] and type(seen[0][1]) is int
    for bad in (np.bool_(True), 2.0, np.int32(-1)):
        with pytest.raises(errors.InvalidArgument, match="max_new_tokens must be an int >= 0"):
            tg.stream([1, 2], bad)
