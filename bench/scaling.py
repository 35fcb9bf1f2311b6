#!/usr/bin/env python3
"""Scaling over devices: data-parallel training steps/s and tensor-parallel decode ms/token.

    python bench/scaling.py --devices 1,2,4,8            # CPU: N simulated host devices each
Each device count runs in a fresh process (``--xla_force_host_platform_device_count=N`` on the
CPU; on a multi-GPU machine the first N GPUs). Data parallel: the 784-100-10 MLP, AdamW,
``cj.distributed.shard(model, mesh, "replicate")`` and batches split with ``shard_batch``
(global batch ``--batch``). Tensor parallel: a small LLaMA (4 layers, hidden 256, f32) through
``cj.distributed.llama_tp_rules`` and ``Llama.generate``. On the CPU, simulated devices share
the same cores, so this measures the overhead of partitioning and collectives, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def ms_per_decode_token(stats: dict) -> float:
    """Milliseconds per decode step from a :class:`candlejax.generation.Generation`'s ``stats``:
    ``decode_s`` runs from the first token's arrival to the last one's, which is ``decode_steps`` steps
    (n tokens: n - 1 steps; the prefill is in ``prefill_s``)."""
    return stats["decode_s"] / max(1, stats["decode_steps"]) * 1e3


def worker(n: int, batch: int, steps: int, new: int) -> dict:
    import jax
    import numpy as np

    import candlejax as cj
    from candlejax import Device, DType, Tensor
    from candlejax.models import llama
    from candlejax.nn import Module, VarBuilder, VarMap, linear

    class Mlp(Module):
        def __init__(self, vb):
            self.first = linear(784, 100, vb.pp("first"))
            self.second = linear(100, 10, vb.pp("second"))

        def forward(self, x):
            return self.second.forward(self.first.forward(x).relu())

    out = {"devices": n, "backend": jax.default_backend()}
    mesh = cj.distributed.mesh({"data": n}, jax.devices()[:n])
    model = cj.distributed.shard(Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)), mesh)
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-3))
    state = opt.init(model)
    rng = np.random.default_rng(0)
    x, y = cj.distributed.shard_batch((Tensor.new(rng.standard_normal((batch, 784)).astype(np.float32)),
                                       Tensor.new(rng.integers(0, 10, batch).astype(np.uint32))), mesh)  # fmt: skip

    def loss_fn(m, x, y):
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    for _ in range(10):
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
    loss.jax.block_until_ready()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(steps):
            model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
        loss.jax.block_until_ready()
        runs.append(steps / (time.perf_counter() - t))
    out["dp_steps_s"] = statistics.median(runs)
    cfg = llama.Config.from_dict(dict(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                                      num_hidden_layers=4, num_key_value_heads=8, vocab_size=2048,
                                      max_position_embeddings=512, tie_word_embeddings=False))  # fmt: skip
    lm = llama.Llama.load(VarBuilder.zeros(DType.F32, Device.Cpu), cfg)
    lm = lm.load_state_dict({k: ((1.0 if "norm" in k else 0.0) + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
                             for k, v in lm.named_tensors().items()})  # fmt: skip
    if n > 1:
        lm = cj.distributed.shard(lm, cj.distributed.mesh({"model": n}, jax.devices()[:n]),
                                  cj.distributed.llama_tp_rules)  # fmt: skip
    prompt = list(range(1, 17))
    toks = list(lm.generate(prompt, new))
    runs = []
    for _ in range(3):
        g = lm.generate(prompt, new)
        assert list(g) == toks
        runs.append(ms_per_decode_token(g.stats))
    out["tp_ms_per_token"] = statistics.median(runs)
    out["tokens"] = toks  # all of them: the table says whether every token matches 1 device
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="1,2,4,8")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--new", type=int, default=32, help="tokens per generate")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.batch, a.steps, a.new)))
        return
    rows = []
    for n in [int(v) for v in a.devices.split(",")]:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
                            " --xla_cpu_collective_call_terminate_timeout_seconds=600").strip()  # fmt: skip
        cmd = [sys.executable, __file__, "--worker", str(n), "--batch", str(a.batch), "--steps", str(a.steps),
               "--new", str(a.new)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{n} devices: {rows[-1]}", file=sys.stderr, flush=True)
    from provenance import describe

    print(describe())
    base = rows[0] if rows else {}
    print(f"| devices | data-parallel MLP steps/s (batch {a.batch}) | vs 1 | tensor-parallel LLaMA decode ms/token |"
          " vs 1 | same tokens as the first row |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['devices']} | {r['dp_steps_s']:,.0f} | {r['dp_steps_s'] / base['dp_steps_s']:.2f} |"
              f" {r['tp_ms_per_token']:.2f} | {r['tp_ms_per_token'] / base['tp_ms_per_token']:.2f} |"
              f" {r['tokens'] == base['tokens']} |")  # fmt: skip


if __name__ == "__main__":
    main()
