"""``candlejax generate``: stream text from a LLaMA-family model (GGUF or safetensors folder)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from candlejax import errors


def _count(lo: int) -> Any:
    def integer(v: str) -> int:  # argparse names a bad value by this function: "invalid integer value: 'abc'"
        n = int(v)
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {n}")
        return n

    return integer


def _number(lo: float, hi: float = math.inf, lo_open: bool = False) -> Any:
    def number(v: str) -> float:  # "invalid number value: 'abc'"
        x = float(v)
        if not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
            rule = (f"a finite number {'>' if lo_open else '>='} {lo}" if hi == math.inf
                    else f"a number in {'(' if lo_open else '['}{lo}, {hi}]")  # fmt: skip
            raise argparse.ArgumentTypeError(f"must be {rule}, got {v}")
        return x

    return number


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a LLaMA-family GGUF file (quantized weights, tokenizer inside)")
    src.add_argument("--model", help="a folder with config.json + safetensors, or a hub id in the local HF cache"
                     " (a .gguf file: as --gguf, the spelling of Candle's quantized example)")  # fmt: skip
    p.add_argument("--tokenizer", help="tokenizer.json (default: the model's)")
    p.add_argument("--dtype", default=None, help="f32, bf16 or f16 (--model only; default: the checkpoint's)")
    p.add_argument("--max-seq-len", type=_count(1), default=None,
                   help="KV cache positions (default: prompt + new tokens, at most max_position_embeddings)")
    p.add_argument("--temperature", type=_number(0.0), default=None, help="sampling temperature (default: greedy)")
    p.add_argument("--top-k", type=_count(1), default=None, help="sample among the k most likely (needs --temperature)")
    p.add_argument("--top-p", type=_number(0.0, 1.0, lo_open=True), default=None,
                   help="nucleus sampling mass (needs --temperature)")
    p.add_argument("--seed", type=int, default=299792458, help="sampling seed")
    p.add_argument("--repeat-penalty", type=_number(0.0, lo_open=True), default=1.1,
                   help="divide the logits of recent tokens by this (1 = off)")
    p.add_argument("--repeat-last-n", type=_count(0), default=64, help="how many recent tokens the penalty sees")
    p.add_argument("-n", "--sample-len", type=_count(0), default=128, dest="n", help="new tokens to generate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prompt", default="Once upon a time", help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat only)")
    p.add_argument("--quiet", action="store_true", help="no timing summary on stderr")
    p.add_argument("--tensor-parallel", type=_count(1), default=1,
                   help="split the model over N devices (CPU: N simulated devices)")  # fmt: skip


def gguf_as_model(args: argparse.Namespace) -> None:
    """Candle's ``quantized`` example takes the GGUF file as ``--model``: such a file is read as ``--gguf``."""
    if args.model is not None and os.path.isfile(args.model) and args.model.lower().endswith(".gguf"):
        args.gguf, args.model = args.model, None


def load(args: argparse.Namespace, max_seq_len: int | None, mesh: Any = None, abstract: bool = False) -> Any:
    """The :class:`~candlejax.pipelines.TextGeneration` for ``--gguf`` / ``--model`` (``mesh``: the
    weights load straight onto their tensor-parallel shards; ``abstract``: a GGUF model's weights
    as shape placeholders, see :func:`compile_then_load`)."""
    from candlejax.pipelines import TextGeneration

    if (args.top_k is not None or args.top_p is not None) and args.temperature is None:
        raise errors.Msg("--top-k / --top-p need --temperature (without it, decoding is greedy)")
    if args.gguf and args.dtype is not None:
        raise errors.InvalidArgument(
            f"--dtype {args.dtype} applies to --model only: a GGUF file's weights keep their own (quantized) types"
        )
    if args.gguf:
        errors.check_file(args.gguf, "--gguf", "pass the .gguf file inside it")
        return TextGeneration.from_gguf(args.gguf, tokenizer=args.tokenizer, max_seq_len=max_seq_len, mesh=mesh,
                                        abstract=abstract)  # fmt: skip
    return TextGeneration.from_pretrained(args.model, dtype=args.dtype, tokenizer=args.tokenizer,
                                          max_seq_len=max_seq_len, mesh=mesh)  # fmt: skip


def compile_then_load(tg: Any, args: argparse.Namespace, ids: list[int], processor: Any) -> None:
    """Compile the generation's programs on ``tg``'s abstract model, then load the GGUF weights into
    it: the compiler's transient memory (~25 MiB on SmolLM2) is freed before the weights need theirs."""
    from candlejax.models import quantized_llama
    from candlejax.xla import load_programs

    programs = tg.compile(ids, args.n, processor, repeat_penalty=args.repeat_penalty,
                          repeat_last_n=args.repeat_last_n)  # fmt: skip
    load_programs(programs, clear_caches=True)  # JAX's caches go; the generation keeps its programs
    tg.model = quantized_llama.ModelWeights.from_gguf(args.gguf, tokenizer=tg.tokenizer)


class Timer:
    """Token arrival times: tok/s over the decode steps after the first one (which compiles)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.times: list[float] = []
        self.counts: list[int] = []

    def tick(self, n_tokens: int | None = None) -> None:
        """Note the time; ``n_tokens``: how many tokens have come so far (default: one per tick; a
        streamed text piece may hold several tokens, or none beyond the last piece's)."""
        self.times.append(time.perf_counter())
        self.counts.append(len(self.counts) + 1 if n_tokens is None else n_tokens)

    def summary(self, n_prompt: int, load_s: float, reason: str | None, compiled_first: bool = False) -> str:
        ts, ns = self.times, self.counts
        first = ts[0] - self.t0 if ts else float("nan")
        rate = (ns[-1] - ns[1]) / (ts[-1] - ts[1]) if len(ts) > 2 and ts[-1] > ts[1] else float("nan")
        load = "load (incl. compile)" if compiled_first else "load"
        tok1 = "first token" if compiled_first else "first token (incl. compile)"
        return (f"{n_prompt} prompt tokens, {ns[-1] if ns else 0} generated ({reason}); {load} {load_s:.2f}s, {tok1}"
                f" {first:.2f}s, decode {rate:.1f} tokens/s (compile excluded)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import processor_from

    if args.system is not None and not args.chat:
        raise errors.InvalidArgument("--system applies to --chat only: a plain prompt has no system message")
    gguf_as_model(args)
    tp = getattr(args, "tensor_parallel", 1)
    if tp > 1:
        from candlejax import distributed

        distributed.request_host_devices(tp)  # CPU-only machines: simulated devices
    t0 = time.perf_counter()
    # one device and a GGUF file: the programs are compiled before the weights are loaded
    abstract = bool(args.gguf) and tp == 1
    tg = load(args, args.max_seq_len, distributed.model_mesh(tp) if tp > 1 else None, abstract=abstract)
    ids = tg.encode(args.prompt, chat=args.chat, system=args.system)
    if args.max_seq_len is None:
        tg.max_seq_len = min(len(ids) + args.n, tg.model.max_position_embeddings)
    lp = processor_from(args.seed, args.temperature, args.top_k, args.top_p)
    if abstract:
        compile_then_load(tg, args, ids, lp)
    load_s = time.perf_counter() - t0
    if not args.chat:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    timer = Timer()
    pieces = tg.stream(ids, args.n, lp, repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
                       after_prompt=not args.chat)  # the text joins on to the printed prompt
    for piece in pieces:
        timer.tick(len(tg.generation.tokens))
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    reason = tg.generation.finish_reason
    if reason == "cache_full":
        print(f"candlejax generate: stopped: the KV cache ({tg.max_seq_len} positions) is full;"
              " raise --max-seq-len", file=sys.stderr)  # fmt: skip
    if not args.quiet:
        print(timer.summary(len(ids), load_s, reason, abstract), file=sys.stderr)
    return 0
