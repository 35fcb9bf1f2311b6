"""SmolLM2-135M Q4_1 decode speed against the KV cache's size: ``generate`` (greedy, 64 new tokens
after bench/generate.py's prompt) with caches of ``--sizes`` positions, in one process, in turns.
A chat (``candlejax chat``: 2048 positions by default) or ``TextGeneration`` (the model's
``max_position_embeddings``, 8192 for SmolLM2, by default) decodes with a cache far larger than
what it has filled; the step's cost should follow the positions filled, not the cache's size.
Prints tok/s (1 / median step) per size and round, and whether every size gave the same tokens.

    python bench/decode_cache_size.py
    python bench/decode_cache_size.py --sizes 160,2048,8192 --rounds 3 -n 64
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import PROMPT, _gguf_path  # bench/generate.py: the same GGUF and prompt

from candlejax import Device
from candlejax.generation import Sampling, generate
from candlejax.models import llama, quantized_llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="160,2048,8192", help="cache positions, comma-separated")
    ap.add_argument("-n", type=int, default=64, help="new tokens per run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    model = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu)
    ids = model.tokenizer.encode(PROMPT)
    if min(sizes) < len(ids) + args.n:
        sys.exit(f"every size must hold the prompt and the new tokens ({len(ids) + args.n} positions)")
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    tokens: dict[int, list[int]] = {}
    for _ in range(args.rounds + 1):  # the first round compiles
        for n in sizes:
            stamps = [time.perf_counter()]
            gen = generate(llama.step, model, model.new_cache(1, n), ids, args.n, Sampling.ArgMax())
            for _tok in gen:
                stamps.append(time.perf_counter())
            steps = [b - a for a, b in itertools.pairwise(stamps[2:])]  # from the 2nd decode step
            rates[n].append(1 / statistics.median(steps))
            tokens[n] = list(gen.tokens)
    print("| cache positions | decode tok/s per round | median |\n|---:|---|---:|")
    for n in sizes:
        timed = rates[n][1:]
        print(f"| {n} | {', '.join(f'{r:.1f}' for r in timed)} | {statistics.median(timed):.1f} |")
    same = all(t == tokens[sizes[0]] for t in tokens.values())
    print(f"\nsame tokens at every size: {same}")


if __name__ == "__main__":
    main()
