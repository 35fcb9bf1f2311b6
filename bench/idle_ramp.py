"""MiniLM-L6 1x16: the time of each call in a block of back-to-back calls, with and without an
idle pause before the block, for candlejax ``forward_jit``, torch eager and ``torch.compile``.

Each engine runs in a process of its own (2 threads, glibc malloc thresholds raised); blocks of
``--calls`` calls, ``--blocks`` blocks, the median per position in the block is printed.

    python bench/idle_ramp.py                      # all three engines, pause 0 and 0.3 s
    python bench/idle_ramp.py --engines candlejax --pauses 0,1.0
    taskset -c 0 python bench/idle_ramp.py --engines candlejax   # one core
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def _candlejax() -> Callable[[], object]:
    import numpy as np
    from embed import _model_dir

    from candlejax import Device, DType, Tensor
    from candlejax.models import bert

    bert.tune_malloc()
    model = bert.SentenceEmbedder.from_dir(_model_dir(), DType.F32, Device.Cpu, batch_size=32).model
    ids = np.random.default_rng(0).integers(1000, 20000, (1, 16)).astype(np.int32)
    i, t, m = (Tensor.from_numpy(a) for a in (ids, np.zeros_like(ids), np.ones_like(ids)))
    return lambda: bert.forward_jit(model, i, t, m).jax.block_until_ready()


def _torch(compiled: bool) -> Callable[[], object]:
    import os

    import numpy as np
    import torch
    from embed import _model_dir
    from transformers import BertModel

    from candlejax.xla import tune_malloc

    tune_malloc()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    tm = BertModel.from_pretrained(str(_model_dir()), add_pooling_layer=False).eval()
    fn = torch.compile(tm, dynamic=False) if compiled else tm
    ids = torch.from_numpy(np.random.default_rng(0).integers(1000, 20000, (1, 16)))
    tt, mask = torch.zeros_like(ids), torch.ones_like(ids)

    def run() -> object:
        with torch.inference_mode():
            return fn(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state

    return run


def _worker(engine: str, pauses: list[float], blocks: int, calls: int) -> None:
    f = _candlejax() if engine == "candlejax" else _torch(engine == "torch.compile")
    for _ in range(5):
        f()
    for pause in pauses:
        per_position: list[list[float]] = [[] for _ in range(calls)]
        for _ in range(blocks):
            time.sleep(pause)
            for i in range(calls):
                t = time.perf_counter()
                f()
                per_position[i].append((time.perf_counter() - t) * 1e3)
        print(f"| {engine} | {pause:g} | " + " ".join(f"{statistics.median(p):.2f}" for p in per_position) + " |",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="candlejax,torch eager,torch.compile")
    ap.add_argument("--pauses", default="0,0.3", help="seconds of sleep before each block")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    pauses = [float(p) for p in a.pauses.split(",")]
    if a.worker:
        _worker(a.worker, pauses, a.blocks, a.calls)
        return 0
    from provenance import describe

    print(describe())
    print("| engine | pause before the block, s | median ms of calls 1..N of the block |\n|---|---:|---|")
    for engine in a.engines.split(","):
        cmd = [sys.executable, __file__, "--worker", engine, "--pauses", a.pauses, "--blocks", str(a.blocks),
               "--calls", str(a.calls)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ")]
        print("\n".join(rows) if rows else f"| {engine} | failed: {out.stderr.strip().splitlines()[-1:]} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
