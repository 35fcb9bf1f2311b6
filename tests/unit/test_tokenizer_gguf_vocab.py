"""candlejax.tokenizer on small GGUF vocabularies written here: which ``tokenizer.ggml.pre`` values
pick which split (llama.cpp's names), BOS defaults, UNKNOWN-typed tokens. No model files needed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sentencepiece_fixture import spm_gguf_metadata

from candlejax.tokenizer import (
    DIGIT_SPLIT_PRE,
    IGNORE_MERGES_PRE,
    PRE_TOKENIZER_SPLITS,
    Tokenizer,
    bytes_to_unicode,
    tokenizer_from_gguf_metadata,
)

TEXTS = ["Hello world 12345", "cafe\u0301 na\u0308ive x", "don't  stop\n\n  here", "日本語 😀 ok", "a/b\r\nc"]


def _bpe_meta(pre: str | None, **extra):
    """A byte-level vocabulary: the 256 byte characters, a few merges, <|bos|> and <|eos|> (CONTROL)."""
    alphabet = list(bytes_to_unicode().values())
    merges = ["Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "H e", "l l", "He ll", "Hell o", "1 2", "12 3", "e Ì", "a Ì"]
    tokens = [*alphabet]
    for m in merges:
        a, b = m.split(" ")
        if a + b not in tokens:
            tokens.append(a + b)
    tokens += ["<|bos|>", "<|eos|>"]
    meta = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * (len(tokens) - 2) + [3, 3],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": len(tokens) - 2,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }
    if pre is not None:
        meta["tokenizer.ggml.pre"] = pre
    meta.update(extra)
    return meta


def _ids(tk, text):
    return tk.encode(text, add_special_tokens=False).ids


def _same_split(a: str, b: str) -> bool:
    ta, tb = tokenizer_from_gguf_metadata(_bpe_meta(a)), tokenizer_from_gguf_metadata(_bpe_meta(b))
    return all(_ids(ta, t) == _ids(tb, t) for t in TEXTS)


@pytest.mark.parametrize(
    "pre", ["qwen35", "kormo", "f2llmv2", "jina-v5-nano", "kanana2", "talkie", "minimax-m2", "falcon-h1", "lfm2"]
)
def test_pre_names_split_like_transformers(pre):
    """Names transformers' GGUF loader knows (llama.cpp's too): the same ids."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    meta = _bpe_meta(pre)
    td = {"tokenizer_type": "gpt2", "pre_tokenizer_type": pre, "tokens": meta["tokenizer.ggml.tokens"],
          "merges": meta["tokenizer.ggml.merges"], "token_type": meta["tokenizer.ggml.token_type"]}  # fmt: skip
    ref, _ = convert_gguf_tokenizer("llama", td)
    ours = tokenizer_from_gguf_metadata(meta)
    for text in TEXTS:
        assert _ids(ours, text) == ref.encode(text, add_special_tokens=False).ids, (pre, text)


def test_qwen35_keeps_combining_marks_with_their_letter():
    """qwen35's split takes \\p{M} into words (GPT-2's regex and qwen2's cut "e\\u0301" apart)."""
    tk = tokenizer_from_gguf_metadata(_bpe_meta("qwen35"))
    words = [w for w, _ in tk.pre_tokenizer.pre_tokenize_str("cafe\u0301")]
    assert words == ["cafeÌģ"]
    assert not _same_split("qwen35", "qwen2") and not _same_split("qwen35", "gpt-2")


@pytest.mark.parametrize(
    ("pre", "like"),
    [("stablelm2", "qwen2"), ("hunyuan", "qwen2"), ("solar-open", "qwen2"), ("grok-2", "qwen2"),
     ("glm4", "llama-bpe"), ("chatglm-bpe", "llama-bpe"), ("minerva-7b", "smollm"), ("mellum2", "smollm")],
)  # fmt: skip
def test_llama_cpp_pre_aliases(pre, like):
    """llama.cpp maps these names onto a split candlejax has (llama-vocab.cpp); none falls back to GPT-2's."""
    assert _same_split(pre, like)
    assert pre in PRE_TOKENIZER_SPLITS or pre in DIGIT_SPLIT_PRE


def test_ignore_merges_for_the_whole_llama3_family():
    for pre in ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                "jina-v5-nano", "tekken"]:  # fmt: skip
        assert pre in IGNORE_MERGES_PRE, pre
    assert "dbrx" not in IGNORE_MERGES_PRE  # llama-3's regex, but merges as usual (llama.cpp)


def test_unknown_pre_warns():
    with pytest.warns(UserWarning, match="tokenizer.ggml.pre = 'deepseek-llm'") as rec:
        tokenizer_from_gguf_metadata(_bpe_meta("deepseek-llm"))
    assert rec[0].filename == __file__  # the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for pre in (None, "default", "gpt-2", "olmo", "smollm", "qwen2"):
            tokenizer_from_gguf_metadata(_bpe_meta(pre))


@pytest.mark.parametrize("pre", ["llama-bpe", "llama3", "tekken", "lfm2"])
def test_llama3_family_adds_bos_unless_told_not_to(pre):
    """llama.cpp adds BOS for these pre types when the file has no tokenizer.ggml.add_bos_token (early
    Llama-3 GGUFs); the key, when there, wins."""
    meta = _bpe_meta(pre)
    bos = meta["tokenizer.ggml.bos_token_id"]
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.add_bos_token and tok.encode("Hello")[0] == bos
    off = Tokenizer.from_gguf_metadata(_bpe_meta(pre, **{"tokenizer.ggml.add_bos_token": False}))
    assert not off.add_bos_token and off.encode("Hello")[0] != bos


def test_other_byte_level_vocabularies_add_no_bos_by_default():
    for pre in (None, "gpt-2", "qwen2", "smollm", "dbrx"):
        tok = Tokenizer.from_gguf_metadata(_bpe_meta(pre))
        assert not tok.add_bos_token and tok.encode("Hello")[0] != tok.bos_token_id, pre


def _spm_meta():
    return spm_gguf_metadata(["▁", "a", "b", "▁a", "▁b"])


def test_unknown_typed_token_is_special():
    """A token typed UNKNOWN (``<unk>``) is matched whole and dropped when decoding without special
    tokens, as llama.cpp (its special-token cache holds UNKNOWN tokens) and transformers do."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    meta = _spm_meta()
    tok = Tokenizer.from_gguf_metadata(meta)
    ids = tok.encode("a<unk>b", add_special_tokens=False)
    assert ids[1] == 0 and len(ids) == 3
    assert tok.decode([1, 0, *ids]) == "ab"
    td = {"tokenizer_type": "llama", "tokens": meta["tokenizer.ggml.tokens"], "scores": meta["tokenizer.ggml.scores"],
          "token_type": meta["tokenizer.ggml.token_type"]}  # fmt: skip
    ref, _ = convert_gguf_tokenizer("llama", td)
    assert ids == ref.encode("a<unk>b", add_special_tokens=False).ids
    assert tok.decode([0, *ids]) == ref.decode([0, *ids])


def test_chat_template_drops_none_fields_like_transformers():
    """transformers drops a message's keys whose value is None before rendering (an OpenAI-style
    tool call has ``content: None``): ``is defined`` is then false, and no "None" is written."""
    from transformers import PreTrainedTokenizerFast

    template = (
        "{% for m in messages %}{{ m['role'] }}:{% if m.content is defined %}{{ m['content'] }}{% else %}-{% endif %}"
        "{% if m.tool_calls is defined %}[{{ m.tool_calls | tojson }}]{% endif %}|{% endfor %}{{ bos_token }}"
        "{% if add_generation_prompt %}A:{% endif %}"
    )
    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": template}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=template, bos_token="<|bos|>")
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "arguments": {"x": 1}}]},
        {"role": "tool", "content": "3", "tool_calls": None},
    ]
    for gen in (False, True):
        text = tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
        assert text == ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
    assert "None" not in text and "null" not in text
    assert msgs[1]["content"] is None  # the caller's messages are left as they were


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] | trim + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_continue_final_message_like_transformers():
    """``continue_final_message=True`` leaves the last message open (a prefilled reply), as
    transformers does; it used to reach the template as an unknown variable and be ignored."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=CHATML)
    for last in ("Sure, the answer is", "Trailing space "):
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": last}]
        text = tok.apply_chat_template(msgs, continue_final_message=True, tokenize=False)
        assert text == ref.apply_chat_template(msgs, continue_final_message=True, tokenize=False)
        assert text.endswith(last.strip())
        ids = tok.apply_chat_template(msgs, continue_final_message=True)
        assert ids == ref.apply_chat_template(msgs, continue_final_message=True, return_dict=False)
    assert msgs[-1]["content"] == "Trailing space "
    with pytest.raises(ValueError, match="not compatible"):
        tok.apply_chat_template(msgs, continue_final_message=True, add_generation_prompt=True)


def test_load_tokenizer_reads_special_tokens_map(tmp_path):
    """Special tokens named only in special_tokens_map.json (older repos) are the tokenizer's, as in
    transformers: the chat template's ``bos_token`` rendered as nothing without them."""
    from candlejax.tokenizer import load_tokenizer

    tok = Tokenizer.from_gguf_metadata(_bpe_meta("gpt-2"))
    tok.hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ bos_token }}{{ messages[0].content }}"}')
    (tmp_path / "special_tokens_map.json").write_text(
        '{"bos_token": {"content": "<|bos|>", "special": true}, "eos_token": "<|eos|>", "pad_token": "<|eos|>"}'
    )
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|bos|>", "<|eos|>", "<|eos|>")
    assert loaded.eos_token_ids == [tok.token_to_id("<|eos|>")]
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == "<|bos|>Hi"
    # tokenizer_config.json's own values win
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|bos|>"}')
    assert load_tokenizer(tmp_path).eos_token == "<|bos|>"


def test_empty_conversation_raises_like_transformers():
    """transformers refuses an empty conversation (ValueError); rendering it gave an empty prompt."""
    from transformers import PreTrainedTokenizerFast

    import candlejax as cj

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=CHATML)
    with pytest.raises(ValueError, match="empty conversation"):
        ref.apply_chat_template([], add_generation_prompt=True)
    for tokenize in (True, False):
        with pytest.raises(cj.errors.InvalidArgument, match="apply_chat_template: empty conversation"):
            tok.apply_chat_template([], add_generation_prompt=True, tokenize=tokenize)


def test_continue_final_message_errors_are_candlejax_errors():
    import candlejax as cj

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(cj.errors.InvalidArgument, match="not compatible"):
        tok.apply_chat_template(msgs, continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(cj.errors.InvalidArgument, match="content is a string"):
        tok.apply_chat_template([{"role": "user", "content": None}], continue_final_message=True)


def test_decode_batch_like_tokenizers():
    """Candle's examples call ``tokenizer.decode_batch(&ids, true)`` (modernbert)."""
    tok = Tokenizer.from_gguf_metadata(_bpe_meta("gpt-2"))
    batch = [_ids(tok.hf, t) for t in TEXTS]
    batch[0] = [*batch[0], tok.token_to_id("<|eos|>")]
    for skip in (True, False):
        assert tok.decode_batch(batch, skip) == tok.hf.decode_batch(batch, skip_special_tokens=skip)
    assert tok.decode_batch(batch) == [tok.decode(ids) for ids in batch]


def test_bool_flags_and_missing_file_raise_candlejax_errors(tmp_path):
    """A non-bool flag raised the tokenizers library's TypeError; a missing file is a FileNotFoundError."""
    import candlejax as cj
    from candlejax.tokenizer import load_tokenizer

    tok = Tokenizer.from_gguf_metadata(_bpe_meta("gpt-2"))
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.encode: add_special_tokens must be a bool"):
        tok.encode("hi", "yes")
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.decode: skip_special_tokens must be a bool"):
        tok.decode([1], None)
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.decode_batch: expected a list of token ids"):
        tok.decode_batch([[1], "ab"])
    assert tok.encode("Hello", add_special_tokens=np.bool_(False)) == tok.encode("Hello", False)
    for missing in (tmp_path / "nope.json", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json at"):
            load_tokenizer(missing)
        with pytest.raises(cj.errors.NoSuchFile):
            Tokenizer.from_file(missing)
    # the GGUF path as load_tokenizer's: a not-found error (also a FileNotFoundError), not errors.Gguf
    with pytest.raises(cj.errors.NoSuchFile, match=r"Tokenizer\.from_gguf: no such file: .*nope\.gguf"):
        Tokenizer.from_gguf(tmp_path / "nope.gguf")
    with pytest.raises(cj.errors.IsADirectory, match=r"Tokenizer\.from_gguf: is a directory"):
        Tokenizer.from_gguf(tmp_path)
    with pytest.raises(cj.errors.InvalidArgument, match=r"Tokenizer\.from_gguf: path must be a str or os\.PathLike"):
        Tokenizer.from_gguf(None)


def test_apply_chat_template_takes_a_template_argument_like_transformers():
    """transformers' ``chat_template=`` renders with the template given; it reached the tokenizer's
    own template as an unused variable. Tokenizing options candlejax has no form for
    (``return_tensors``, ``padding``, ...) raise rather than being dropped."""
    from transformers import PreTrainedTokenizerFast

    import candlejax as cj

    other = "{% for m in messages %}{{ m['role'] }}={{ m['content'] }};{% endfor %}{{ eos_token }}"
    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=CHATML, eos_token="<|eos|>")
    msgs = [{"role": "user", "content": "Hello world"}]
    for tokenize in (False, True):
        got = tok.apply_chat_template(msgs, chat_template=other, tokenize=tokenize)
        assert got == ref.apply_chat_template(msgs, chat_template=other, tokenize=tokenize, return_dict=False)
    assert tok.apply_chat_template(msgs, chat_template=other, tokenize=False) == "user=Hello world;<|eos|>"
    bare = Tokenizer.from_gguf_metadata(_bpe_meta("gpt-2"))  # no template of its own
    assert bare.apply_chat_template(msgs, chat_template=other, tokenize=False) == "user=Hello world;<|eos|>"
    for kw in ({"return_tensors": "np"}, {"padding": True}, {"max_length": 4}, {"truncation": True},
               {"sanitize_control_tokens": True}):  # fmt: skip
        with pytest.raises(cj.errors.ArgumentType, match=f"apply_chat_template: {next(iter(kw))}="):
            tok.apply_chat_template(msgs, **kw)
    assert tok.apply_chat_template(msgs, return_tensors=None, padding=False) == tok.apply_chat_template(msgs)


def test_apply_chat_template_takes_dataclass_messages_like_transformers():
    """transformers renders dataclass messages (``candlejax.examples.chat_template.Message``, Candle's
    ``Message::user(...)``) as their fields; they were refused as not being dicts."""
    from transformers import PreTrainedTokenizerFast

    from candlejax.examples.chat_template import Message

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=CHATML)
    msgs = [Message.system("Be brief."), Message.user("Hello world")]
    want = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == want
    assert want.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_more_bad_inputs_raise_candlejax_errors():
    """These raised a bare TypeError, or jinja's TemplateSyntaxError (kept: the error is both)."""
    import jinja2

    import candlejax as cj
    from candlejax.examples import chat_template as ct
    from candlejax.tokenizer import ChatTemplate, load_tokenizer

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    with pytest.raises(cj.errors.ArgumentType, match=r"load_tokenizer: expected a path, got int"):
        Tokenizer.from_file(123)
    with pytest.raises(cj.errors.ArgumentType, match=r"load_tokenizer: expected a path, got NoneType"):
        load_tokenizer(None)
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.encode_batch: expected a list of str, got NoneType"):
        tok.encode_batch(None)
    with pytest.raises(cj.errors.ArgumentType, match="chat template: the template must be a str, got NoneType"):
        ChatTemplate(None)
    bad = "{% for %}"
    for make in (lambda: ChatTemplate(bad), lambda: tok.apply_chat_template([{"role": "user"}], chat_template=bad)):
        with pytest.raises(cj.Error, match="chat template: TemplateSyntaxError: Expected an expression") as e:
            make()
        assert isinstance(e.value, jinja2.TemplateSyntaxError)  # what transformers raises
    with pytest.raises(ct.TemplateError, match=r"^Template error: Expected an expression"):  # Candle's wording
        ct.ChatTemplate("{% for %}")
    with pytest.raises(cj.errors.ArgumentType, match="chat template: messages must be a list"):
        ct.ChatTemplate.chatml().apply(None)


def test_apply_chat_template_batch_of_conversations_like_transformers():
    """transformers renders a list of conversations as a batch; it was refused."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_gguf_metadata(dict(_bpe_meta("gpt-2"), **{"tokenizer.chat_template": CHATML}))
    ref = PreTrainedTokenizerFast(tokenizer_object=tok.hf, chat_template=CHATML)
    batch = [[{"role": "user", "content": "Hello world"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "Hello"}]]  # fmt: skip
    for tokenize in (False, True):
        got = tok.apply_chat_template(batch, add_generation_prompt=True, tokenize=tokenize)
        assert got == ref.apply_chat_template(batch, add_generation_prompt=True, tokenize=tokenize, return_dict=False)
    got = tok.apply_chat_template(batch, return_dict=True)
    want = ref.apply_chat_template(batch, return_dict=True)
    assert got == {"input_ids": want["input_ids"], "attention_mask": want["attention_mask"]}


def test_decode_refuses_a_batch_of_rows():
    """A (2, n) array was flattened and decoded as one text, the rows run together (transformers
    decodes each row; Candle's ``decode`` takes one sequence): it raises, naming ``decode_batch``."""
    import candlejax as cj

    tok = Tokenizer.from_gguf_metadata(_bpe_meta("gpt-2"))
    rows = np.array([_ids(tok.hf, "Hello"), _ids(tok.hf, "world")[:1]])
    with pytest.raises(cj.errors.InvalidArgument, match=r"decode: .*shape \(2, 1\) \(2 rows\).*decode_batch"):
        tok.decode(rows)
    with pytest.raises(cj.errors.InvalidArgument, match="decode_batch"):
        tok.decode(cj.Tensor(rows.astype(np.uint32)))
    assert tok.decode_batch(rows) == [tok.decode(r) for r in rows]
    assert tok.decode(rows[:1]) == tok.decode(rows[0])  # one row: its text
