"""``candlejax llama2-c``: sample text from a llama2.c model (Karpathy's TinyStories LLaMAs).

Candle: ``candle-examples/examples/llama2-c/main.rs`` (its ``inference`` task). The model comes from
``--config``: a llama2.c ``.bin`` (the header gives the config), a ``.gguf`` (Candle's tensor-tools
names; ``--quantized`` reads any file as GGUF) or a ``.safetensors`` file with the same names. As in
Candle, a GGUF / safetensors config is Candle's ``tiny_260k`` / ``tiny_15m`` / ``tiny_42m`` /
``tiny_110m`` chosen by the embedding width (the vocabulary size taken from the embedding); for other
widths, where Candle stops, it is read off the tensor shapes (head size and ``seq_len`` from
``rot.freq_cis_real``). The prompt is encoded with ``--tokenizer`` (a ``tokenizer.json``; Candle
downloads one from the hub, this works offline), fed whole once, then one token per step on the KV
cache, sampled by ``LogitsProcessor(seed, temperature, top_p)`` after the repeat penalty, until
``--sample-len`` tokens or the model's ``seq_len`` positions. The text goes to stdout as it comes;
the config and the timings go to stderr.

    candlejax llama2-c --config stories15M.bin --tokenizer tokenizer.json --prompt "Once upon a time"
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from candlejax import errors
from candlejax.cli.generate import Timer, _count, _number

#: Candle's configs by embedding width (``main.rs``: ``match dim { 64 => Config::tiny_260k(), ... }``)
_CANDLE_CONFIGS = {64: "tiny_260k", 288: "tiny_15m", 512: "tiny_42m", 768: "tiny_110m"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE",
                   help="the model: a llama2.c .bin checkpoint, a .gguf or a .safetensors file")  # fmt: skip
    p.add_argument("--quantized", action="store_true", help="read --config as GGUF whatever its extension")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="tokenizer.json (needed: nothing is downloaded), e.g. the llama tokenizer's")  # fmt: skip
    p.add_argument("--prompt", default="", help="the prompt text")
    p.add_argument("-n", "--sample-len", type=_count(0), default=None,
                   help="new tokens to generate (default: until the model's seq_len positions are used)")  # fmt: skip
    p.add_argument("--temperature", type=_number(0.0), default=None, help="sampling temperature (default: greedy)")
    p.add_argument("--top-p", type=_number(0.0, 1.0, lo_open=True), default=None,
                   help="nucleus sampling mass (needs --temperature > 0)")  # fmt: skip
    p.add_argument("--seed", type=int, default=299792458, help="sampling seed")
    p.add_argument("--repeat-penalty", type=_number(0.0, lo_open=True), default=1.1,
                   help="divide the logits of recent tokens by this (1 = off)")  # fmt: skip
    p.add_argument("--repeat-last-n", type=_count(0), default=64, help="how many recent tokens the penalty sees")
    p.add_argument("--quiet", action="store_true", help="no config line and timing summary on stderr")


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> tuple[Any, str]:
    """The llama2_c ``Config`` of a GGUF / safetensors model from its tensor shapes (name -> shape,
    ``(out, in)``), and how it was chosen: Candle's config for the embedding width (with the
    embedding's vocabulary size), else one read off the shapes."""
    from candlejax.models.llama2_c import Config

    emb = shapes.get("model.embed_tokens.weight")
    if emb is None or len(emb) != 2:
        raise errors.Msg(f"{source}: no 2-D tensor model.embed_tokens.weight; not a llama2.c model"
                         f" (names as Candle's llama2_c_weights var_builder writes them)")  # fmt: skip
    vocab, dim = int(emb[0]), int(emb[1])
    if dim in _CANDLE_CONFIGS:
        name = _CANDLE_CONFIGS[dim]
        cfg = dataclasses.replace(getattr(Config, name)(), vocab_size=vocab)
        return cfg, f"Candle's {name} for embedding width {dim}"
    rot = shapes.get("rot.freq_cis_real")
    if rot is None or len(rot) != 2:
        known = ", ".join(f"{d} ({n})" for d, n in _CANDLE_CONFIGS.items())
        raise errors.Msg(f"{source}: no config for embedding width {dim} (Candle knows {known}), and no"
                         f" rot.freq_cis_real table to read the head size and seq_len from")  # fmt: skip
    seq_len, head_size = int(rot[0]), 2 * int(rot[1])
    layers = {int(m.group(1)) for n in shapes if (m := re.match(r"model\.layers\.(\d+)\.", n))}

    def rows(name: str) -> int:
        shape = shapes.get(f"model.layers.0.{name}.weight")
        if shape is None or len(shape) != 2:
            raise errors.Msg(f"{source}: no 2-D tensor model.layers.0.{name}.weight")
        return int(shape[0])

    q, kv = rows("self_attn.q_proj"), rows("self_attn.k_proj")
    if not layers or q % head_size or kv % head_size:
        raise errors.Msg(f"{source}: the tensor shapes do not make a llama2.c model (layers {sorted(layers)},"
                         f" q_proj rows {q}, k_proj rows {kv}, head size {head_size} from rot.freq_cis_*)")  # fmt: skip
    cfg = Config(dim=dim, hidden_dim=rows("mlp.gate_proj"), n_layers=max(layers) + 1, n_heads=q // head_size,
                 n_kv_heads=kv // head_size, vocab_size=vocab, seq_len=seq_len)  # fmt: skip
    return cfg, "read off the tensor shapes"


def load_model(path: str, quantized: bool, device: Any) -> tuple[Any, Any, Any, str]:
    """``(model, config, cache, how the config was chosen)`` for ``--config path``, as Candle's
    ``run_inference`` loads them (the KV cache on)."""
    from candlejax.models import llama2_c

    if os.path.isdir(path):
        raise errors.Msg(f"--config {path!r} is a folder; give a llama2.c .bin, a .gguf or a .safetensors file")
    ext = os.path.splitext(path)[1].lower()
    if quantized or ext == ".gguf":
        from candlejax.models.quantized_llama2_c import QLlama, VarBuilder

        qvb = VarBuilder.from_gguf(path, device)
        shapes = {n: tuple(info.shape) for n, info in qvb.content.tensor_infos.items()}
        cfg, how = config_from_shapes(shapes, f"GGUF file {path!r}")
        return QLlama.load(qvb, cfg), cfg, llama2_c.Cache.new(True, cfg, qvb.pp("rot")), how
    from candlejax.dtype import DType
    from candlejax.nn import VarBuilder as FloatVarBuilder

    if ext == ".safetensors":
        from candlejax import safetensors

        tensors = safetensors.load(path, device)
        cfg, how = config_from_shapes({n: tuple(t.shape) for n, t in tensors.items()}, f"safetensors file {path!r}")
        vb = FloatVarBuilder.from_tensors(tensors, DType.F32, device)
    else:
        from candlejax.models.llama2_c_weights import TransformerWeights

        with open(path, "rb") as f:
            cfg = llama2_c.Config.from_reader(f)
            weights = TransformerWeights.from_reader(f, cfg, device)
        vb, how = weights.var_builder(cfg, device), "the llama2.c header"
    return llama2_c.Llama.load(vb, cfg), cfg, llama2_c.Cache.new(True, cfg, vb.pp("rot")), how


def load_tokenizer(path: str | None) -> Any:
    """The ``--tokenizer`` file as a :class:`candlejax.tokenizer.Tokenizer`; a clear error when absent."""
    from candlejax.tokenizer import load_tokenizer as load

    if path is None:
        raise errors.Msg("--tokenizer tokenizer.json is needed (Candle downloads hf-internal-testing/llama-tokenizer's;"
                         " candlejax reads only local files)")  # fmt: skip
    if not os.path.isfile(path):
        raise errors.Msg(f"--tokenizer: no such file {path!r}")
    return load(path)  # a file the tokenizers library cannot read raises a candlejax error naming it


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from candlejax.device import Device
    from candlejax.generation import LogitsProcessor, TokenOutputStream
    from candlejax.models.utils import apply_repeat_penalty
    from candlejax.tensor import Tensor

    if args.top_p is not None and not args.temperature:  # (0 is greedy too, as Candle's LogitsProcessor)
        raise errors.Msg("--top-p needs --temperature > 0 (without one, decoding is greedy)")
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    device = Device.Cpu if args.cpu else Device.cuda_if_available()
    model, cfg, cache, how = load_model(args.config, args.quantized, device)
    if not args.quiet:
        print(f"candlejax llama2-c: {cfg} ({how})", file=sys.stderr)
    tokens = list(tokenizer.encode(args.prompt, add_special_tokens=True).get_ids())
    if not tokens:
        raise errors.Msg("the prompt encodes to no tokens and this tokenizer adds no BOS token: give --prompt")
    n_prompt = len(tokens)
    processor = LogitsProcessor(args.seed, args.temperature, args.top_p)
    stream = TokenOutputStream(tokenizer, context=tokens)  # the text joins on to the printed prompt
    load_s = time.perf_counter() - t0

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    timer, index_pos, reason = Timer(), 0, "length"
    while args.sample_len is None or len(tokens) - n_prompt < args.sample_len:
        if len(tokens) >= cfg.seq_len:
            reason = "seq_len"
            break
        ctxt = tokens if index_pos == 0 else tokens[-1:]
        logits = model.forward(Tensor.new(np.asarray([ctxt], np.uint32), device), index_pos, cache)
        logits = logits.i((0, len(ctxt) - 1))
        if args.repeat_penalty != 1.0:  # Candle's tokens[len - repeat_last_n..], padded with -1 (ignored) to
            recent = np.full(args.repeat_last_n, -1, np.int32)  # one shape: the penalty compiles once
            if args.repeat_last_n:
                last = tokens[-args.repeat_last_n :]
                recent[len(recent) - len(last) :] = last
            logits = apply_repeat_penalty(logits, args.repeat_penalty, recent)
        index_pos += len(ctxt)
        tokens.append(processor.sample(logits))
        timer.tick()
        if (piece := stream.next_token(tokens[-1])) is not None:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write((stream.decode_rest() or "") + "\n")
    sys.stdout.flush()
    if reason == "seq_len" and args.sample_len is not None:
        print(f"candlejax llama2-c: stopped after {len(tokens) - n_prompt} tokens: the model's seq_len"
              f" ({cfg.seq_len} positions) is used up", file=sys.stderr)  # fmt: skip
    if not args.quiet:
        print(timer.summary(n_prompt, load_s, reason), file=sys.stderr)
    return 0
