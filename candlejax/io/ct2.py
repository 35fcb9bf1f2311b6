"""CTranslate2 model files (``model.bin``, binary version <= 6): a bounds-checked reader and a
one-time converter of CTranslate2 Whisper models to a Hugging Face-layout safetensors folder.

    from candlejax.io import ct2
    m = ct2.Ct2Model.read("whisper-tiny.en-ct2/model.bin")
    m.spec, m.shape("encoder/conv1/weight")
    ('WhisperSpec', (384, 80, 3))
    ct2.convert_whisper("whisper-tiny.en-ct2", "whisper-tiny.en")   # config.json + model.safetensors + tokenizer.json

Layout (little-endian): ``u32 version``, ``str spec``, ``u32 revision``, ``u32 n_vars``; per
variable ``str name``, ``u8 rank``, ``u32 dims[rank]``, ``u8 dtype`` (0 f32, 1 i8, 2 i16, 3 i32,
4 f16, 5 bf16), ``u32 nbytes``, the raw data; then ``u32 n_aliases`` and ``(str alias, str
target)`` pairs. A ``str`` is a ``u16`` length and that many bytes, NUL-terminated.

Every header field is checked against the file size before anything is allocated: a truncated
file, an absurd rank or count, a size that disagrees with the shape, or an unknown dtype raises
:class:`candlejax.errors.Ct2` naming the file and the variable.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from candlejax import errors

__all__ = ["Ct2Model", "Ct2Variable", "convert_whisper", "tokenizer_vocab", "whisper_hf_config", "whisper_state_dict"]

_DTYPES: dict[int, tuple[str, Any]] = {
    0: ("float32", np.float32),
    1: ("int8", np.int8),
    2: ("int16", np.int16),
    3: ("int32", np.int32),
    4: ("float16", np.float16),
    5: ("bfloat16", None),  # read as uint16 and widened to f32
}
_MAX_RANK = 8
_MAX_VERSION = 6


@dataclass(frozen=True)
class Ct2Variable:
    """One stored variable: its name, shape, CTranslate2 dtype name and byte range in the file."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


class _Cursor:
    def __init__(self, buf: Any, path: str):
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def fail(self, what: str, where: str) -> errors.Ct2:
        return errors.Ct2(f"ct2: {self.path}: {where}: {what} (byte offset {self.pos}, file size {self.size})")

    def take(self, n: int, where: str) -> memoryview:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated file: need {n} bytes", where)
        out = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, where: str) -> Any:
        n = struct.calcsize("<" + fmt)
        vals = struct.unpack("<" + fmt, self.take(n, where))
        return vals if len(vals) > 1 else vals[0]

    def string(self, where: str) -> str:
        n = self.unpack("H", where)
        raw = bytes(self.take(n, where))
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("string is not valid UTF-8", where) from None


class Ct2Model:
    """A CTranslate2 ``model.bin`` opened read-only (memory-mapped; tensors are read on demand)."""

    def __init__(self, path: str, version: int, spec: str, revision: int, variables: dict[str, Ct2Variable],
                 aliases: dict[str, str], buf: Any):  # fmt: skip
        self.path, self.version, self.spec, self.revision = path, version, spec, revision
        self.variables, self.aliases, self._buf = variables, aliases, buf

    @staticmethod
    def read(path: str | os.PathLike) -> Ct2Model:
        """Open ``path`` (a ``model.bin`` or the folder holding one) and check its whole header."""
        path = errors.path_arg(path, "ct2")
        if os.path.isdir(path):
            path = os.path.join(path, "model.bin")
        if not os.path.isfile(path):  # as every reader (errors.check_file), and still an errors.Ct2
            raise errors.Ct2NoSuchFile("ct2", path, message=f"ct2: cannot open {path}: no such file")
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise errors.Ct2(f"ct2: cannot open {path}: {e.strerror or e}") from None
        try:
            return Ct2Model._parse(path, buf, size)
        except BaseException:
            if isinstance(buf, mmap.mmap):  # the traceback keeps this frame (and so the map) alive
                with contextlib.suppress(BufferError):
                    buf.close()
            raise

    @staticmethod
    def _parse(path: str, buf: Any, size: int) -> Ct2Model:
        cur = _Cursor(buf, path)
        if size == 0:
            raise cur.fail("empty file, not a CTranslate2 model", "header")
        version = cur.unpack("I", "header version")
        if not 1 <= version <= _MAX_VERSION:
            raise cur.fail(f"unsupported binary version {version} (expected 1..{_MAX_VERSION}; not a CTranslate2"
                           " model.bin?)", "header")  # fmt: skip
        spec, revision = "", 1
        if version >= 2:
            spec = cur.string("header spec")
            revision = cur.unpack("I", "header revision")
        n_vars = cur.unpack("I", "header variable count")
        if n_vars * 8 > size - cur.pos:  # each variable needs at least ~8 header bytes
            raise cur.fail(f"variable count {n_vars} cannot fit in the file", "header")
        variables: dict[str, Ct2Variable] = {}
        for i in range(n_vars):
            name = cur.string(f"name of variable #{i}")
            where = f"variable {name!r}"
            rank = cur.unpack("B", where)
            if rank > _MAX_RANK:
                raise cur.fail(f"rank {rank} > {_MAX_RANK}", where)
            dims = struct.unpack(f"<{rank}I", cur.take(4 * rank, where))
            if version >= 4:
                code = cur.unpack("B", where)
                nbytes = cur.unpack("I", where)
            else:  # v1-3: u8 item size, u32 element count, float32/int8 only
                item = cur.unpack("B", where)
                count = cur.unpack("I", where)
                code = {4: 0, 1: 1, 2: 2}.get(item, -1)
                nbytes = item * count
            if code not in _DTYPES:
                raise cur.fail(f"unknown dtype id {code}", where)
            dname, npt = _DTYPES[code]
            itemsize = 2 if npt is None else np.dtype(npt).itemsize
            expect = math.prod(dims) * itemsize  # Python ints: np.prod(int64) wraps 65536**4 to 0
            if nbytes != expect:
                raise cur.fail(f"{nbytes} data bytes for shape {list(dims)} {dname} (expected {expect})", where)
            offset = cur.pos
            cur.take(nbytes, where)
            if name in variables:
                raise cur.fail("duplicate variable name", where)
            variables[name] = Ct2Variable(name, dims, dname, offset, nbytes)
        aliases: dict[str, str] = {}
        if version >= 3 and cur.pos < size:
            n_alias = cur.unpack("I", "alias count")
            if n_alias * 4 > size - cur.pos:
                raise cur.fail(f"alias count {n_alias} cannot fit in the file", "aliases")
            for i in range(n_alias):
                alias = cur.string(f"alias #{i}")
                target = cur.string(f"target of alias {alias!r}")
                if target not in variables:
                    raise cur.fail(f"alias {alias!r} points to missing variable {target!r}", "aliases")
                if alias in variables or alias in aliases:
                    what = "a variable" if alias in variables else "another alias"
                    raise cur.fail(f"alias {alias!r} has the name of {what}; the name is ambiguous", "aliases")
                aliases[alias] = target
        return Ct2Model(path, version, spec, revision, variables, aliases, buf)

    def names(self) -> list[str]:
        """The variable names in the model file, aliases included, sorted."""
        return sorted([*self.variables, *self.aliases])

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases

    def _var(self, name: str) -> Ct2Variable:
        v = self.variables.get(self.aliases.get(name, name))
        if v is None:
            raise errors.Ct2(f"ct2: {self.path}: no variable {name!r} (spec {self.spec})")
        return v

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of variable ``name``."""
        return self._var(name).shape

    def dtype(self, name: str) -> str:
        """The CTranslate2 dtype string of variable ``name``."""
        return self._var(name).dtype

    def get(self, name: str) -> np.ndarray:
        """A copy of variable ``name`` as numpy (bf16 is widened to f32)."""
        v = self._var(name)
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=v.nbytes, offset=v.offset)
        npt = _DTYPES[next(k for k, d in _DTYPES.items() if d[0] == v.dtype)][1]
        if npt is None:
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(v.shape)
        return raw.view(npt).reshape(v.shape).copy()

    def scalar(self, name: str) -> Any:
        """Variable ``name`` as a Python number; raises ``errors.Ct2`` unless it holds one value."""
        a = self.get(name)
        if a.size != 1:
            raise errors.Ct2(f"ct2: {self.path}: variable {name!r} has shape {list(a.shape)}, expected a scalar")
        return a.reshape(()).item()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` for each stored variable (aliases excepted)."""
        for name in self.variables:
            yield name, self.get(name)


# ------------------------------------------------------------------------------------------------
# Whisper: CTranslate2 WhisperSpec -> transformers WhisperForConditionalGeneration names
# ------------------------------------------------------------------------------------------------
def _float(model: Ct2Model, name: str) -> np.ndarray:
    if model.dtype(name) not in ("float32", "float16", "bfloat16"):
        raise errors.Ct2(
            f"ct2: {model.path}: variable {name!r} is {model.dtype(name)}: quantized CTranslate2 weights are not"
            " supported (convert the model with --quantization float16 or float32)"
        )
    return model.get(name)


def _split_attn(model: Ct2Model, src: str, dst: str, out: dict[str, np.ndarray], cross: bool) -> None:
    if cross:
        names = [("linear_0", ["q_proj"]), ("linear_1", ["k_proj", "v_proj"]), ("linear_2", ["out_proj"])]
    else:
        names = [("linear_0", ["q_proj", "k_proj", "v_proj"]), ("linear_1", ["out_proj"])]
    for lin, parts in names:
        w = _float(model, f"{src}/{lin}/weight")
        b = _float(model, f"{src}/{lin}/bias") if f"{src}/{lin}/bias" in model else None
        for j, (pw, pb) in enumerate(zip(np.split(w, len(parts)), np.split(b, len(parts)) if b is not None
                                         else [None] * len(parts))):  # fmt: skip
            out[f"{dst}.{parts[j]}.weight"] = pw
            if pb is not None and parts[j] != "k_proj":
                out[f"{dst}.{parts[j]}.bias"] = pb
    out[f"{dst}_layer_norm.weight"] = _float(model, f"{src}/layer_norm/gamma")
    out[f"{dst}_layer_norm.bias"] = _float(model, f"{src}/layer_norm/beta")


def _check_whisper(model: Ct2Model) -> None:
    if model.spec != "WhisperSpec":
        raise errors.Ct2(
            f"ct2: {model.path}: spec {model.spec!r} is not a Whisper model (expected 'WhisperSpec')"
        )


def _n_layers(model: Ct2Model, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in model:
        n += 1
    if n == 0:
        raise errors.Ct2(f"ct2: {model.path}: no {side} layers found ({side}/layer_0/ffn/linear_0/weight)")
    return n


def whisper_state_dict(model: Ct2Model, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The weights of a CTranslate2 Whisper model under transformers' names (``model.encoder...``)."""
    _check_whisper(model)
    out: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        p = f"model.{side}"
        if side == "encoder":
            for c in ("conv1", "conv2"):
                out[f"{p}.{c}.weight"] = _float(model, f"encoder/{c}/weight")
                out[f"{p}.{c}.bias"] = _float(model, f"encoder/{c}/bias")
        else:
            out[f"{p}.embed_tokens.weight"] = _float(model, "decoder/embeddings/weight")
        out[f"{p}.embed_positions.weight"] = _float(model, f"{side}/position_encodings/encodings")
        for i in range(_n_layers(model, side)):
            src, dst = f"{side}/layer_{i}", f"{p}.layers.{i}"
            _split_attn(model, f"{src}/self_attention", f"{dst}.self_attn", out, cross=False)
            if side == "decoder":
                _split_attn(model, f"{src}/attention", f"{dst}.encoder_attn", out, cross=True)
            out[f"{dst}.final_layer_norm.weight"] = _float(model, f"{src}/ffn/layer_norm/gamma")
            out[f"{dst}.final_layer_norm.bias"] = _float(model, f"{src}/ffn/layer_norm/beta")
            for j, fc in enumerate(("fc1", "fc2")):
                out[f"{dst}.{fc}.weight"] = _float(model, f"{src}/ffn/linear_{j}/weight")
                out[f"{dst}.{fc}.bias"] = _float(model, f"{src}/ffn/linear_{j}/bias")
        out[f"{p}.layer_norm.weight"] = _float(model, f"{side}/layer_norm/gamma")
        out[f"{p}.layer_norm.bias"] = _float(model, f"{side}/layer_norm/beta")
    return {k: np.ascontiguousarray(v.astype(dtype)) for k, v in out.items()}


def _token_id(vocab: dict[str, int], *names: str) -> int | None:
    for n in names:
        if n in vocab:
            return int(vocab[n])
    return None


def _json_object(path: str) -> dict:
    """The object of the JSON file ``path``; a :class:`errors.Ct2` naming it when unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge ints; nesting
        raise errors.Ct2(f"ct2: cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise errors.Ct2(f"ct2: {path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def tokenizer_vocab(tokenizer_json: str) -> dict[str, int]:
    """The token → id map of a ``tokenizer.json`` (the model's vocab plus its ``added_tokens``)."""
    tok = _json_object(tokenizer_json)
    try:
        vocab = dict(tok.get("model", {}).get("vocab", {}))
        for t in tok.get("added_tokens", []):
            vocab[t["content"]] = t["id"]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise errors.Ct2(f"ct2: {tokenizer_json}: malformed vocab or added_tokens ({type(e).__name__}: {e})") from None
    return vocab


def whisper_hf_config(model: Ct2Model, ct2_config: dict | None = None, vocab: dict[str, int] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``(config.json, generation_config.json)`` for transformers' ``WhisperForConditionalGeneration``."""
    _check_whisper(model)
    ct2_config = ct2_config or {}
    vocab = vocab or {}
    n_vocab, d_model = model.shape("decoder/embeddings/weight")
    n_mels = model.shape("encoder/conv1/weight")[1]
    eot = _token_id(vocab, "<|endoftext|>") or 50256
    sot = _token_id(vocab, "<|startoftranscript|>") or 50257
    no_ts = _token_id(vocab, "<|notimestamps|>")
    suppress = [int(t) for t in ct2_config.get("suppress_ids", [])]
    for name in ("<|translate|>", "<|transcribe|>", "<|startoftranscript|>", "<|startofprev|>",
                 "<|startoflm|>", "<|nospeech|>", "<|nocaptions|>"):  # fmt: skip
        t = _token_id(vocab, name)
        if t is not None and t not in suppress:
            suppress.append(t)
    multilingual = n_vocab >= 51865
    cfg = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": n_vocab,
        "num_mel_bins": n_mels,
        "d_model": d_model,
        "encoder_layers": _n_layers(model, "encoder"),
        "decoder_layers": _n_layers(model, "decoder"),
        "encoder_attention_heads": int(model.scalar("encoder/num_heads")),
        "decoder_attention_heads": int(model.scalar("decoder/num_heads")),
        "encoder_ffn_dim": model.shape("encoder/layer_0/ffn/linear_0/weight")[0],
        "decoder_ffn_dim": model.shape("decoder/layer_0/ffn/linear_0/weight")[0],
        "max_source_positions": model.shape("encoder/position_encodings/encodings")[0],
        "max_target_positions": model.shape("decoder/position_encodings/encodings")[0],
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": [int(t) for t in ct2_config.get("suppress_ids_begin", [220, eot])],
        "torch_dtype": "float32",
    }
    gen = {
        "decoder_start_token_id": sot, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
        "max_length": cfg["max_target_positions"], "suppress_tokens": suppress,
        "begin_suppress_tokens": cfg["begin_suppress_tokens"], "no_timestamps_token_id": no_ts,
        "max_initial_timestamp_index": 50, "return_timestamps": False, "is_multilingual": multilingual,
        "alignment_heads": ct2_config.get("alignment_heads", []),
    }  # fmt: skip
    if multilingual:
        langs = set(ct2_config.get("lang_ids", []))
        gen["lang_to_id"] = {k: v for k, v in vocab.items() if k.startswith("<|") and v in langs}
        gen["task_to_id"] = {"transcribe": vocab.get("<|transcribe|>"), "translate": vocab.get("<|translate|>")}
    return cfg, gen


def convert_whisper(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float32") -> str:
    """Convert a CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``) to a
    Hugging Face folder ``dst``: ``config.json``, ``generation_config.json``, ``model.safetensors``
    (``dtype`` float32 or float16) and ``tokenizer.json``. Every file is written atomically.
    """
    from safetensors.numpy import save as st_save

    from candlejax.io.safetensors import atomic_file

    src, dst = os.fspath(src), os.fspath(dst)
    model = Ct2Model.read(src)
    _check_whisper(model)
    src_dir = os.path.dirname(model.path)
    ct2_cfg: dict = {}
    if os.path.exists(os.path.join(src_dir, "config.json")):
        ct2_cfg = _json_object(os.path.join(src_dir, "config.json"))
    tok = os.path.join(src_dir, "tokenizer.json")
    if not os.path.exists(tok):
        raise errors.Ct2(f"ct2: {src_dir}: no tokenizer.json next to {model.path}")
    vocab = tokenizer_vocab(tok)
    if dtype not in ("float32", "float16"):
        raise errors.Ct2(f"ct2: convert_whisper: dtype must be 'float32' or 'float16', got {dtype!r}")
    tensors = whisper_state_dict(model, np.float32 if dtype == "float32" else np.float16)
    cfg, gen = whisper_hf_config(model, ct2_cfg, vocab)
    cfg["torch_dtype"] = dtype
    os.makedirs(dst, exist_ok=True)
    with atomic_file(os.path.join(dst, "model.safetensors")) as f:
        f.write(st_save(tensors, metadata={"format": "pt", "source": "ctranslate2"}))
    for name, obj in (("config.json", cfg), ("generation_config.json", gen)):
        with atomic_file(os.path.join(dst, name)) as f:
            f.write(json.dumps(obj, indent=2).encode())
    with atomic_file(os.path.join(dst, "tokenizer.json")) as f, open(tok, "rb") as g:
        shutil.copyfileobj(g, f)
    return dst
