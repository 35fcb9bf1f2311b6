"""The model configuration of a GGUF LLaMA-family file: :func:`config_from_gguf` reads llama.cpp's
metadata keys (``{arch}.block_count``, ``{arch}.embedding_length``, ...) into a
:class:`candlejax.models.llama.Config`, validated against the tensor shapes before anything is
allocated. Used by :mod:`candlejax.models.quantized_llama`, which re-exports these names.
"""

from __future__ import annotations

import re
from typing import Any

from candlejax import errors
from candlejax.models.llama import Config
from candlejax.tensor import int_arg

__all__ = ["GGML_NAMES", "MAX_SEQ_LEN", "SUPPORTED_ARCHITECTURES", "GgmlTensors", "check_architecture",
           "config_from_ggml", "config_from_gguf"]  # fmt: skip

#: ``general.architecture`` values this loader implements (llama.cpp names; Mistral files say "llama")
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
#: Candle's ``quantized_llama::MAX_SEQ_LEN`` (the length of its rotary tables), which Candle's
#: ``quantized`` example uses to trim long prompts. Here positions are bounded by the file's
#: ``llama.context_length`` instead (``model.config.max_position_embeddings``; beyond it
#: ``forward`` raises), so a model with a longer context is not cut at 4096.
MAX_SEQ_LEN = 4096


def _meta(content: Any, key: str, default: Any = None) -> Any:
    v = content.metadata.get(key)
    return default if v is None else v.value


def check_architecture(content: Any) -> str:
    """``general.architecture`` of the file; raises unless this loader implements it."""
    arch = _meta(content, "general.architecture", "llama")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise errors.Msg(
            f"quantized_llama: {getattr(content, 'path', 'the GGUF file')}: general.architecture {arch!r} is not"
            f" implemented (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return str(arch)


#: caps on GGUF metadata, far above any released model, so that a corrupt value raises before it
#: sizes an allocation or a loop
MAX_LAYERS = 1 << 12
MAX_WIDTH = 1 << 17  # embedding / feed-forward / head widths
MAX_HEADS = 1 << 12
MAX_VOCAB = 1 << 22
MAX_CONTEXT = 1 << 24


def config_from_gguf(content: Any) -> Config:
    """A :class:`Config` from GGUF metadata (``{arch}.block_count``, ``{arch}.embedding_length``, ...),
    validated against the tensor shapes before anything is allocated: a missing or absurd key, heads
    that do not divide the width, a block count that disagrees with the ``blk.N`` tensors, or a
    tensor of another shape raises :class:`candlejax.errors.Gguf` naming the file and key or tensor."""
    arch = check_architecture(content)
    path = getattr(content, "path", "<gguf>")
    k = f"{arch}.".__add__

    def bad(msg: str) -> errors.Gguf:
        return errors.Gguf(f"gguf {path}: {msg}")

    n_layer = content.get_int(k("block_count"), min=1, max=MAX_LAYERS)
    hidden = content.get_int(k("embedding_length"), min=1, max=MAX_WIDTH)
    ff = content.get_int(k("feed_forward_length"), min=1, max=MAX_WIDTH)
    n_head = content.get_int(k("attention.head_count"), min=1, max=min(hidden, MAX_HEADS))
    n_kv = content.get_int(k("attention.head_count_kv"), n_head, min=1, max=n_head)
    if n_head % n_kv:
        raise bad(f"metadata {k('attention.head_count_kv')!r} = {n_kv} does not divide"
                  f" {k('attention.head_count')!r} = {n_head}")  # fmt: skip
    head_dim = content.get_int(k("attention.key_length"), None, min=2, max=MAX_WIDTH)
    if head_dim is None:
        if hidden % n_head:
            raise bad(f"metadata {k('attention.head_count')!r} = {n_head} does not divide"
                      f" {k('embedding_length')!r} = {hidden}")  # fmt: skip
        head_dim = hidden // n_head
    src = "attention.key_length" if k("attention.key_length") in content.metadata else "embedding_length / head_count"
    for key in ("attention.value_length", "rope.dimension_count"):
        v = content.get_int(k(key), head_dim, min=1, max=MAX_WIDTH)
        if v != head_dim:  # partial rotary / distinct value heads: not this architecture
            raise bad(f"metadata {k(key)!r} = {v} differs from the head size {head_dim} ({src}); the loader"
                      " implements rotary embeddings over whole heads of one size")  # fmt: skip
    if head_dim % 2:
        raise bad(f"the head size {head_dim} is odd: rotary embeddings rotate pairs")
    ctx = content.get_int(k("context_length"), 4096, min=1, max=MAX_CONTEXT)
    eps = content.get_float(k("attention.layer_norm_rms_epsilon"), 1e-5, positive=True, max=1.0)
    theta = content.get_float(k("rope.freq_base"), 10000.0, positive=True)
    # llama.cpp: the factor is `rope.scaling.factor` (older files: `rope.scale_linear`) and the type
    # defaults to linear, so a factor without a type scales the positions too
    scaling = None
    factor = content.get_float(k("rope.scaling.factor"), None, positive=True)
    if factor is None:
        factor = content.get_float(k("rope.scale_linear"), None, positive=True)
    kind = content.get_str(k("rope.scaling.type"), "linear", choices=("none", "linear"))
    if kind == "linear" and factor is not None and factor != 1.0:
        scaling = {"rope_type": "linear", "factor": factor}
    experts = content.get_int(k("expert_count"), 0, min=0)
    if experts:
        raise bad(f"metadata {k('expert_count')!r} = {experts}: mixture-of-experts feed-forward layers"
                  " are not implemented")  # fmt: skip
    causal = _meta(content, k("attention.causal"), True)
    if not causal:
        raise bad(f"metadata {k('attention.causal')!r} is {causal!r}: the loader implements causal attention only")

    infos = content.tensor_infos
    embd = infos.get("token_embd.weight")
    if embd is None:
        raise bad("missing tensor 'token_embd.weight'")
    rows = embd.shape[0] if len(embd.shape) == 2 else -1
    vocab = content.get_int(k("vocab_size"), rows if rows > 0 else None, min=1, max=MAX_VOCAB)
    if vocab is None:
        raise bad(f"tensor 'token_embd.weight' has shape {errors.fmt_shape(embd.shape)}, expected (vocab, {hidden})")
    content.get_array("tokenizer.ggml.tokens", None, max_len=vocab)  # no token id past the embedding rows

    # the tensors, in Candle's (out, in) order
    blocks = {int(m.group(1)) for m in (re.match(r"blk\.(\d+)\.", n) for n in infos) if m}
    if blocks != set(range(n_layer)):
        have = f"blk.0 .. blk.{max(blocks)}" if blocks == set(range(len(blocks))) else f"blk.{sorted(blocks)[:8]}"
        raise bad(f"metadata {k('block_count')!r} = {n_layer}, but the file holds tensors of"
                  f" {len(blocks)} block(s) ({have if blocks else 'none'})")  # fmt: skip
    q, kvw = n_head * head_dim, n_kv * head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if "output.weight" in infos:
        shapes["output.weight"] = (vocab, hidden)
    if "rope_freqs.weight" in infos:
        shapes["rope_freqs.weight"] = (head_dim // 2,)
    qkv_bias = "blk.0.attn_q.bias" in infos
    for i in range(n_layer):
        b = f"blk.{i}."
        shapes.update({b + "attn_norm.weight": (hidden,), b + "ffn_norm.weight": (hidden,),
                       b + "attn_q.weight": (q, hidden), b + "attn_k.weight": (kvw, hidden),
                       b + "attn_v.weight": (kvw, hidden), b + "attn_output.weight": (hidden, q),
                       b + "ffn_gate.weight": (ff, hidden), b + "ffn_up.weight": (ff, hidden),
                       b + "ffn_down.weight": (hidden, ff)})  # fmt: skip
        for nm, width in (("attn_q", q), ("attn_k", kvw), ("attn_v", kvw)):
            if qkv_bias or b + nm + ".bias" in infos:
                shapes[b + nm + ".bias"] = (width,)
    for name, shape in shapes.items():
        content.expect_shape(name, shape)

    def token_id(key: str) -> int | None:  # some converters write -1 for "none"
        i = content.get_int(f"tokenizer.ggml.{key}", None)
        return None if i is None or i < 0 else i

    return Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ff,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=ctx,
        rms_norm_eps=eps,
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings="output.weight" not in infos,
        bos_token_id=token_id("bos_token_id"),
        eos_token_id=token_id("eos_token_id"),
        pad_token_id=token_id("padding_token_id"),
        torch_dtype="float32",
        # llama.cpp permutes llama's q/k rows for rope on interleaved pairs; qwen2 keeps the halves
        rope_interleaved=arch == "llama",
        model_type=None,
        qkv_bias=qkv_bias,
    )


#: The tensors Candle's ``ModelWeights::from_ggml`` reads (its names, in its order) -> llama.cpp's GGUF
#: names; ``{i}`` is the layer. GGML and GGUF files hold q/k with the same row permutation.
GGML_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}  # fmt: skip
GGML_LAYER_NAMES = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
                    "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
                    "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}  # fmt: skip


def _ggml_names(n_layer: int) -> dict[str, str]:
    names = dict(GGML_NAMES)
    for i in range(n_layer):
        names.update({f"layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in GGML_LAYER_NAMES.items()})
    return names


def config_from_ggml(ct: Any, gqa: int) -> Config:
    """The :class:`Config` of Candle's ``ModelWeights::from_ggml(ct, gqa)`` for a legacy GGML/GGJT
    ``ggml_file.Content``: rope theta 10000, rms eps 1e-5, ``n_kv_head = n_head / gqa``,
    ``head_dim = n_embd / n_head``, rotary on interleaved pairs over ``MAX_SEQ_LEN`` positions. A tensor
    Candle reads that is missing raises as Candle's ``cannot find tensor with name '...'``; a ``gqa``
    that does not divide ``n_head``, or a tensor of another shape than the hparams imply, raises too."""
    gqa = int_arg(gqa, "quantized_llama from_ggml", "gqa")
    if gqa < 1:
        raise errors.Msg(f"quantized_llama from_ggml: gqa must be >= 1, got {gqa}")
    h = ct.hparams
    if not 1 <= h.n_layer <= MAX_LAYERS or not 1 <= h.n_head <= MAX_HEADS or not 1 <= h.n_embd <= MAX_WIDTH:
        raise errors.Msg(f"quantized_llama from_ggml: hparams n_layer {h.n_layer}, n_head {h.n_head}, n_embd"
                         f" {h.n_embd} out of range")  # fmt: skip
    if h.n_embd % h.n_head or (h.n_embd // h.n_head) % 2:
        raise errors.Msg(f"quantized_llama from_ggml: n_head {h.n_head} does not divide n_embd {h.n_embd} into"
                         " heads of an even size")  # fmt: skip
    if h.n_head % gqa:
        raise errors.Msg(f"quantized_llama from_ggml: gqa {gqa} does not divide n_head {h.n_head}")
    names = _ggml_names(h.n_layer)
    for name in names:
        if name not in ct.tensors:
            raise errors.Msg(f"cannot find tensor with name '{name}'")  # Candle's ggml_file Content::remove
    n_kv, head_dim = h.n_head // gqa, h.n_embd // h.n_head
    vocab, hidden = ct.tensors["tok_embeddings.weight"].dims()[0], h.n_embd
    ff = ct.tensors["layers.0.feed_forward.w1.weight"].dims()[0]
    q, kv = h.n_head * head_dim, n_kv * head_dim
    want = {"tok_embeddings.weight": (vocab, hidden), "norm.weight": (hidden,), "output.weight": (vocab, hidden)}
    per_layer = {"attention.wq": (q, hidden), "attention.wk": (kv, hidden), "attention.wv": (kv, hidden),
                 "attention.wo": (hidden, q), "feed_forward.w1": (ff, hidden), "feed_forward.w2": (hidden, ff),
                 "feed_forward.w3": (ff, hidden), "attention_norm": (hidden,), "ffn_norm": (hidden,)}  # fmt: skip
    for i in range(h.n_layer):
        want.update({f"layers.{i}.{k}.weight": v for k, v in per_layer.items()})
    for name, shape in want.items():
        got = ct.tensors[name].dims()
        if got != shape:
            raise errors.Msg(
                f"quantized_llama from_ggml: tensor '{name}' has shape {errors.fmt_shape(got)}, the hparams"
                f" (n_embd {hidden}, n_head {h.n_head}, gqa {gqa}) imply {errors.fmt_shape(shape)}"
            )
    return Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=ff, num_hidden_layers=h.n_layer,
                  num_attention_heads=h.n_head, num_key_value_heads=n_kv, head_dim=head_dim,
                  max_position_embeddings=MAX_SEQ_LEN, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
                  tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  torch_dtype="float32", rope_interleaved=True, model_type=None, qkv_bias=False)  # fmt: skip


class GgmlTensors:
    """A ``ggml_file.Content``'s tensors under llama.cpp's GGUF names (``tensor_infos``, ``tensor_view``,
    ``tensor_bytes``), for the GGUF loader; tensors Candle's ``from_ggml`` does not read keep their names."""

    path = "the GGML file"

    def __init__(self, ct: Any):
        from candlejax.io.gguf import TensorInfo

        names = _ggml_names(ct.hparams.n_layer)
        self._tensors = {names.get(k, k): v for k, v in ct.tensors.items()}
        self.tensor_infos = {k: TensorInfo(v.dtype(), v.dims(), 0) for k, v in self._tensors.items()}

    def tensor_view(self, name: str) -> Any:
        """One tensor's raw block bytes (flat uint8, read-only)."""
        return self._tensors[name].data()

    def tensor_bytes(self, name: str) -> Any:
        """A host copy of one tensor's raw block bytes (flat uint8)."""
        return self.tensor_view(name).copy()
