"""Reading Karpathy's llama2.c ``.bin`` checkpoints (the legacy "version 0" export of llama2.c's
``export.py``). Candle: ``candle-transformers/src/models/llama2_c_weights.rs``.

Layout, all little-endian: a header of seven i32 (``dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size, seq_len``; a negative ``vocab_size`` means the LM head is not the embedding table),
then float32 tensors in this order: ``token_embedding_table (vocab, dim)``, ``rms_att_weight (L,
dim)``, ``wq (L, dim, dim)``, ``wk`` / ``wv (L, n_kv_heads * head_size, dim)``, ``wo (L, dim, dim)``,
``rms_ffn_weight (L, dim)``, ``w1`` / ``w3 (L, hidden_dim, dim)``, ``w2 (L, dim, hidden_dim)``,
``rms_final_weight (dim,)``, ``freq_cis_real`` / ``freq_cis_imag (seq_len, head_size / 2)`` and, when
not shared, ``wcls (vocab, dim)``. Linear weights are ``(out, in)``.

>>> with open("stories15M.bin", "rb") as f:
...     config = Config.from_reader(f)
...     weights = TransformerWeights.from_reader(f, config, Device.Cpu)
>>> vb = weights.var_builder(config, Device.Cpu)   # names as llama2_c.Llama.load reads them
>>> model, cache = Llama.load(vb, config), Cache.new(True, config, vb.pp("rot"))

A truncated or corrupt file raises :class:`candlejax.errors.Msg` naming the tensor and the byte
offsets it lacks, before any tensor is allocated (for a seekable file).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import jax
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.llama2_c import HEADER_BYTES, Config, read_config, reader_name
from candlejax.nn.var_builder import VarBuilder
from candlejax.tensor import Tensor, wrap

__all__ = ["HEADER_BYTES", "Config", "TransformerWeights", "read_config", "tensor_layout"]

#: seven little-endian i32
_CHUNK = 1 << 24  # read at most this many bytes at a time from a stream of unknown size


def tensor_layout(cfg: Config) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, shape)`` of each float32 tensor after the header, in the file's order."""
    c, hs = cfg, cfg.head_size()
    kv = c.n_kv_heads * hs
    out = [
        ("token_embedding_table", (c.vocab_size, c.dim)), ("rms_att_weight", (c.n_layers, c.dim)),
        ("wq", (c.n_layers, c.n_heads * hs, c.dim)), ("wk", (c.n_layers, kv, c.dim)), ("wv", (c.n_layers, kv, c.dim)),
        ("wo", (c.n_layers, c.dim, c.n_heads * hs)), ("rms_ffn_weight", (c.n_layers, c.dim)),
        ("w1", (c.n_layers, c.hidden_dim, c.dim)), ("w2", (c.n_layers, c.dim, c.hidden_dim)),
        ("w3", (c.n_layers, c.hidden_dim, c.dim)), ("rms_final_weight", (c.dim,)),
        ("freq_cis_real", (c.seq_len, hs // 2)), ("freq_cis_imag", (c.seq_len, hs // 2)),
    ]  # fmt: skip
    if not c.shared_classifier:
        out.append(("wcls", (c.vocab_size, c.dim)))
    return out


def _remaining(r: Any) -> int | None:
    """Bytes left in a seekable file, else ``None``."""
    try:
        if not r.seekable():
            return None
        here = r.tell()
        end = r.seek(0, os.SEEK_END)
        r.seek(here)
        return int(end - here)
    except (AttributeError, OSError, ValueError):
        return None


def _read_exact(r: Any, n: int, what: str, start: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = r.read(min(_CHUNK, n - got))
        if not b:
            raise errors.Msg(f"llama2.c weights of {reader_name(r)}: tensor {what} spans bytes {start}.."
                             f"{start + n}, the file ends at byte {start + got}")  # fmt: skip
        parts.append(b)
        got += len(b)
    return b"".join(parts)


class TransformerWeights:
    """Candle's ``llama2_c_weights::TransformerWeights``: llama2.c's tensors, by llama2.c's names
    (``wq`` ``(n_layers, dim, dim)``, ...; see the module docstring). ``wcls`` is the LM head: the
    embedding table itself when the classifier is shared."""

    def __init__(self, tensors: dict[str, Any]):
        self.token_embedding_table = tensors["token_embedding_table"]
        self.rms_att_weight, self.rms_ffn_weight = tensors["rms_att_weight"], tensors["rms_ffn_weight"]
        self.wq, self.wk, self.wv, self.wo = tensors["wq"], tensors["wk"], tensors["wv"], tensors["wo"]
        self.w1, self.w2, self.w3 = tensors["w1"], tensors["w2"], tensors["w3"]
        self.rms_final_weight = tensors["rms_final_weight"]
        self.freq_cis_real, self.freq_cis_imag = tensors["freq_cis_real"], tensors["freq_cis_imag"]
        self.wcls = tensors.get("wcls", self.token_embedding_table)

    @staticmethod
    def from_reader(r: BinaryIO, cfg: Config, device: Any = None) -> TransformerWeights:
        """Candle's ``TransformerWeights::from_reader(&mut r, &cfg, &device)``: the float32 tensors
        that follow the header (read :meth:`Config.from_reader` first), onto ``device``.

        A seekable file shorter than the layout needs raises before anything is read, naming the
        first tensor it cuts; a stream raises at the tensor where it ends. Trailing bytes are ignored.
        """
        layout = tensor_layout(cfg)
        sizes = [4 * int(np.prod(shape)) for _, shape in layout]
        here = _tell(r)
        left = _remaining(r)
        if left is not None and left < sum(sizes):
            start = here
            for (name, shape), n in zip(layout, sizes):
                if start + n > here + left:
                    raise errors.Msg(
                        f"llama2.c weights of {reader_name(r)} are truncated: tensor {name} {shape} spans bytes"
                        f" {start}..{start + n}, the file ends at byte {here + left} (the config {cfg} needs"
                        f" {here + sum(sizes)} bytes)"
                    )
                start += n
        dev = Device.coerce(device).jax_device
        out, start = {}, here
        for (name, shape), n in zip(layout, sizes):
            a = np.frombuffer(_read_exact(r, n, f"{name} {shape}", start), dtype="<f4").reshape(shape)
            if not np.isfinite(a).all():
                raise errors.Msg(f"llama2.c weights of {reader_name(r)}: tensor {name} (bytes {start}.."
                                 f"{start + n}) holds non-finite values")  # fmt: skip
            out[name] = wrap(jax.device_put(a.astype(np.float32), dev))
            start += n
        return TransformerWeights(out)

    def var_builder(self, cfg: Config, device: Any = None) -> VarBuilder:
        """Candle's ``var_builder(&cfg, &device)``: an F32 :class:`~candlejax.nn.VarBuilder` with the
        names :meth:`candlejax.models.llama2_c.Llama.load` reads, plus ``rot.freq_cis_real`` /
        ``rot.freq_cis_imag`` for :meth:`candlejax.models.llama2_c.Cache.new` (``vb.pp("rot")``)."""
        ws: dict[str, Tensor] = {
            "rot.freq_cis_real": self.freq_cis_real, "rot.freq_cis_imag": self.freq_cis_imag,
            "model.embed_tokens.weight": self.token_embedding_table, "lm_head.weight": self.wcls,
            "model.norm.weight": self.rms_final_weight,
        }  # fmt: skip
        per_layer = {"self_attn.q_proj": self.wq, "self_attn.k_proj": self.wk, "self_attn.v_proj": self.wv,
                     "self_attn.o_proj": self.wo, "mlp.gate_proj": self.w1, "mlp.down_proj": self.w2,
                     "mlp.up_proj": self.w3, "input_layernorm": self.rms_att_weight,
                     "post_attention_layernorm": self.rms_ffn_weight}  # fmt: skip
        for layer in range(cfg.n_layers):
            for name, t in per_layer.items():
                ws[f"model.layers.{layer}.{name}.weight"] = t[layer]
        return VarBuilder.from_tensors(ws, DType.F32, device)


def _tell(r: Any) -> int:
    """Where the reader is (after the header when it cannot tell)."""
    try:
        return int(r.tell())
    except (AttributeError, OSError, ValueError):
        return HEADER_BYTES
