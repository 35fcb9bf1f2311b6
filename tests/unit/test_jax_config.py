"""candlejax under JAX's global settings users turn on (strict dtype promotion, transfer guards,
x64 mode, debug_nans, disable_jit): the same results, no false errors, no implicit host reads.

Every flag is set in a context manager (restored on exit), so other tests are unaffected.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.lib import guard_lib

import candlejax as cj
from candlejax import Device, DType, Tensor, optim
from candlejax.generation import LogitsProcessor, Sampling
from candlejax.models import llama
from candlejax.nn import VarBuilder, VarMap, loss

CPU = Device.Cpu


@pytest.fixture(scope="module")
def tiny():
    cfg = llama.Config(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return llama.Llama.load(VarBuilder.from_varmap(VarMap(), DType.F32, CPU), cfg, strict=False)


@contextlib.contextmanager
def no_implicit_device_to_host(monkeypatch):
    """``jax.transfer_guard_device_to_host("disallow")`` (enforced on GPU/TPU), plus, since XLA:CPU
    never enforces it, a record of every implicit read of a concrete jax array (``np.asarray``,
    ``int()``, ``float()``, ``bool()``, ``tolist()``, ``item()``) outside ``jax.device_get``."""
    hits: list[str] = []

    def implicit(a: object) -> bool:
        return (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer)
                and not guard_lib.thread_local_state().explicit_device_get)  # fmt: skip

    def spy_fn(orig, name):
        def f(a, *args, **kwargs):
            if implicit(a):
                hits.append(name)
            return orig(a, *args, **kwargs)

        return f

    array_type = type(jnp.zeros(1))
    for name in ("__array__", "__int__", "__float__", "__bool__", "__index__", "tolist", "item"):
        monkeypatch.setattr(array_type, name, spy_fn(getattr(array_type, name), name))
    monkeypatch.setattr(np, "asarray", spy_fn(np.asarray, "np.asarray"))
    monkeypatch.setattr(np, "array", spy_fn(np.array, "np.array"))
    try:
        with jax.transfer_guard_device_to_host("disallow"):
            yield hits
    finally:
        monkeypatch.undo()


def test_eager_decode_step_reads_the_device_only_explicitly(tiny, monkeypatch):
    """A Candle-style decode loop (``forward`` with a cache, ``LogitsProcessor::sample``, ``to_vec1``)
    transfers to the host only through explicit reads (``jax.device_get``): no hidden syncs that
    ``transfer_guard_device_to_host("disallow")`` refuses."""
    cache = llama.Cache.new(True, DType.F32, tiny.config, CPU)
    logits = tiny.forward(Tensor.new([[1, 2, 3]], CPU), 0, cache)
    greedy, sampled = LogitsProcessor(0, None, None), LogitsProcessor.from_sampling(1, Sampling.TopK(5, 0.8))
    for pos, proc in ((3, greedy), (4, sampled)):  # warm up (compiles)
        logits = tiny.forward(Tensor.new([[proc.sample(logits.squeeze(0))]], CPU), pos, cache)
    with no_implicit_device_to_host(monkeypatch) as hits:
        for pos, proc in ((5, greedy), (6, sampled)):
            logits = tiny.forward(Tensor.new([[proc.sample(logits.squeeze(0))]], CPU), pos, cache)
        values = logits.to_vec2(), logits.max_all().to_scalar(), logits.numpy()
    assert hits == []
    assert np.array_equal(np.asarray(values[0], np.float32), values[2])


@pytest.mark.parametrize("slots,ids", [
    (16, [5]),  # a decoding step
    (600, [5, 6, 7, 8]),  # a prompt chunk into a cache of more than 512 slots: its slots picked from the position
])  # fmt: skip
def test_eager_llama_step_reads_the_device_only_explicitly(tiny, monkeypatch, slots, ids):
    """``llama.step`` called eagerly (its bounds checks of ids, position and cache slots, and the
    choice of the slots a prompt chunk attends, read the values once, explicitly)."""
    cache = tiny.new_cache(1, slots)
    tok, pos = jnp.asarray([ids], jnp.uint32), jnp.asarray(3, jnp.int32)
    ref, _ = llama.step(tiny, cache, tok, pos)
    with no_implicit_device_to_host(monkeypatch) as hits:
        got, _ = llama.step(tiny, cache, tok, pos)
    assert hits == []
    np.testing.assert_array_equal(jax.device_get(got), jax.device_get(ref))


def test_generate_after_the_first_token_reads_the_device_only_explicitly(tiny, monkeypatch):
    ref = list(tiny.generate([1, 2, 3], 6, eos_token_id=[]))
    it = tiny.generate([1, 2, 3], 6, eos_token_id=[])
    first = next(it)
    with no_implicit_device_to_host(monkeypatch) as hits:
        rest = list(it)
    assert hits == [] and [first, *rest] == ref


def _loss(m, a, b):
    return loss.cross_entropy(m.forward(a), b)


def _train(dtype: DType, steps: int = 3) -> list[float]:
    vm = VarMap()
    lin = cj.nn.linear(3, 3, VarBuilder.from_varmap(vm, dtype, CPU).pp("l"))
    rng = np.random.default_rng(0)
    for _, v in sorted(vm.data().items()):
        v.set(Tensor.new(rng.standard_normal(v.shape).astype(np.float32), CPU).to_dtype(dtype))
    x = Tensor.new([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], CPU).to_dtype(dtype)
    y = Tensor.new([2, 0], CPU)
    opt = optim.AdamW(vm.all_vars(), optim.ParamsAdamW(lr=0.05))
    losses = []
    for _ in range(steps):
        ls = opt.backward_step(_loss, lin, x, y)
        losses.append(float(ls.to_scalar()))
    losses.append(float(loss.cross_entropy(lin.forward(x), y).to_scalar()))
    return losses


@pytest.mark.parametrize("dtype", [DType.F32, DType.BF16])
def test_adamw_trains_under_strict_dtype_promotion(dtype):
    """``jax_numpy_dtype_promotion="strict"`` (users' setting) must not break candlejax's AdamW:
    optax's bias correction (``b1 ** count``, an int32 count) and a float32 rate times bf16 updates
    are promoted inside candlejax, as without the flag."""
    ref = _train(dtype)
    with jax.numpy_dtype_promotion("strict"):
        got = _train(dtype)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert got[-1] < got[0]


@contextlib.contextmanager
def _flag(name: str, value: object):
    old = jax.config.read(name)
    jax.config.update(name, value)
    try:
        yield
    finally:
        jax.config.update(name, old)


def test_x64_mode_keeps_candles_dtypes(tiny, tmp_path):
    """Candle-pyo3: ``Tensor([1.0])`` is f32, ``Tensor([1])`` u32; token ids, logits and saved files
    keep their dtypes when the user turns on ``jax_enable_x64`` after tensors exist."""
    ids = Tensor.new([[1, 2, 3]], CPU)
    ref = tiny.forward(ids, 0).numpy()
    with _flag("jax_enable_x64", True):
        assert [t.dtype for t in (Tensor.new([1.0]), Tensor.new([1]), Tensor.arange(0, 3, CPU),
                                  Tensor.arange(0.0, 3.0, CPU), Tensor.randn(0.0, 1.0, (2,), CPU))] == [
            DType.F32, DType.U32, DType.U32, DType.F32, DType.F32]  # fmt: skip
        got = tiny.forward(ids, 0).numpy()
        saved = {"a": Tensor.new([1.0, 2.0]) * 2.0, "b": Tensor.new([1, 2]) + 1}
        cj.safetensors.save(saved, tmp_path / "m.safetensors")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)
    from safetensors.numpy import load_file

    assert {k: v.dtype for k, v in load_file(tmp_path / "m.safetensors").items()} == {"a": np.float32, "b": np.uint32}


def test_disable_jit_and_debug_nans_give_the_same_tokens(tiny):
    """``jax.disable_jit()`` (debugging) and ``jax_debug_nans`` (the -inf causal mask and padded
    prefill are internal, not NaN-producing): generate still runs, with the same tokens."""
    ref = list(tiny.generate([1, 2, 3], 4, eos_token_id=[]))
    with jax.disable_jit():
        assert list(tiny.generate([1, 2, 3], 4, eos_token_id=[])) == ref
    with jax.debug_nans(True):
        assert list(tiny.generate([1, 2, 3], 4, eos_token_id=[])) == ref
        x = Tensor.new([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]], CPU)
        g = cj.grad(lambda t: loss.nll(cj.nn.ops.log_softmax(t.masked_fill(t.lt(0.0), float("-inf")), 1),
                                       Tensor.new([2, 0], CPU)))(x)  # fmt: skip
    assert np.isfinite(g.numpy()).all()
