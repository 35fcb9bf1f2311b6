"""Quantized LLaMA from GGUF files (llama.cpp's format): weights stay GGML-quantised in memory and
are expanded inside the compiled step.

Paper: "LLaMA: Open and Efficient Foundation Language Models", https://arxiv.org/abs/2302.13971.
Architecture as Hugging Face ``transformers/models/llama/modeling_llama.py``; tensor names and
metadata keys as llama.cpp's ``llama`` architecture (``blk.N.attn_q.weight``,
``llama.attention.head_count``, ...). Candle: ``candle-transformers/src/models/quantized_llama.rs``.

>>> model = ModelWeights.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", Device.Cpu)
>>> ids = model.tokenizer.encode("The capital of France is")
>>> logits = model.forward(Tensor.new([ids], Device.Cpu).to_dtype(DType.U32), 0)   # (1, vocab)

``ModelWeights`` is a :class:`candlejax.models.llama.Llama` whose linear layers are
:class:`QLinear` (the same blocks, norms and pure :func:`step`), so
``candlejax.generation.generate(step, model, model.new_cache(1, 512), ids, 128, ...)`` drives it.

Two GGUF details matter:

* llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that rotary embeddings
  rotate interleaved pairs ``(x[2i], x[2i+1])`` instead of the two halves transformers rotates.
  The model therefore applies ``rope_i`` (interleaved) to GGUF weights; q·k is unchanged because
  q and k carry the same permutation, and v / the output projection are not permuted.
* Q4_0/Q4_1/Q8_0 weights are kept in the file's layout (:class:`candlejax.quantized.PackedWeight`,
  0.56-1.06 bytes per weight) and multiplied by the native CPU kernel
  (:mod:`candlejax.quantized.native`) when it is built (not on a mesh). Otherwise, and for Q5_0/Q5_1, they
  are held as :class:`candlejax.quantized.BlockedWeight` (one byte per value plus f16 block
  scales/offsets, bit-identical values), the layout :class:`candlejax.quantized.QMatMul` uses:
  XLA fuses the expansion into the matrix-vector product of a decode step, so it reads ~1.1 bytes
  per weight. Other GGML types are kept packed and expanded inside the step by QMatMul.

Layers whose block types agree (every single-type file) are stacked at load time and run under
``lax.scan`` (``from_gguf(..., layers="scan")``, the default; :func:`candlejax.nn.quantized.scan_layers`):
one layer is compiled; stacked blocked weights are sliced inside the fused products and packed
ones read in place by the kernel; ``layers="unrolled"`` compiles every layer.

``from_ggml(ggml_file.Content.read(path), gqa)`` loads llama.cpp's legacy GGML/GGJT files (Candle's
names ``layers.N.attention.wq.weight``, ... mapped onto the GGUF ones; the same model).

``from_gguf(path, mesh=mesh)`` loads the model tensor-parallel (Megatron-style, by
:data:`candlejax.distributed.llama_tp_rules`): the same :func:`step` then runs over the mesh.
"""

from __future__ import annotations

import mmap
import os
import re
from typing import Any

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.llama import (
    Attached,
    Block,
    Cache,
    CausalSelfAttention,
    Config,
    Llama,
    Mlp,
    forward_all,
    rope_inv_freq,
    rotary_for,
    step,
)
from candlejax.models.quantized_llama_config import (
    MAX_SEQ_LEN,
    SUPPORTED_ARCHITECTURES,
    GgmlTensors,
    check_architecture,
    config_from_ggml,
    config_from_gguf,
)
from candlejax.nn.quantized import QEmbedding, QLinear, QRmsNorm
from candlejax.quantized import (
    BLOCKED_TYPES,
    PACKED_TYPES,
    BlockedWeight,
    PackedWeight,
    QMatMul,
    QTensor,
    aligned_empty,
    dequantize_np,
    native,
    place_aligned,
    unpack_blocked,
)
from candlejax.xla import trim_heap

__all__ = ["MAX_SEQ_LEN", "SUPPORTED_ARCHITECTURES", "Cache", "ModelWeights", "QEmbedding", "QLinear",
           "check_architecture", "config_from_ggml", "config_from_gguf", "forward_all", "step"]  # fmt: skip

class ModelWeights(Llama):
    """Candle's ``quantized_llama::ModelWeights``: a LLaMA-family GGUF model.

    ``ModelWeights.from_gguf(path, device)``; ``forward(tokens, index_pos)`` -> ``(batch, vocab)``
    logits of the last position, keeping its KV cache between calls; ``tokenizer`` (built from
    the GGUF metadata, with its chat template). A pytree of weights like :class:`Llama`: the pure
    form is :func:`step`.
    """

    @staticmethod
    def from_gguf(path: str | os.PathLike, device: Any = None, dequantize: str | None = None,
                  layers: str | None = None, strict: bool = True, mesh: Any = None,
                  rules: Any = None, *, abstract: bool = False, tokenizer: Any = None) -> ModelWeights:  # fmt: skip
        """Load a GGUF file (``general.architecture`` ``llama`` or a LLaMA-shaped family).

        Candle's order ``from_gguf(content, reader, device)`` is accepted too: ``content`` an open
        :class:`candlejax.io.gguf.Content` (``Content.read(f)``; it stays open, the caller closes
        it), ``reader`` the file it was read from (the content already maps it).

        ``dequantize`` (default: from ``CANDLE_DEQUANTIZE_ALL=1`` / ``CANDLE_DEQUANTIZE_ALL_F16=1``,
        as in Candle): ``"f32"`` or ``"f16"`` expands every linear weight once at load time. That
        trades memory (4 or 2 bytes per weight instead of ~0.6) for decode speed on the CPU, where
        XLA's dense matrix-vector products are several times faster than its fused
        expand-and-multiply loops. The embedding table stays quantised.

        Files of another ``general.architecture`` raise (naming the supported ones); tensors the
        model never reads raise too (``strict=False``: a warning).

        ``mesh`` (a ``jax.sharding.Mesh``): the weights are laid out on it by ``rules`` (default
        :data:`candlejax.distributed.llama_tp_rules`, tensor-parallel over ``"model"``: q/k/v and
        gate/up split by output rows, whole heads per device, kept as separate products; the
        output and down projections split by input columns on block boundaries; embeddings and
        norms replicated); ``device`` is then unused. A mesh that does not fit raises
        :class:`candlejax.distributed.ShardingError` naming the GGUF tensor, before any is read.

        ``abstract=True``: the same model with ``jax.ShapeDtypeStruct`` weights (shape, dtype and
        the device they will be placed on; no weight is loaded, the rotary table and tokenizer are
        real), for compiling the programs before the weights take memory
        (:func:`candlejax.generation.compile_generation`; like ``jax.eval_shape``). ``tokenizer``:
        attach this :class:`~candlejax.tokenizer.Tokenizer` instead of building the file's (e.g.
        the abstract model's, so that it is built once).
        """
        from candlejax.io.gguf import Content

        if isinstance(path, Content):  # Candle's from_gguf(content, &mut reader, &device)
            if device is not None and hasattr(device, "read"):  # the reader the content came from
                device, dequantize = dequantize, None
            return ModelWeights.from_content(path, device, dequantize, layers, strict, mesh, rules,
                                             abstract=abstract, tokenizer=tokenizer)  # fmt: skip
        if hasattr(path, "read") and not isinstance(path, str | os.PathLike):
            raise errors.Msg(
                "ModelWeights.from_gguf: got a file object; pass its path, or Candle's order"
                " `ModelWeights.from_gguf(gguf.Content.read(f), f, device)`"
            )
        content = Content.read(os.fspath(path))
        try:
            return ModelWeights.from_content(content, device, dequantize, layers, strict, mesh, rules,
                                             abstract=abstract, tokenizer=tokenizer)  # fmt: skip
        finally:
            content.close()
            del content
            trim_heap()  # the metadata and tokenizer-building garbage (~11 MiB on SmolLM2) back to the kernel

    @staticmethod
    def from_content(content: Any, device: Any = None, dequantize: str | None = None, layers: str | None = None,
                     strict: bool = True, mesh: Any = None, rules: Any = None, *, abstract: bool = False,
                     tokenizer: Any = None, config: Config | None = None) -> ModelWeights:  # fmt: skip
        """Build from an open ``candlejax.io.gguf.Content`` (the tensors are copied out of it;
        ``abstract`` and ``tokenizer`` as :meth:`from_gguf`; ``config``: this one instead of the
        metadata's, as :meth:`from_ggml` gives)."""
        if dequantize is None:
            env = os.environ.get
            dequantize = (
                "f32" if env("CANDLE_DEQUANTIZE_ALL", "") not in ("", "0")
                else "f16" if env("CANDLE_DEQUANTIZE_ALL_F16", "") not in ("", "0") else None
            )  # fmt: skip
        if dequantize not in (None, "f32", "f16"):
            raise errors.Msg(f"dequantize must be None, 'f32' or 'f16', got {dequantize!r}")

        dev = Device.coerce(device)
        cfg = config_from_gguf(content) if config is None else config
        if abstract and mesh is not None:
            raise errors.Msg("ModelWeights.from_gguf: abstract=True does not take a mesh; load on one device")
        if tokenizer is None:  # first: the garbage of building it is freed before the weights fill the heap
            tokenizer = _tokenizer(content)
            trim_heap()
        infos = content.tensor_infos
        read: set[str] = set()
        if layers is None:
            layers = "unrolled" if dequantize else "scan"
        if layers not in ("scan", "unrolled"):
            raise errors.Msg(f"layers must be 'scan' or 'unrolled', got {layers!r}")
        stack = layers == "scan" and _stackable(infos, cfg.num_hidden_layers)
        if mesh is not None:  # host leaves below, placed on the mesh at the end
            rules = _check_mesh(content, cfg, mesh, rules, stack, dequantize)

        sharding = jax.sharding.SingleDeviceSharding(dev.jax_device)

        def put(tree: Any) -> Any:
            if abstract:
                return _shapes(tree, dev)
            return tree if mesh is not None else _to_device(tree, dev)

        def info(name: str) -> Any:
            if name not in infos:
                raise errors.CannotFindTensor(name, f"cannot find tensor info for {name} in {content.path}")
            read.add(name)
            return infos[name]

        def lin(name: str) -> QLinear:  # host (numpy) leaves where possible; placed on the device later
            i = info(name)
            if dequantize is None and len(i.shape) == 2:  # these copy what they keep: read the mapped bytes
                if i.ggml_dtype in PACKED_TYPES and native.available() and mesh is None:
                    if abstract:  # the shape alone: nothing is read
                        return QLinear(PackedWeight.placeholder(i.ggml_dtype, tuple(i.shape), sharding))
                    return QLinear(PackedWeight.from_raw(content.tensor_view(name), i.ggml_dtype, tuple(i.shape)))
                if i.ggml_dtype in BLOCKED_TYPES:
                    q, scale, offset = unpack_blocked(content.tensor_view(name), i.ggml_dtype, tuple(i.shape))
                    return QLinear(BlockedWeight(q, scale, offset, i.ggml_dtype))
            raw = content.tensor_bytes(name)
            if dequantize is not None and name != "token_embd.weight":
                w = np.asarray(QTensor.from_data(raw, i.ggml_dtype, i.shape).dequantize().jax)
                return QLinear(w.astype(np.float16 if dequantize == "f16" else np.float32))
            qt = QTensor.from_data(raw, i.ggml_dtype, i.shape, None if mesh is not None else dev)
            return QLinear.from_qmatmul(QMatMul.from_qtensor(qt))

        def vec(name: str) -> np.ndarray:  # on the host: no program is compiled to expand a norm weight
            i = info(name)
            return dequantize_np(np.frombuffer(content.tensor_bytes(name), np.uint8), i.ggml_dtype, tuple(i.shape))

        n = cfg.num_hidden_layers
        # q/k/v and gate/up become one product each when their block types agree in every layer
        # (not on a mesh that splits them: each device then holds whole heads of q, k and v)
        fuse = FUSE_PRODUCTS and (mesh is None or rules == "replicate")
        fused = {k: fuse and all(_concatenable(infos, i, v, dequantize) for i in range(n)) for k, v in _FUSED.items()}

        def linb(i: int, name: str) -> QLinear:  # with the bias when the file has one (qwen2's q/k/v)
            q = lin(f"blk.{i}.{name}.weight")
            b = f"blk.{i}.{name}.bias"
            return QLinear(q.weight, vec(b).astype(np.float32) if b in infos else None, name == "attn_output")

        def part(i: int, name: str) -> Any:
            if name.endswith("_norm"):
                return vec(f"blk.{i}.{name}.weight")
            if name in _FUSED:
                return _concat([linb(i, nm) for nm in _FUSED[name]])
            return linb(i, name)

        def block(get: Any) -> Block:
            qkv = (get("attn_qkv"), None, None) if fused["attn_qkv"] else (get("attn_q"), get("attn_k"), get("attn_v"))
            attn = CausalSelfAttention(*qkv, get("attn_output"), cfg.num_attention_heads, cfg.num_key_value_heads,
                                       cfg.head_dim)  # fmt: skip
            gu = (get("ffn_gateup"), None) if fused["ffn_gateup"] else (get("ffn_gate"), get("ffn_up"))
            mlp = Mlp(*gu, get("ffn_down"))
            eps = cfg.rms_norm_eps
            return Block(QRmsNorm(get("attn_norm"), eps), attn, QRmsNorm(get("ffn_norm"), eps), mlp)

        # the embedding table first: its file pages and unpacked copy are the largest transient of
        # loading, and are released before the layers' weights accumulate
        embed = QEmbedding(put(lin("token_embd.weight")))
        _release_pages(content)
        if stack:
            names = [nm for nm in _PARTS if not any(fused[k] and nm in v for k, v in _FUSED.items())]
            names += [k for k in _FUSED if fused[k]]
            stacked = {}
            for name in names:
                if abstract:  # every layer's part has layer 0's shapes (_stackable)
                    stacked[name] = _shapes(part(0, name), dev, lead=n)
                    read.update(re.sub(r"^blk\.0\.", f"blk.{i}.", nm) for nm in list(read) for i in range(1, n))
                    continue
                stacked[name] = _stack(n, lambda i, nm=name: part(i, nm), None if mesh is not None else dev,
                                       lambda: _release_pages(content))  # fmt: skip
            blocks: Any = block(stacked.__getitem__)
        else:
            blocks = []
            for i in range(n):
                blocks.append(put(block(lambda name, i=i: part(i, name))))
                _release_pages(content)
        norm = put(QRmsNorm(vec("output_norm.weight"), cfg.rms_norm_eps))
        lm_head = None if cfg.tie_word_embeddings else put(lin("output.weight"))
        inv = rope_inv_freq(cfg)
        if "rope_freqs.weight" in infos:  # llama 3.1 GGUF: per-frequency divisors
            inv = (inv / vec("rope_freqs.weight").astype(np.float32)).astype(np.float32)
        rotary = rotary_for(cfg, inv if mesh is not None else jax.device_put(inv, dev.jax_device))
        unread = sorted(set(infos) - read)
        if unread:
            more = ", ..." if len(unread) > 8 else ""
            msg = (f"quantized_llama: {len(unread)} tensor(s) of {content.path} were never read: "
                   f"{', '.join(unread[:8])}{more} (the loader does not implement them)")  # fmt: skip
            if strict:
                raise errors.Msg(msg + "; pass strict=False to load anyway")
            errors.warn_at_caller(msg)
        model = ModelWeights(embed, blocks, norm, lm_head, rotary, cfg)
        if mesh is not None:
            from candlejax import distributed

            model = distributed.shard(model, mesh, rules)
        model._tokenizer = Attached(tokenizer)
        return model

    @staticmethod
    def from_ggml(ct: Any, gqa: int, device: Any = None, dequantize: str | None = None, layers: str | None = None,
                  strict: bool = True) -> ModelWeights:  # fmt: skip
        """Candle's ``ModelWeights::from_ggml(ct, gqa)``: a LLaMA from llama.cpp's legacy GGML/GGJT file.

        ``ct``: a :class:`candlejax.quantized.ggml_file.Content` (``ggml_file.Content.read(f, device)``)
        or the file's path. ``gqa``: query heads per key/value head (``n_kv_head = n_head / gqa``; 8 for
        LLaMA-2 70B). As Candle: rope theta 10000, rms eps 1e-5, rotary on interleaved pairs (GGML
        files hold q/k permuted as GGUF files do), no tokenizer. The model is placed on ``device``,
        else ``ct.device``; ``dequantize``, ``layers`` and ``strict`` as :meth:`from_gguf`.
        """
        from candlejax.quantized import ggml_file

        if isinstance(ct, str | os.PathLike):
            ct = ggml_file.Content.read(ct, device)
        elif not isinstance(ct, ggml_file.Content):
            raise errors.Msg(f"ModelWeights.from_ggml: ct must be a ggml_file.Content or a path, got"
                             f" {type(ct).__name__}")  # fmt: skip
        cfg = config_from_ggml(ct, gqa)
        why = "a GGML file holds no tokenizer; load its tokenizer.json with Tokenizer.from_file"
        return ModelWeights.from_content(GgmlTensors(ct), ct.device if device is None else device, dequantize,
                                         layers, strict, tokenizer=why, config=cfg)  # fmt: skip

    def clear_kv_cache(self) -> None:
        """Candle's ``ModelWeights::clear_kv_cache()``: drop the KV cache that :meth:`forward` keeps
        (the next ``forward`` starts a new sequence; :meth:`Llama.reset`)."""
        self.reset()

    @property
    def tokenizer(self) -> Any:
        """The :class:`candlejax.tokenizer.Tokenizer` stored in the GGUF file (with its chat template)."""
        tok = self._tokenizer.value
        if tok is None or isinstance(tok, str):
            raise errors.Msg(f"this model has no tokenizer ({tok or 'the GGUF file has no tokenizer.ggml.* metadata'})")
        return tok

    @property
    def dtype(self) -> DType:
        """The activations' dtype: always F32."""
        return DType.F32


def _tokenizer(content: Any) -> Any:
    """The file's tokenizer; ``None`` without ``tokenizer.ggml.tokens``, a reason (str, with a
    warning) for a tokenizer model the loader does not build; corrupt metadata raises (naming the file)."""
    from candlejax.tokenizer import Tokenizer

    if "tokenizer.ggml.tokens" not in content.metadata:
        return None
    kind = content.get_str("tokenizer.ggml.model", None)
    if kind not in ("gpt2", "llama"):
        why = f"{content.path}: tokenizer.ggml.model {kind!r} is not supported (supported: 'gpt2', 'llama')"
        errors.warn_at_caller(f"quantized_llama: {why}; the model loads without a tokenizer")
        return why
    return Tokenizer.from_gguf_metadata(content.metadata, content.path)


def _shapes(tree: Any, dev: Device, lead: int | None = None) -> Any:
    """``tree`` with a ``jax.ShapeDtypeStruct`` for each array: the shape (after ``lead`` stacked
    layers, if given), dtype and committed placement on ``dev`` that :func:`_to_device` gives."""
    sharding = jax.sharding.SingleDeviceSharding(dev.jax_device)

    def spec(a: Any) -> Any:
        if not isinstance(a, np.ndarray | jax.Array | jax.ShapeDtypeStruct):
            return a
        shape = a.shape if lead is None else (lead, *a.shape)
        return jax.ShapeDtypeStruct(shape, a.dtype, sharding=sharding)

    return jax.tree_util.tree_map(spec, tree)


def _to_device(tree: Any, dev: Device) -> Any:
    """Host leaves onto ``dev`` (shared, not copied, where :func:`~candlejax.quantized.place_aligned` can)."""
    return jax.tree_util.tree_map(lambda a: place_aligned(a, dev.jax_device), tree)


def _release_pages(content: Any) -> None:
    """Drop the GGUF file's mapped pages from this process's resident memory (they stay in the page
    cache and fault back in if read again): tensors are copied out, so keeping them mapped only
    raises peak RSS during loading."""
    for o in getattr(content, "_owned", ()):
        if isinstance(o, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                o.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def _check_mesh(content: Any, cfg: Config, mesh: Any, rules: Any, stack: bool, dequantize: str | None) -> Any:
    """The rules (default ``llama_tp_rules``) that place the model on ``mesh``, checked against every
    GGUF tensor before any is read: a mesh that does not divide the heads, or a split that is not on
    block boundaries, raises ``ShardingError`` naming the GGUF tensor and the mesh axis."""
    from candlejax import distributed

    rules = distributed.llama_tp_rules if rules is None else rules
    if rules is distributed.llama_tp_rules:
        distributed.rules.check_heads(mesh, cfg.num_attention_heads, int(cfg.num_key_value_heads),  # type: ignore[arg-type]
                                      params=("blk.*.attn_q.weight", "blk.*.attn_k.weight"))  # fmt: skip
    n = cfg.num_hidden_layers
    for name, info in content.tensor_infos.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
        if m and m.group(2) in _PATHS:  # the model's attribute path (layers stacked: one leaf)
            at = f"layers.{_PATHS[m.group(2)]}" if stack else f"layers.{m.group(1)}.{_PATHS[m.group(2)]}"
            path, shape = f"{at}.{m.group(3)}", ((n,) if stack else ()) + tuple(info.shape)
        elif name.rsplit(".", 1)[0] in _TOP_PATHS and name.endswith(".weight"):
            path, shape = f"{_TOP_PATHS[name.rsplit('.', 1)[0]]}.weight", tuple(info.shape)
        else:
            continue
        quantised = len(info.shape) == 2 and info.ggml_dtype.block_size() > 1
        keep = quantised and (dequantize is None or name == "token_embd.weight")
        try:
            distributed.layout(path, shape, mesh, rules, info.ggml_dtype.block_size() if keep else None,
                               info.ggml_dtype.name)  # fmt: skip
        except distributed.ShardingError as e:
            raise distributed.ShardingError(f"gguf {content.path}: tensor {name}: {e}") from None
    return rules


#: GGUF tensor name -> the model's attribute path (``blk.N.<part>`` -> ``layers[.N].<path>``)
_PATHS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}  # fmt: skip
_TOP_PATHS = {"token_embd": "embed_tokens.table", "output_norm": "norm", "output": "lm_head"}


#: the per-layer tensors of a LLaMA block (``blk.N.<part>.weight``)
_PARTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


#: compute q/k/v and gate/up as one product each over their stacked rows (fewer, larger products:
#: ~5% faster decode on the CPU); read by ``from_gguf``
FUSE_PRODUCTS = True
_FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_gateup": ("ffn_gate", "ffn_up")}


def _concatenable(infos: Any, i: int, names: tuple[str, ...], dequantize: str | None) -> bool:
    ts = [infos.get(f"blk.{i}.{nm}.weight") for nm in names]
    if any(t is None or len(t.shape) != 2 for t in ts):
        return False
    kinds = {(t.ggml_dtype, tuple(t.shape)[1]) for t in ts}
    return len(kinds) == 1 and (dequantize is not None or ts[0].ggml_dtype in BLOCKED_TYPES)


def _concat(parts: list[QLinear]) -> QLinear:
    """One QLinear whose rows (and biases) are those of ``parts`` in order (no value changes)."""
    ws = [p.weight for p in parts]
    bias = None
    if any(p.bias is not None for p in parts):
        bias = np.concatenate([np.zeros(p.shape[0], np.float32) if p.bias is None else np.asarray(p.bias)
                               for p in parts])  # fmt: skip
    if isinstance(ws[0], PackedWeight):
        rows = sum(w.shape[0] for w in ws)
        if isinstance(ws[0].raw, jax.ShapeDtypeStruct):  # an abstract load
            return QLinear(PackedWeight.placeholder(ws[0].ggml_dtype, (rows, ws[0].shape[1]), ws[0].raw.sharding), bias)
        return QLinear(PackedWeight(np.concatenate([w.raw for w in ws]), ws[0].ggml_dtype, (rows, ws[0].shape[1])),
                       bias)  # fmt: skip
    if isinstance(ws[0], BlockedWeight):
        off = None if ws[0].offset is None else np.concatenate([w.offset for w in ws])
        return QLinear(BlockedWeight(np.concatenate([w.q for w in ws]), np.concatenate([w.scale for w in ws]), off,
                                     ws[0].ggml_dtype), bias)  # fmt: skip
    return QLinear(np.concatenate([np.asarray(w) for w in ws]), bias)


def _stackable(infos: Any, n: int) -> bool:
    """Whether every layer holds each part in one block type with a blocked (or plain float) layout."""
    for name in _PARTS:
        kinds = {(infos[f"blk.{i}.{name}.weight"].ggml_dtype, tuple(infos[f"blk.{i}.{name}.weight"].shape))
                 for i in range(n) if f"blk.{i}.{name}.weight" in infos}  # fmt: skip
        if len(kinds) != 1:
            return False
        dt, shape = kinds.pop()
        if len(shape) == 2 and dt not in BLOCKED_TYPES:
            return False
    return True


def _stack(n: int, get: Any, dev: Device | None, release: Any) -> Any:
    """Part ``get(i)`` of layers ``0 .. n`` as one pytree whose leaves are stacked over the layers,
    filled layer by layer into one aligned host array per leaf, which the CPU runtime then shares
    (no device copy; other devices get one leaf at a time; ``dev`` ``None``: host leaves).
    ``release()`` runs after each layer (drops the file pages read for it)."""
    first = get(0)
    release()
    leaves, struct = jax.tree_util.tree_flatten(first)
    stacked = [aligned_empty((n, *x.shape), x.dtype) for x in leaves]
    for j, x in enumerate(leaves):
        stacked[j][0] = x
    del first, leaves
    for i in range(1, n):
        for j, x in enumerate(jax.tree_util.tree_leaves(get(i))):
            stacked[j][i] = x
        release()
    out = []
    for j in range(len(stacked)):
        out.append(stacked[j] if dev is None else place_aligned(stacked[j], dev.jax_device))
        stacked[j] = None  # type: ignore[call-overload]
    return jax.tree_util.tree_unflatten(struct, out)



if __name__ == "__main__":  # python -m candlejax.models.quantized_llama generate|chat --gguf FILE ...
    import sys

    from candlejax.cli import main

    raise SystemExit(main(sys.argv[1:], prog="python -m candlejax.models.quantized_llama"))
