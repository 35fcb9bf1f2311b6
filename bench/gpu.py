#!/usr/bin/env python3
"""candlejax on one GPU beside hand-written JAX in the same process: one run of about 5 minutes.

    python bench/gpu.py --out gpu-results          # on a GPU machine (H200: ~3-5 min)
    python bench/gpu.py --tiny                     # CPU, tiny shapes, well under a minute

Sections (random N(0, 0.02) weights, norms 1, biases 0, through a VarBuilder backend: shapes are
what is timed):
1. LLaMA-2-7B shape (32 layers, 4096 hidden, vocab 32000), bf16, batch 1: ``Llama.generate``
   ms/token, Candle's loop (``forward`` + argmax on the host), hand JAX (fused q/k/v and gate/up,
   ``[in, out]`` weights, token kept on the device);
2. BERT-base, batch 1, 128 tokens, ``bert.forward_jit``: f32 with the switch off and on
   (``cj.set_gemm_reduced_precision_f32``), bf16; hand JAX at ``Precision.HIGHEST`` and at the
   default (TF32 on GPUs). Note: BERT's fused dense and attention products call XLA directly with
   the default precision, so they follow the switch only once models/bert.py passes
   ``candlejax._precision.f32_precision()``; the max |Δ| against the host CPU shows what ran;
3. the 784-100-10 MLP training step with AdamW, batch 1024: ``backward_step`` exact f32 and with
   the TF32 switch, hand JAX + optax at ``Precision.HIGHEST`` and at the default (TF32);
   plus the f32 matmul error against float64 in each mode.
Prints a markdown table; ``--out DIR`` also writes ``gpu.json``. Each section is skipped when
less than its need is left of ``--budget`` seconds.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from typing import Any

T0 = time.time()
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--out", default=None, help="folder for gpu.json")
ap.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run")
ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
ap.add_argument("--sections", default="1,2,3")
A = ap.parse_args()


def log(m: str) -> None:
    print(f"[+{time.time() - T0:6.1f}s] {m}", file=sys.stderr, flush=True)


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import candlejax as cj  # noqa: E402
from candlejax import Device, DType, Tensor  # noqa: E402
from candlejax.models import bert, llama  # noqa: E402
from candlejax.nn import VarBuilder  # noqa: E402
from candlejax.nn.var_builder import SimpleBackend  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scaling import ms_per_decode_token  # noqa: E402  (bench/scaling.py)

DEV = Device.cuda_if_available(0)
R: dict[str, Any] = {"meta": {"jax": jax.__version__, "backend": jax.default_backend(),
                              "devices": [str(d) for d in jax.devices()], "tiny": A.tiny,
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}  # fmt: skip
REPS = 2 if A.tiny else 20


def left() -> float:
    return A.budget - (time.time() - T0)


def save() -> None:
    if A.out:
        os.makedirs(A.out, exist_ok=True)
        with open(os.path.join(A.out, "gpu.json"), "w") as f:
            json.dump(R, f, indent=1, default=str)


def tbench(fn: Any, reps: int = REPS, warm: int = 1) -> float:
    for _ in range(warm):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


class RandomBackend(SimpleBackend):
    """Random N(0, 0.02) weights (ones for norm weights, zeros for biases), made on the device."""

    def __init__(self, seed: int = 0):
        self.n = seed

    def describe(self) -> str:
        return "random"

    def names(self) -> list[str]:
        return []

    def contains_tensor(self, path: str) -> bool:
        return True

    def get(self, shape: Any, path: str, init: Any, dtype: Any, device: Any) -> Any:
        self.n += 1
        jdt = dtype.jnp if hasattr(dtype, "jnp") else dtype
        dev = device.jax_device
        if ("norm" in path.lower() or "LayerNorm" in path) and path.endswith("weight"):
            return jax.device_put(np.ones(shape, jdt), dev)
        if path.endswith("bias"):
            return jax.device_put(np.zeros(shape, jdt), dev)
        if A.tiny:  # host numbers: no random kernel to compile per shape
            return jax.device_put((np.random.default_rng(self.n).standard_normal(shape) * 0.02).astype(jdt), dev)
        with jax.default_device(dev):  # made on the device (7B parameters)
            return (jax.random.normal(jax.random.key(self.n), shape, jnp.float32) * 0.02).astype(jdt)

    def get_unchecked(self, path: str, dtype: Any, device: Any) -> Any:
        raise KeyError(path)


def _free(tree: Any) -> None:
    for a in jax.tree_util.tree_leaves(tree):
        if isinstance(a, jax.Array) and not a.is_deleted():
            a.delete()


# ------------------------------------------------------------------------------ 1: LLaMA decode
LL = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_hidden_layers=32,
          num_key_value_heads=32, vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0,
          max_position_embeddings=4096, tie_word_embeddings=False)  # fmt: skip
if A.tiny:
    LL.update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1,
              num_key_value_heads=2, vocab_size=64)  # fmt: skip
PROMPT, NEW = (8, 3) if A.tiny else (32, 128)


def hand_llama(d: dict, c: dict) -> None:
    """Hand-written JAX decode: fused q/k/v and gate/up, [in, out] weights, Python loop."""
    H, NH, KVH, F, V, L = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                           c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"])  # fmt: skip
    D, G, eps, theta = H // NH, NH // KVH, c["rms_norm_eps"], c["rope_theta"]
    ks = iter(jax.random.split(jax.random.key(0), 4 * L + 2))
    dev = DEV.jax_device

    def w(s: tuple) -> Any:
        return jax.device_put((jax.random.normal(next(ks), s, jnp.float32) * 0.02).astype(jnp.bfloat16), dev)

    def one(n: int) -> Any:
        return jax.device_put(jnp.ones(n, jnp.bfloat16), dev)

    P = dict(embed=w((V, H)), norm=one(H), head=w((H, V)),
             layers=[dict(l1=one(H), l2=one(H), qkv=w((H, (NH + 2 * KVH) * D)), o=w((NH * D, H)), gu=w((H, 2 * F)),
                          dn=w((F, H))) for _ in range(L)])  # fmt: skip

    def rms(x: Any, g: Any) -> Any:
        xf = x.astype(jnp.float32)
        return g * (xf * lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)).astype(x.dtype)

    def rope(x: Any, pos: Any) -> Any:
        f = pos[:, None].astype(jnp.float32) / theta ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D)
        e = jnp.concatenate([f, f], -1)[:, None]
        rot = jnp.concatenate([-x[..., D // 2 :], x[..., : D // 2]], -1)
        return x * jnp.cos(e).astype(x.dtype) + rot * jnp.sin(e).astype(x.dtype)

    def step(P: Any, cache: Any, toks: Any, p0: Any) -> Any:
        T = toks.shape[0]
        pos = p0 + jnp.arange(T, dtype=jnp.int32)
        mask = jnp.arange(cache[0][0].shape[0])[None, :] <= pos[:, None]
        x, new = P["embed"][toks], []
        for lp, (kc, vc) in zip(P["layers"], cache):
            q, k, v = jnp.split(rms(x, lp["l1"]) @ lp["qkv"], [NH * D, (NH + KVH) * D], -1)
            q = rope(q.reshape(T, NH, D), pos).reshape(T, KVH, G, D)
            kc = lax.dynamic_update_slice(kc, rope(k.reshape(T, KVH, D), pos), (p0, 0, 0))
            vc = lax.dynamic_update_slice(vc, v.reshape(T, KVH, D), (p0, 0, 0))
            s = jnp.einsum("tkgd,skd->kgts", q, kc, preferred_element_type=jnp.float32) / math.sqrt(D)
            pr = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1).astype(x.dtype)
            x = x + jnp.einsum("kgts,skd->tkgd", pr, vc).reshape(T, NH * D) @ lp["o"]
            g, u = jnp.split(rms(x, lp["l2"]) @ lp["gu"], 2, -1)
            x = x + (jax.nn.silu(g) * u) @ lp["dn"]
            new.append((kc, vc))
        lg = (rms(x[-1:], P["norm"]) @ P["head"])[0].astype(jnp.float32)
        return jnp.argmax(lg).astype(jnp.int32)[None], new

    sj = jax.jit(step, donate_argnums=1)
    S = PROMPT + NEW
    cache = [tuple(jax.device_put(jnp.zeros((S, KVH, D), jnp.bfloat16), dev) for _ in "kv") for _ in range(L)]
    pos = [jax.device_put(np.int32(i), dev) for i in range(S)]
    tok = jax.device_put(jnp.zeros((1,), jnp.int32), dev)
    t = time.perf_counter()
    tok, cache = jax.block_until_ready(sj(P, cache, tok, pos[0]))
    d["hand_compile_s"] = time.perf_counter() - t
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        out = []
        for i in range(NEW):
            tok, cache = sj(P, cache, tok, pos[PROMPT + i])
            out.append(tok)
        jax.block_until_ready(out[-1])
        ts.append((time.perf_counter() - t) / NEW)
    d["hand_ms_per_token"] = statistics.median(ts) * 1e3
    _free([P, cache])


def s1_llama(d: dict) -> None:
    cfg = llama.Config.from_dict(dict(LL))
    t = time.perf_counter()
    model = llama.Llama.load(VarBuilder.from_backend(RandomBackend(), DType.BF16, DEV), cfg)
    jax.block_until_ready(jax.tree_util.tree_leaves(model))
    d["load_s"] = time.perf_counter() - t
    d["params"] = int(sum(a.size for a in jax.tree_util.tree_leaves(model) if hasattr(a, "size")))
    prompt = list(range(1, PROMPT + 1))
    t = time.perf_counter()
    toks = list(model.generate(prompt, NEW))
    d["first_generate_s"] = time.perf_counter() - t
    runs = []
    for _ in range(3):
        g = model.generate(prompt, NEW)
        toks2 = list(g)
        runs.append(ms_per_decode_token(g.stats) / 1e3)
    d["generate_ms_per_token"] = statistics.median(runs) * 1e3
    d["generate_tokens_repeatable"] = toks == toks2

    def fwd(tok: int, pos: int, model: Any = model) -> int:  # Candle's loop: forward, then host argmax
        logits = model.forward(Tensor.new(np.asarray([[tok]], np.uint32), DEV), pos)
        return int(np.asarray(logits.argmax_keepdim(-1)).reshape(-1)[0])

    model.forward(Tensor.new(np.asarray([prompt], np.uint32), DEV), 0)
    tok = fwd(1, PROMPT)  # compiles the one-token step
    n = 4 if A.tiny else 32
    t = time.perf_counter()
    for i in range(n):
        tok = fwd(tok, PROMPT + 1 + i)
    d["candle_loop_ms_per_token"] = (time.perf_counter() - t) / n * 1e3
    d["loop_vs_generate"] = d["candle_loop_ms_per_token"] / d["generate_ms_per_token"]
    model.reset()
    _free(model)
    del model
    hand_llama(d, LL)
    d["generate_vs_hand"] = d["generate_ms_per_token"] / d["hand_ms_per_token"]
    d["floor_ms_4.8TBps"] = d["params"] * 2 / 4.8e12 * 1e3


# ------------------------------------------------------------------------------ 2: BERT-base
BC = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SEQ = 128
if A.tiny:
    BC.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=128)
    SEQ = 16


def hand_bert(P: Any, ids: Any, nh: int, prec: Any) -> Any:
    def ln(x: Any, g: Any, b: Any, eps: float = 1e-12) -> Any:
        xf = x.astype(jnp.float32)
        xc = xf - xf.mean(-1, keepdims=True)
        return (xc * lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps) * g + b).astype(x.dtype)

    def mm(a: Any, b: Any) -> Any:
        return jnp.matmul(a, b, precision=prec)

    B, T = ids.shape
    x = ln(P["we"][ids] + P["pe"][:T][None] + P["te"][0], P["eg"], P["eb"])
    H = x.shape[-1]
    for lp in P["layers"]:
        q, k, v = (a.reshape(B, T, nh, H // nh) for a in jnp.split(mm(x, lp["qkv"]) + lp["bqkv"], 3, -1))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32, precision=prec) / math.sqrt(H // nh)
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1).astype(x.dtype), v, precision=prec).reshape(B, T, H)
        x = ln(x + mm(o, lp["o"]) + lp["bo"], lp["g1"], lp["b1"])
        h = jax.nn.gelu(mm(x, lp["i"]) + lp["bi"], approximate=False)
        x = ln(x + mm(h, lp["o2"]) + lp["bo2"], lp["g2"], lp["b2"])
    return x


def _hand_bert_params(jdt: Any) -> Any:
    H, F, L, V = BC["hidden_size"], BC["intermediate_size"], BC["num_hidden_layers"], BC["vocab_size"]
    ks = iter(jax.random.split(jax.random.key(1), 8 * L + 8))

    def w(s: tuple) -> Any:
        return (jax.random.normal(next(ks), s, jnp.float32) * 0.02).astype(jdt)

    def o(n: int) -> Any:
        return jnp.ones(n, jdt)

    def z(n: int) -> Any:
        return jnp.zeros(n, jdt)

    P = dict(we=w((V, H)), pe=w((512, H)), te=w((2, H)), eg=o(H), eb=z(H),
             layers=[dict(qkv=w((H, 3 * H)), bqkv=z(3 * H), o=w((H, H)), bo=z(H), g1=o(H), b1=z(H), i=w((H, F)),
                          bi=z(F), o2=w((F, H)), bo2=z(H), g2=o(H), b2=z(H)) for _ in range(L)])  # fmt: skip
    return jax.device_put(P, DEV.jax_device)


def _bert_vs_cpu(m: Any, ids_np: np.ndarray) -> float:
    """Max |output - the same model run on the host CPU in exact f32| (TF32 shows as ~1e-3)."""
    if DEV.is_cpu():
        return 0.0
    got = np.asarray(bert.forward_jit(m, jax.device_put(ids_np, DEV.jax_device)))
    cpu = jax.devices("cpu")[0]
    host = jax.tree_util.tree_map(lambda a: jax.device_put(a, cpu) if isinstance(a, jax.Array) else a, m)
    with jax.default_device(cpu):
        ref = np.asarray(bert.forward_jit(host, jax.device_put(ids_np, cpu)))
    return float(np.abs(got - ref).max())


def s2_bert(d: dict) -> None:
    cfg = bert.Config.from_dict(dict(BC))
    ids_np = np.random.default_rng(0).integers(0, BC["vocab_size"], (1, SEQ)).astype(np.uint32)
    ids = jax.device_put(ids_np, DEV.jax_device)
    hids = jax.device_put(ids_np.astype(np.int32), DEV.jax_device)
    nh = BC["num_attention_heads"]
    cases = (("f32", DType.F32, jnp.float32, False, lax.Precision.HIGHEST),
             ("f32_tf32", DType.F32, jnp.float32, True, None), ("bf16", DType.BF16, jnp.bfloat16, False, None))
    for name, dt, jdt, reduced, prec in cases:
        cj.set_gemm_reduced_precision_f32(reduced)
        try:
            m = bert.BertModel.load(VarBuilder.from_backend(RandomBackend(), dt, DEV), cfg)
            t = time.perf_counter()
            jax.block_until_ready(bert.forward_jit(m, ids))
            d[f"cj_{name}_compile_s"] = time.perf_counter() - t
            d[f"cj_{name}_ms"] = tbench(lambda m=m: bert.forward_jit(m, ids)) * 1e3
            if jdt == jnp.float32:  # what precision ran: the output against the same model in float64 on the host
                d[f"cj_{name}_max_abs_vs_f32_cpu"] = _bert_vs_cpu(m, ids_np)
            P = _hand_bert_params(jdt)
            f = jax.jit(lambda P, i, prec=prec: hand_bert(P, i, nh, prec))
            jax.block_until_ready(f(P, hids))
            d[f"hand_{name}_ms"] = tbench(lambda P=P, f=f: f(P, hids)) * 1e3
            d[f"ratio_{name}"] = d[f"cj_{name}_ms"] / d[f"hand_{name}_ms"]
            _free([m, P])
        finally:
            cj.set_gemm_reduced_precision_f32(False)


# ------------------------------------------------------------------------------ 3: MLP training + precision
def s3_mlp(d: dict) -> None:
    import optax

    from candlejax.nn import Module, VarMap, linear

    class Mlp(Module):
        def __init__(self, vb: Any):
            self.first = linear(784, 100, vb.pp("first"))
            self.second = linear(100, 10, vb.pp("second"))

        def forward(self, x: Any) -> Any:
            return self.second.forward(self.first.forward(x).relu())

    bs, n = (64, 5) if A.tiny else (1024, 300)
    rng = np.random.default_rng(0)
    xs_np, ys_np = rng.standard_normal((bs, 784)).astype(np.float32), rng.integers(0, 10, bs).astype(np.uint32)

    def lf(m: Any, x: Any, y: Any) -> Any:
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    for name, reduced, prec in (("exact", False, lax.Precision.HIGHEST), ("tf32", True, None)):
        cj.set_gemm_reduced_precision_f32(reduced)
        try:
            m = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, DEV))
            opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-3))
            st = opt.init(m)
            xs, ys = Tensor.new(xs_np, DEV), Tensor.new(ys_np, DEV)
            for _ in range(2 if A.tiny else 10):
                m, st, loss = opt.backward_step(lf, m, st, xs, ys)
            jax.block_until_ready(loss.jax)
            t = time.perf_counter()
            for _ in range(n):
                m, st, loss = opt.backward_step(lf, m, st, xs, ys)
            jax.block_until_ready(loss.jax)
            d[f"cj_{name}_steps_s"] = n / (time.perf_counter() - t)
        finally:
            cj.set_gemm_reduced_precision_f32(False)
        k1, k2 = jax.random.split(jax.random.key(0))
        P = {"w1": jax.random.normal(k1, (784, 100)) * 0.03, "b1": jnp.zeros(100),
             "w2": jax.random.normal(k2, (100, 10)) * 0.1, "b2": jnp.zeros(10)}  # fmt: skip
        P = jax.device_put(P, DEV.jax_device)
        tx = optax.adamw(1e-3)
        os_ = tx.init(P)
        xj, yj = jax.device_put((xs_np, ys_np.astype(np.int32)), DEV.jax_device)

        def loss_fn(P: Any, x: Any, y: Any, prec: Any = prec) -> Any:
            h = jax.nn.relu(jnp.matmul(x, P["w1"], precision=prec) + P["b1"])
            return optax.softmax_cross_entropy_with_integer_labels(jnp.matmul(h, P["w2"], precision=prec) + P["b2"],
                                                                   y).mean()  # fmt: skip

        @jax.jit
        def stp(P: Any, s: Any, x: Any, y: Any, loss_fn: Any = loss_fn, tx: Any = tx) -> Any:
            lv, g = jax.value_and_grad(loss_fn)(P, x, y)
            u, s = tx.update(g, s, P)
            return optax.apply_updates(P, u), s, lv

        for _ in range(2 if A.tiny else 10):
            P, os_, lv = stp(P, os_, xj, yj)
        jax.block_until_ready(lv)
        t = time.perf_counter()
        for _ in range(n):
            P, os_, lv = stp(P, os_, xj, yj)
        jax.block_until_ready(lv)
        d[f"hand_{name}_steps_s"] = n / (time.perf_counter() - t)
        d[f"ratio_{name}"] = d[f"cj_{name}_steps_s"] / d[f"hand_{name}_steps_s"]
    # f32 matmul error against float64 (512 x 512), each mode
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)

    def err(x: Any) -> float:
        return float(np.abs(np.asarray(x, np.float64) - ref).max() / np.abs(ref).max())

    d["matmul_rel_err_exact"] = err(Tensor.new(a, DEV).matmul(Tensor.new(b, DEV)).to_device(Device.Cpu))
    cj.set_gemm_reduced_precision_f32(True)
    try:
        d["matmul_rel_err_tf32"] = err(Tensor.new(a, DEV).matmul(Tensor.new(b, DEV)).to_device(Device.Cpu))
    finally:
        cj.set_gemm_reduced_precision_f32(False)
    d["matmul_rel_err_jnp_default"] = err(jax.device_put(a, DEV.jax_device) @ jax.device_put(b, DEV.jax_device))


# ------------------------------------------------------------------------------ report
SECTIONS = {"1": ("llama2_7b_decode", s1_llama, 90), "2": ("bert_base", s2_bert, 30), "3": ("mlp_train", s3_mlp, 20)}


def table() -> str:
    def g(sec: str, k: str, nd: int = 2) -> str:
        v = R.get(sec, {}).get(k)
        return f"{v:,.{nd}f}" if isinstance(v, (int, float)) else "—"

    L, B, M = "llama2_7b_decode", "bert_base", "mlp_train"
    shape = " (tiny shapes)" if A.tiny else ""
    rows = [
        f"| work ({jax.default_backend()}{shape}, batch 1 unless noted) | candlejax | hand JAX | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| LLaMA-2-7B shape bf16, `Llama.generate`, ms/token | {g(L, 'generate_ms_per_token')} |"
        f" {g(L, 'hand_ms_per_token')} | {g(L, 'generate_vs_hand')} | ≤ 3.7 (floor {g(L, 'floor_ms_4.8TBps')}) |",
        f"| same, Candle-style loop (`forward` + host argmax), ms/token | {g(L, 'candle_loop_ms_per_token')} | — |"
        f" {g(L, 'loop_vs_generate')} × generate | ≤ 1.3× generate |",
        f"| BERT-base {SEQ} tokens `forward_jit` f32, switch off, ms | {g(B, 'cj_f32_ms', 3)} |"
        f" {g(B, 'hand_f32_ms', 3)} (HIGHEST) | {g(B, 'ratio_f32')} | ≤ hand JAX |",
        f"| same, f32, `set_gemm_reduced_precision_f32(True)`, ms | {g(B, 'cj_f32_tf32_ms', 3)} |"
        f" {g(B, 'hand_f32_tf32_ms', 3)} (default) | {g(B, 'ratio_f32_tf32')} | ≤ hand JAX |",
        f"| same, bf16, ms | {g(B, 'cj_bf16_ms', 3)} | {g(B, 'hand_bf16_ms', 3)} | {g(B, 'ratio_bf16')} | ≤ 1.0 |",
        f"| same, f32 output max abs. diff. vs exact f32 on the host CPU: switch off / on |"
        f" {g(B, 'cj_f32_max_abs_vs_f32_cpu', 6)} / {g(B, 'cj_f32_tf32_max_abs_vs_f32_cpu', 6)} | | | off: ~1e-6 |",
        f"| MLP training step, batch {64 if A.tiny else 1024}, exact f32, steps/s | {g(M, 'cj_exact_steps_s', 0)} |"
        f" {g(M, 'hand_exact_steps_s', 0)} (HIGHEST) | {g(M, 'ratio_exact')} | ≥ 1 |",
        f"| same, `set_gemm_reduced_precision_f32(True)`, steps/s | {g(M, 'cj_tf32_steps_s', 0)} |"
        f" {g(M, 'hand_tf32_steps_s', 0)} (default) | {g(M, 'ratio_tf32')} | ≥ 1 |",
        f"| f32 matmul 512² max rel. error vs f64: exact / switch on / jnp default | {g(M, 'matmul_rel_err_exact', 9)}"
        f" / {g(M, 'matmul_rel_err_tf32', 9)} | {g(M, 'matmul_rel_err_jnp_default', 9)} | | |",
    ]
    return "\n".join(rows)


def main() -> int:
    log(f"jax {jax.__version__} on {jax.default_backend()} {jax.devices()}; candlejax device {DEV}")
    for s in A.sections.split(","):
        key, fn, need = SECTIONS[s.strip()]
        d = R[key] = {}
        if left() < (need if not A.tiny else 1):
            d["skipped"] = f"budget ({left():.0f}s left, needs {need}s)"
            log(f"== {key}: skipped")
            continue
        log(f"== {key} (budget left {left():.0f}s)")
        try:
            fn(d)
        except Exception as e:
            d["error"] = f"{type(e).__name__}: {e}"[:800]
            traceback.print_exc()
        log(f"   {key}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}))
        save()
    R["meta"]["total_s"] = time.time() - T0
    save()
    print(table())
    errs = [k for k, v in R.items() if isinstance(v, dict) and "error" in v]
    log(f"done in {time.time() - T0:.0f}s; errors: {errs or 'none'}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if errs else 0)  # skip interpreter teardown


if __name__ == "__main__":
    main()
