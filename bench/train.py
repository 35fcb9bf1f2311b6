"""Training-step throughput and memory: candlejax vs Flax NNX, hand-written JAX and PyTorch, side by side.

Models (identical in every framework, same initial weights, same batches):

* ``mlp``: the seed's MLP, ``linear(784, 100)`` -> relu -> ``linear(100, 10)`` (MNIST-shaped input);
* ``cnn``: the demo's CNN (``candlejax.demo.Cnn``) on 8x8 digits: conv3x3(16) -> relu -> conv3x3(32)
  -> relu -> maxpool2 -> linear(512, 64) -> relu -> linear(64, 10).

Each step is forward + cross-entropy + backward + AdamW (lr 1e-3, betas 0.9/0.999, eps 1e-8,
weight decay 0.01, Candle's defaults) on one batch:

* ``candlejax``: ``opt.backward_step(loss_fn, model, state, x, y)`` with ``cj.optim.AdamW`` (functional);
* ``candlejax-xla-conv``: ``candlejax`` with ``AdamW(params, compiler_options=cj.xla.XLA_CONVOLUTION_OPTIONS)``
  (XLA's own convolutions instead of YNNPACK's in the compiled step);
* ``candlejax-bound``: Candle's way, ``opt = AdamW(varmap.all_vars(), params)`` and
  ``loss = opt.backward_step(loss_fn, model, x, y)`` updating the shared Vars in place (the model is
  built from a VarMap that is then loaded with the same weights, as ``varmap.load`` would);
* ``flax-nnx``: the Flax NNX tutorial step, ``@nnx.jit`` over ``nnx.value_and_grad`` +
  ``nnx.Optimizer(model, optax.adamw(...), wrt=nnx.Param).update``; ``flax-nnx-cached`` is the
  same step through ``nnx.cached_partial`` (Flax's documented way to cut its per-call overhead);
* ``jax``: pure functions of a params dict (the same NCHW layout and ops as candlejax) + ``optax.adamw``,
  one ``jax.jit`` with the params and optimizer state donated: the floor for a JAX framework;
  ``jax-sync`` is the same with CPU async dispatch off (candlejax's import-time default), so that
  ``candlejax`` vs ``jax-sync`` compares the libraries and ``jax`` vs ``jax-sync`` the dispatch mode;
* ``torch``: PyTorch eager, ``zero_grad(set_to_none=True)``, ``loss.backward()``, ``torch.optim.AdamW``;
  ``torch-compile``: the same with the model + loss and ``opt.step`` under ``torch.compile``.

Method. Every (model, batch size, framework) runs in its own fresh worker process, restricted to
the same ``--threads`` CPUs (``sched_setaffinity`` before any import, so XLA's Eigen pool has that
many threads; ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` the same). The batches are a pool of
``--pool`` batches generated once (numpy, fixed seed) and placed on the device before timing; step
``i`` uses batch ``i % pool``, so the data pipeline is not measured. The first step is timed alone
(trace + compile + run: the "compile" column), then ``--warmup`` steps, then ``--repeats`` timed runs
of ``n`` steps each (``n`` sized from the warm-up to last about ``--repeat-s`` seconds). The loss is
waited for after every ``--sync-every`` steps (default 1: every step, ``block_until_ready`` for JAX;
PyTorch eager on CPU is synchronous already). Steps/s is the median over the repeats (and over
``--procs`` worker processes). The loss after ``--check-step`` steps is recorded: every framework
computes the same training run, so these agree to float32 rounding. "CPU ms/step" is the worker's
CPU time (all its threads, ``time.process_time``) per timed step: on a busy machine it moves less than
steps/s, but it also counts threads that spin while waiting (OpenMP in PyTorch).

Memory. Peak RSS is the worker's ``VmHWM`` (imports included). For the first batch size the worker
then trains for ``--duration`` seconds more, sampling ``VmRSS`` every 0.25 s, and fits a line to the
samples after the first third (at least 5 s) of that run: the steady-state RSS growth in MB/min.

    python bench/train.py                                   # the table recorded in bench/RESULTS.md
    python bench/train.py --duration 300 --frameworks candlejax   # the 5-minute RSS check
    python bench/train.py --models mlp --batch-sizes 64 --frameworks candlejax,jax --duration 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MODELS = ("mlp", "cnn")
FRAMEWORKS = ("candlejax", "candlejax-bound", "candlejax-xla-conv", "flax-nnx", "flax-nnx-cached", "jax", "jax-sync",
              "torch", "torch-compile")  # fmt: skip
DEFAULT_FRAMEWORKS = ("candlejax", "candlejax-bound", "flax-nnx", "flax-nnx-cached", "jax", "torch")
LR, BETAS, EPS, WD = 1e-3, (0.9, 0.999), 1e-8, 0.01
MLP_IN = 784


# --- process measurements -----------------------------------------------------------------------
def _status_kb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def rss_mb() -> float:
    """Current resident set size (``VmRSS``) in MB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident set size (``VmHWM``) in MB."""
    return _status_kb("VmHWM") / 1024


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, MB)`` samples, in MB/min."""
    if len(samples) < 3:
        return float("nan")
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return float("nan")
    return sum((t - mt) * (v - mv) for t, v in samples) / var * 60


# --- shared model definition: weights (PyTorch layout) and data ----------------------------------
def weight_shapes(model: str) -> dict[str, tuple[int, ...]]:
    if model == "mlp":
        return {"first.weight": (100, MLP_IN), "first.bias": (100,), "second.weight": (10, 100), "second.bias": (10,)}
    return {
        "conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3), "conv2.bias": (32,),
        "fc1.weight": (64, 512), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,),
    }  # fmt: skip


def init_weights(model: str, seed: int = 0) -> dict[str, Any]:
    """PyTorch's default init (U(±1/sqrt(fan_in))), from numpy, identical for every framework."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in weight_shapes(model).items():
        fan_in = int(np.prod(weight_shapes(model)[name.replace(".bias", ".weight")][1:]))
        bound = 1 / np.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def make_batches(model: str, batch: int, pool: int, seed: int = 1) -> list[tuple[Any, Any]]:
    import numpy as np

    rng = np.random.default_rng([seed, batch])
    feat = MLP_IN if model == "mlp" else 64
    return [(rng.random((batch, feat), dtype=np.float32), rng.integers(0, 10, batch).astype(np.int64))
            for _ in range(pool)]  # fmt: skip


# --- one framework each: returns (step(i) -> loss handle, sync(loss), value(loss) -> float) -------
Setup = tuple[Callable[[int], Any], Callable[[Any], Any], Callable[[Any], float], dict[str, Any]]


def _jax_info() -> dict[str, Any]:
    import jax

    try:
        asyn = bool(jax.config.read("jax_cpu_enable_async_dispatch"))
    except Exception:
        asyn = None
    return {"jax_async_dispatch": asyn, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jax_devices": str(jax.devices())}  # fmt: skip


def setup_candlejax(model: str, weights: dict[str, Any], batches: list[Any], args: Any, bound: bool = False,
                    xla_conv: bool = False) -> Setup:  # fmt: skip
    import numpy as np

    import candlejax as cj
    from candlejax import Device, DType, Tensor
    from candlejax.nn import Module, VarBuilder, VarMap, linear

    class Mlp(Module):  # the model, verbatim
        def __init__(self, vb: Any):
            self.first = linear(MLP_IN, 100, vb.pp("first"))
            self.second = linear(100, 10, vb.pp("second"))

        def forward(self, image: Any) -> Any:
            return self.second.forward(self.first.forward(image).relu())

    from candlejax.demo import Cnn  # the demo's CNN, as it is

    params = cj.optim.ParamsAdamW(lr=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, weight_decay=WD)
    data = [(Tensor.new(x), Tensor.new(y.astype(np.uint32))) for x, y in batches]

    def loss_fn(m: Any, x: Any, y: Any) -> Any:
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    if bound:
        varmap = VarMap()
        vm = VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)
        net = Mlp(vm) if model == "mlp" else Cnn(vm)
        varmap.set(weights)  # what varmap.load(path) does, from memory
        bopt = cj.optim.AdamW(varmap.all_vars(), params)

        def bstep(i: int) -> Any:
            x, y = data[i % len(data)]
            return bopt.backward_step(loss_fn, net, x, y)

        return bstep, lambda t: t.jax.block_until_ready(), lambda t: float(t.to_scalar()), _jax_info()

    vb = VarBuilder.from_tensors(dict(weights), DType.F32, Device.Cpu)
    net = Mlp(vb) if model == "mlp" else Cnn(vb)
    opt = cj.optim.AdamW(params, compiler_options=cj.xla.XLA_CONVOLUTION_OPTIONS if xla_conv else None)
    if getattr(args, "devices", 1) > 1:  # data parallel: replicated model, batches split over "data"
        import jax

        mesh = cj.distributed.mesh({"data": args.devices}, jax.devices()[: args.devices])
        net = cj.distributed.shard(net, mesh, "replicate")
        data = [cj.distributed.shard_batch(b, mesh) for b in data]
    state = opt.init(net)

    def step(i: int) -> Any:
        nonlocal net, state
        x, y = data[i % len(data)]
        net, state, loss = opt.backward_step(loss_fn, net, state, x, y)
        return loss

    return step, lambda t: t.jax.block_until_ready(), lambda t: float(t.to_scalar()), _jax_info()


def setup_flax(model: str, weights: dict[str, Any], batches: list[Any], args: Any, cached: bool) -> Setup:
    import jax.numpy as jnp
    import optax
    from flax import nnx

    rngs = nnx.Rngs(0)
    if model == "mlp":

        class Net(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.first = nnx.Linear(MLP_IN, 100, rngs=rngs)
                self.second = nnx.Linear(100, 10, rngs=rngs)

            def __call__(self, x: Any) -> Any:
                return self.second(nnx.relu(self.first(x)))

        net = Net(rngs)
        layers = {"first": net.first, "second": net.second}
    else:

        class Net(nnx.Module):  # type: ignore[no-redef]  # NHWC, Flax's native layout
            def __init__(self, rngs: nnx.Rngs):
                pad = ((1, 1), (1, 1))
                self.conv1 = nnx.Conv(1, 16, (3, 3), padding=pad, rngs=rngs)
                self.conv2 = nnx.Conv(16, 32, (3, 3), padding=pad, rngs=rngs)
                self.fc1 = nnx.Linear(512, 64, rngs=rngs)
                self.fc2 = nnx.Linear(64, 10, rngs=rngs)

            def __call__(self, x: Any) -> Any:
                b = x.shape[0]
                x = x.reshape((b, 8, 8, 1))
                x = nnx.relu(self.conv1(x))
                x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
                return self.fc2(nnx.relu(self.fc1(x.reshape((b, -1)))))

        net = Net(rngs)
        layers = {"conv1": net.conv1, "conv2": net.conv2, "fc1": net.fc1, "fc2": net.fc2}
    for name, layer in layers.items():
        w = weights[f"{name}.weight"]
        if w.ndim == 4:  # (O, I, kh, kw) -> (kh, kw, I, O)
            k = w.transpose(2, 3, 1, 0)
        elif name == "fc1":  # PyTorch flattens (C, H, W); NHWC flattens (H, W, C)
            k = w.reshape(64, 32, 4, 4).transpose(2, 3, 1, 0).reshape(512, 64)
        else:
            k = w.T
        layer.kernel.value = jnp.asarray(k)
        layer.bias.value = jnp.asarray(weights[f"{name}.bias"])
    opt = nnx.Optimizer(net, optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: Any, optimizer: Any, x: Any, y: Any) -> Any:
        def loss_fn(model: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    data = [(jnp.asarray(x), jnp.asarray(y.astype("int32"))) for x, y in batches]
    if cached:
        fn = nnx.cached_partial(train_step, net, opt)

        def step(i: int) -> Any:
            x, y = data[i % len(data)]
            return fn(x, y)
    else:

        def step(i: int) -> Any:
            x, y = data[i % len(data)]
            return train_step(net, opt, x, y)

    return step, lambda t: t.block_until_ready(), float, _jax_info()


def setup_jax(model: str, weights: dict[str, Any], batches: list[Any], args: Any, sync: bool = False) -> Setup:
    import jax

    if sync:  # before any array exists, as candlejax does at import
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    import jax.numpy as jnp
    import optax
    from jax import lax

    def linear(p: Any, name: str, x: Any) -> Any:
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    def conv(p: Any, name: str, x: Any) -> Any:
        y = lax.conv_general_dilated(x, p[name + ".weight"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))  # fmt: skip
        return y + p[name + ".bias"][None, :, None, None]

    def forward(p: Any, x: Any) -> Any:
        if model == "mlp":
            return linear(p, "second", jax.nn.relu(linear(p, "first", x)))
        b = x.shape[0]
        x = jax.nn.relu(conv(p, "conv1", x.reshape(b, 1, 8, 8)))
        x = jax.nn.relu(conv(p, "conv2", x))
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        return linear(p, "fc2", jax.nn.relu(linear(p, "fc1", x.reshape(b, -1))))

    def loss_fn(p: Any, x: Any, y: Any) -> Any:
        logp = jax.nn.log_softmax(forward(p, x), axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD)

    def _train_step(p: Any, s: Any, x: Any, y: Any) -> Any:
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    train_step = jax.jit(_train_step, donate_argnums=(0, 1))
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    state = tx.init(params)
    data = [(jnp.asarray(x), jnp.asarray(y.astype("int32"))) for x, y in batches]

    def step(i: int) -> Any:
        nonlocal params, state
        x, y = data[i % len(data)]
        params, state, loss = train_step(params, state, x, y)
        return loss

    return step, lambda t: t.block_until_ready(), float, _jax_info()


def setup_torch(model: str, weights: dict[str, Any], batches: list[Any], args: Any, compiled: bool) -> Setup:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    torch.set_num_threads(args.threads)
    if model == "mlp":

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.first = nn.Linear(MLP_IN, 100)
                self.second = nn.Linear(100, 10)

            def forward(self, x: Any) -> Any:
                return self.second(F.relu(self.first(x)))
    else:

        class Net(nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
                self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
                self.fc1 = nn.Linear(512, 64)
                self.fc2 = nn.Linear(64, 10)

            def forward(self, x: Any) -> Any:
                x = x.reshape(x.shape[0], 1, 8, 8)
                x = F.relu(self.conv1(x))
                x = F.max_pool2d(F.relu(self.conv2(x)), 2)
                return self.fc2(F.relu(self.fc1(x.flatten(1))))

    net = Net()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def loss_of(x: Any, y: Any) -> Any:
        return F.cross_entropy(net(x), y)

    fwd, opt_step = loss_of, opt.step
    if compiled:
        fwd = torch.compile(loss_of)
        opt_step = torch.compile(opt.step)

    def step(i: int) -> Any:
        x, y = data[i % len(data)]
        opt.zero_grad(set_to_none=True)
        loss = fwd(x, y)
        loss.backward()
        opt_step()
        return loss

    info = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}  # fmt: skip
    return step, lambda t: None, lambda t: float(t.detach()), info


def worker(args: Any) -> dict[str, Any]:
    weights = init_weights(args.model)
    batches = make_batches(args.model, args.batch, args.pool)
    fw = args.framework
    t_import = time.perf_counter()
    if fw in ("candlejax", "candlejax-bound", "candlejax-xla-conv"):
        step, sync, value, info = setup_candlejax(args.model, weights, batches, args, fw == "candlejax-bound",
                                                  fw == "candlejax-xla-conv")  # fmt: skip
    elif fw in ("flax-nnx", "flax-nnx-cached"):
        step, sync, value, info = setup_flax(args.model, weights, batches, args, fw == "flax-nnx-cached")
    elif fw in ("jax", "jax-sync"):
        step, sync, value, info = setup_jax(args.model, weights, batches, args, fw == "jax-sync")
    elif fw in ("torch", "torch-compile"):
        step, sync, value, info = setup_torch(args.model, weights, batches, args, fw == "torch-compile")
    else:
        raise SystemExit(f"unknown framework {fw}")
    setup_s = time.perf_counter() - t_import
    del weights, batches
    rss_setup = rss_mb()

    t0 = time.perf_counter()
    loss = step(0)
    sync(loss)
    compile_s = time.perf_counter() - t0
    losses = {1: value(loss)}
    i = 1
    t0 = time.perf_counter()
    warm = max(args.warmup, args.check_step - 1)
    for _ in range(warm):
        loss = step(i)
        i += 1
        sync(loss)
        if i == args.check_step:
            losses[i] = value(loss)
    per_step = (time.perf_counter() - t0) / max(warm, 1)
    n = max(10, int(args.repeat_s / max(per_step, 1e-6)))
    n -= n % args.sync_every
    runs, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for j in range(1, n + 1):
            loss = step(i)
            i += 1
            if j % args.sync_every == 0:
                sync(loss)
        sync(loss)
        runs.append(n / (time.perf_counter() - t0))
        cpu.append((time.process_time() - c0) / n * 1e3)

    rss_samples: list[tuple[float, float]] = []
    sustained = None
    if args.duration > 0:
        t_start = time.perf_counter()
        next_sample, steps0 = t_start, i
        while True:
            loss = step(i)
            i += 1
            if i % args.sync_every == 0:
                sync(loss)
            now = time.perf_counter()
            if now >= next_sample:
                sync(loss)
                rss_samples.append((now - t_start, rss_mb()))
                next_sample += 0.25
                if now - t_start >= args.duration:
                    break
        sustained = (i - steps0) / (time.perf_counter() - t_start)
    skip = max(5.0, args.duration / 3)
    steady = [s for s in rss_samples if s[0] >= skip]
    return {
        "model": args.model, "batch": args.batch, "framework": fw, "setup_s": setup_s, "compile_s": compile_s,
        "steps_per_repeat": n, "runs": runs, "median": statistics.median(runs), "losses": losses,
        "cpu_ms": statistics.median(cpu),
        "rss_setup_mb": rss_setup, "peak_rss_mb": peak_rss_mb(), "sustained": sustained,
        "rss_growth_mb_min": slope_per_min(steady) if steady else None,
        "rss_steady": [steady[0][1], steady[-1][1], steady[-1][0] - steady[0][0]] if steady else None,
        "affinity": sorted(os.sched_getaffinity(0)), "total_steps": i, **info,
    }  # fmt: skip


def ab_bound_vs_functional(model: str, batch: int, rounds: int, steps: int) -> str:
    """Both candlejax training forms in one process, alternating blocks of ``steps`` steps, so that
    machine load hits both alike; returns a Markdown line with the median CPU and wall µs/step."""
    weights = init_weights(model)
    batches = make_batches(model, batch, 8)

    class _Args:
        threads = 1

    forms = {"functional": setup_candlejax(model, weights, batches, _Args, False),
             "bound": setup_candlejax(model, weights, batches, _Args, True)}  # fmt: skip
    cpu: dict[str, list[float]] = {k: [] for k in forms}
    wall: dict[str, list[float]] = {k: [] for k in forms}
    i = 0
    for step, sync, _, _ in forms.values():  # compile + warm up
        for _ in range(30):
            sync(step(i))
            i += 1
    for _ in range(rounds):
        for name, (step, sync, _, _) in forms.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                sync(step(i))
                i += 1
            wall[name].append((time.perf_counter() - t0) / steps * 1e6)
            cpu[name].append((time.process_time() - c0) / steps * 1e6)
    med = {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in forms}
    (fc, fw), (bc, bw) = med["functional"], med["bound"]
    return (f"| {model} | {batch} | {fc:,.0f} | {bc:,.0f} | {bc / fc:.3f} | {fw:,.0f} | {bw:,.0f} | {bw / fw:.3f} |")


# --- parent ----------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('jax', 'jaxlib', 'flax', 'optax', 'torch', 'numpy')}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return {}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _worker_env(threads: int, cpus: list[int]) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["BENCH_CPUS"] = ",".join(map(str, cpus))
    return env


def run_worker(model: str, batch: int, fw: str, duration: float, args: Any, cpus: list[int]) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--batch", str(batch), "--framework", fw,
           "--duration", str(duration)]  # fmt: skip
    for k in ("threads", "pool", "warmup", "repeats", "repeat_s", "sync_every", "check_step", "devices"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    timeout = args.compile_timeout + args.repeats * args.repeat_s * 4 + duration + 120
    env = _worker_env(args.threads, cpus)
    if args.devices > 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}".strip()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{model}/{batch}/{fw}: worker timed out after {timeout:.0f} s", file=sys.stderr)
        return None
    if out.returncode != 0:
        print(f"{model}/{batch}/{fw}: worker failed\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["compile_s"] > args.compile_timeout:
        print(f"{model}/{batch}/{fw}: first step took {r['compile_s']:.0f} s (> --compile-timeout)", file=sys.stderr)
    return r


def _fmt(v: float | None, nd: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{nd}f}"


def combine(per_proc: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over the worker processes of one configuration."""
    r = dict(per_proc[0])
    for k in ("median", "cpu_ms", "compile_s", "peak_rss_mb", "setup_s"):
        r[k] = statistics.median(p[k] for p in per_proc)
    r["runs"] = [x for p in per_proc for x in p["runs"]]
    return r


def report(results: list[dict[str, Any]], meta: dict[str, Any], args: Any) -> str:
    lines = [
        f"Command: `{meta['command']}`  ",
        f"{meta['candlejax']}  ",
        f"Date: {meta['date']}; host: {meta['cpu']}, {meta['ncpu']} CPUs; load average at start"
        f" {meta['load_start']}, at end {meta['load_end']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f", Python {meta['python']}  ",
        f"Threads: workers pinned to CPUs {meta['cpus']} ({args.threads} threads): {meta['threads']}  ",
        f"Method: steps/s = median of {args.repeats} runs of ~{args.repeat_s:g} s x {args.procs} process(es),"
        f" loss waited for every {args.sync_every} step(s); {args.pool} pre-placed batches;"
        + (
            f" RSS growth over {args.duration:g} s (first batch size only), slope after the first"
            f" {max(5.0, args.duration / 3):.0f} s."
            if args.duration > 0
            else " no RSS-growth run."
        )
        + " CPU ms/step: process CPU time (all threads) per step, median;"
        " less sensitive to other processes' load than steps/s.",
        "",
        "| model | batch | framework | steps/s | spread | vs torch eager | vs flax-nnx | CPU ms/step"
        f" | first step (compile) s | peak RSS MB | RSS growth MB/min | loss @ step {args.check_step} |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["model"], r["batch"], r["framework"]): r for r in results}
    for r in results:
        key = (r["model"], r["batch"])
        torch_r, flax_r = by.get((*key, "torch")), by.get((*key, "flax-nnx"))
        ratio = lambda o, r=r: f"{r['median'] / o['median']:.2f}x" if o else "n/a"  # noqa: E731
        spread = f"{min(r['runs']):,.0f}–{max(r['runs']):,.0f}"
        growth = r.get("rss_growth_mb_min")
        loss = r["losses"].get(str(args.check_step), r["losses"].get(args.check_step))
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['framework']} | {r['median']:,.0f} | {spread} | {ratio(torch_r)}"
            f" | {ratio(flax_r)} | {r['cpu_ms']:.2f} | {r['compile_s']:.2f} | {r['peak_rss_mb']:,.0f}"
            f" | {'' if growth is None else f'{growth:+.2f}'} | {'n/a' if loss is None else f'{loss:.5f}'} |"
        )
    verdicts = []
    for (model, batch, fw), r in by.items():
        if fw == "candlejax-bound":
            f = by.get((model, batch, "candlejax"))
            if f:
                q = r["median"] / f["median"]
                cq = f["cpu_ms"] / r["cpu_ms"]
                verdicts.append(
                    f"- {model}, batch {batch}: bound step = {q:.3f}x the functional step's steps/s, {cq:.3f}x by"
                    f" CPU ms/step (target: >= 0.95x, i.e. at most 5% slower)"
                )
            continue
        if fw != "candlejax":
            continue
        parts = []
        for other, target in (("flax-nnx", 1.0), ("torch", 1.5), ("jax", None)):
            o = by.get((model, batch, other))
            if o:
                q = r["median"] / o["median"]
                ok = "" if target is None else (" (target met)" if q >= target else f" (target {target}x NOT met)")
                parts.append(f"{q:.2f}x {other}{ok}")
        if parts:
            verdicts.append(f"- {model}, batch {batch}: candlejax = " + ", ".join(parts))
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-sizes", default="64,256")
    p.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS), help=f"from {', '.join(FRAMEWORKS)}")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPUs per worker (default: all)")
    p.add_argument("--procs", type=int, default=1, help="worker processes per configuration (median)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--repeat-s", type=float, default=1.0, help="target seconds per timed run")
    p.add_argument("--warmup", type=int, default=30, help="steps after the first, before timing")
    p.add_argument("--sync-every", type=int, default=1, help="wait for the loss every k steps")
    p.add_argument("--pool", type=int, default=8, help="distinct batches, cycled")
    p.add_argument("--check-step", type=int, default=20, help="record the loss after this many steps")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of the RSS-growth run (0: skip)")
    p.add_argument("--compile-timeout", type=float, default=120.0, help="flag a first step slower than this")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--ab", action="store_true",
                   help="only compare candlejax's bound and functional steps in one process, alternating")  # fmt: skip
    p.add_argument("--devices", type=int, default=1,
                   help="candlejax data-parallel over N devices (CPU: N simulated host devices)")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--framework", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from provenance import describe

    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.ab:
        print("| model | batch | functional CPU µs/step | bound CPU µs/step | bound / functional | functional wall µs"
              " | bound wall µs | bound / functional |\n|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for m in models:
            for b in (int(x) for x in args.batch_sizes.split(",") if x.strip()):
                print(ab_bound_vs_functional(m, b, args.repeats * 3, 100 if m == "mlp" else 20), flush=True)
        return
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    for m in models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    for f in frameworks:
        if f not in FRAMEWORKS:
            p.error(f"unknown framework {f!r}; choose from {', '.join(FRAMEWORKS)}")
    meta = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu(), "ncpu": os.cpu_count(), "cpus": cpus, "python": platform.python_version(),
        "versions": _versions(), "load_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "candlejax": describe(),
    }  # fmt: skip
    results = []
    threads: dict[str, Any] = {}
    for model in models:
        for bi, batch in enumerate(batches):
            for fw in frameworks:
                duration = args.duration if bi == 0 else 0.0
                print(f"{model} batch {batch} {fw} ...", file=sys.stderr, flush=True)
                per_proc = []
                for k in range(args.procs):
                    r = run_worker(model, batch, fw, duration if k == 0 else 0.0, args, cpus)
                    if r is not None:
                        per_proc.append(r)
                if not per_proc:
                    continue
                r = combine(per_proc)
                results.append(r)
                if fw.startswith("torch"):
                    threads.setdefault(
                        "torch",
                        f"torch.get_num_threads()={r['torch_threads']}, "
                        f"interop={r['torch_interop_threads']}, OMP_NUM_THREADS={r['omp_num_threads']}",
                    )
                else:
                    threads.setdefault(f"{fw}", f"async dispatch {'on' if r['jax_async_dispatch'] else 'off'}")
                    threads.setdefault("XLA_FLAGS", repr(r["xla_flags"]))
                print(
                    f"  {r['median']:,.0f} steps/s, first step {r['compile_s']:.2f} s, peak RSS"
                    f" {r['peak_rss_mb']:.0f} MB, growth {r.get('rss_growth_mb_min')}",
                    file=sys.stderr,
                )
    meta["load_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    meta["threads"] = "; ".join(f"{k}: {v}" for k, v in threads.items())
    print(report(results, meta, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    if "--worker" in sys.argv and os.environ.get("BENCH_CPUS"):
        os.sched_setaffinity(0, {int(c) for c in os.environ["BENCH_CPUS"].split(",")})
    main()
