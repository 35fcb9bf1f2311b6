"""``candlejax embed``: print sentence embeddings (and, for several sentences, their cosine similarities)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


_positive.__name__ = "integer"  # argparse names a bad value by it: "invalid integer value: 'abc'"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="folder with config.json, model.safetensors, tokenizer.json")
    p.add_argument("--dtype", default="f32", help="weight/compute dtype: f32, bf16 or f16")
    p.add_argument("--max-length", type=_positive, default=None, help="truncate inputs to this many tokens")
    p.add_argument("--batch-size", type=_positive, default=32, help="sentences per compiled forward")
    p.add_argument("--json", action="store_true", help="print one JSON object per sentence with the full vector")
    p.add_argument("sentences", nargs="+", help="the sentences to embed")


def _fmt_row(v: np.ndarray, n: int = 6) -> str:
    head = ", ".join(f"{x:+.4f}" for x in v[:n])
    return f"[{head}{', ...' if v.size > n else ''}]"


def run(args: argparse.Namespace) -> int:
    from candlejax.pipelines import SentenceEmbedder
    from candlejax.xla import tune_malloc

    if (os.sep in args.model or args.model.startswith(".")) and not os.path.isdir(args.model):
        raise errors.Msg(f"--model: no such folder: {args.model!r}")
    tune_malloc()
    emb = SentenceEmbedder.from_dir(
        args.model, DType.parse(args.dtype), Device.Cpu, max_length=args.max_length, batch_size=args.batch_size
    )
    vecs = emb.embed_tokens(*emb.tokenize(args.sentences))
    if args.json:
        for s, v in zip(args.sentences, vecs):
            print(json.dumps({"sentence": s, "embedding": [float(x) for x in v]}))
        return 0
    print(f"embeddings: ({len(args.sentences)}, {vecs.shape[1]}) f32")
    for i, (s, v) in enumerate(zip(args.sentences, vecs)):
        print(f"[{i}] {_fmt_row(v)}  {s}")
    if len(args.sentences) > 1:
        unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        sims = unit @ unit.T
        print("cosine similarities:")
        for i, row in enumerate(sims):
            print(f"[{i}] " + " ".join(f"{x:+.4f}" for x in row))
    return 0
