"""Long-running loops do not leak: device buffers, models and threads dropped by the caller are
freed (measured with ``jax.live_arrays()`` and ``weakref``), whatever candlejax caches."""

from __future__ import annotations

import gc
import weakref

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from candlejax.generation import generate  # noqa: E402
from candlejax.models import llama  # noqa: E402


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    d = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _live() -> int:
    gc.collect()
    return len(jax.live_arrays())


def _step_over(model):
    """A step function that ignores its params and uses the ``model`` it captured."""
    return lambda p, c, t, pos, **kw: llama.step(model, c, t, pos, **kw)


def test_generate_with_a_closure_over_the_model_frees_the_model_once_dropped(llama_dir):
    """A step function that captures the model (a lambda, a partial) must not keep the model's weights
    alive in generate's cache of compiled steps after the caller drops model and generation: loading
    and dropping models in a loop kept up to 16 of them."""
    base = _live()
    refs = []
    for _ in range(4):
        m = llama.Llama.from_pretrained(llama_dir)
        g = generate(_step_over(m), m, m.new_cache(1, 16), [1, 2, 3], 3)
        assert len(list(g)) == 3
        refs.append(weakref.ref(m))
        del m, g
    assert _live() <= base
    assert [r() for r in refs] == [None] * 4


class _Runner:
    """A chat object whose bound ``step`` (not the model's) is the step function."""

    def __init__(self, model):
        self.model = model

    def step(self, params, cache, tokens, pos, last=None):
        return llama.step(self.model, cache, tokens, pos, last=last)


def _turns(step_of, model, jax_compiles, n=5):
    """Compiles per turn of a chat loop that calls generate ``n`` times, dropping each Generation."""
    counts = []
    for turn in range(n):
        jax_compiles.clear()
        g = generate(step_of(), model, model.new_cache(1, 32), [1, 2, 3, 4][: 1 + turn % 2], 3)
        assert len(list(g)) == 3
        del g
        gc.collect()
        counts.append(len(jax_compiles))
    return counts


@pytest.mark.parametrize("kind", ["closure", "bound_runner", "model_step"])
def test_a_chat_reusing_one_step_function_compiles_only_its_first_turn(llama_dir, jax_compiles, kind):
    """The same step object (a closure over the model, a chat object's bound method, ``model.step``;
    all take ``last=``, so prompts of any length share one padded prefill) passed to generate once
    per turn reuses its compiled steps after the earlier Generation is collected: each turn
    recompiled (~1 s) once the compiled steps went with the Generation."""
    m = llama.Llama.from_pretrained(llama_dir)
    closure, runner = (lambda p, c, t, pos, last=None: llama.step(m, c, t, pos, last=last)), _Runner(m)
    step_of = {"closure": lambda: closure, "bound_runner": lambda: runner.step, "model_step": lambda: m.step}[kind]
    counts = _turns(step_of, m, jax_compiles)
    assert counts[0] > 0 and counts[1:] == [0, 0, 0, 0], counts


def _getter(owner, kind):
    return (lambda: owner) if kind == "closure" else (lambda: owner.step)


@pytest.mark.parametrize("kind", ["closure", "bound_runner"])
def test_a_reused_step_function_dropped_with_its_model_frees_the_model(llama_dir, jax_compiles, kind):
    """The compiled steps cached for a step object live as long as it: dropping it (or the chat
    object whose method it is) and the model frees the model and the step object."""
    m = llama.Llama.from_pretrained(llama_dir)
    owner = _step_over(m) if kind == "closure" else _Runner(m)
    _turns(_getter(owner, kind), m, jax_compiles, n=2)
    refs = [weakref.ref(m), weakref.ref(owner)]
    del m, owner
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_compiled_steps_of_a_collected_step_function_raise_when_traced_again(llama_dir):
    """The cached steps reach the step function weakly: once it is gone, tracing them anew raises
    a candlejax error instead of calling a dead function."""
    import candlejax as cj
    from candlejax.generation import Sampling, decode_fns

    m = llama.Llama.from_pretrained(llama_dir)
    fns = decode_fns(_step_over(m), Sampling.ArgMax(), False)
    gc.collect()
    with pytest.raises(cj.errors.Error, match="step function"):
        fns.logits(m, m.new_cache(1, 16), np.ones((1, 2), np.uint32), np.int32(0))


def test_generate_reuses_its_compiled_steps_and_keeps_live_buffers_constant(llama_dir):
    """Repeated generate calls with the module's step (fresh prompts) compile once and leave no buffers behind."""
    m = llama.Llama.from_pretrained(llama_dir)
    rng = np.random.default_rng(0)

    def once() -> generate:
        g = generate(llama.step, m, m.new_cache(1, 32), rng.integers(1, 100, 5).tolist(), 4)
        list(g)
        return g

    fns = weakref.ref(once().fns)  # not kept alive here: generate's cache holds the module's step (last=None default)
    traced = fns().trace_count
    warm = _live()
    for _ in range(20):
        assert once().fns is fns()
    assert _live() <= warm and fns().trace_count == traced


def test_training_steps_keep_live_buffers_constant():
    """The donated model and optimizer state of each functional step are freed (README's loop)."""
    import candlejax as cj
    from candlejax import Device, DType, Tensor
    from candlejax.nn import Module, VarBuilder, VarMap, linear

    class Mlp(Module):
        def __init__(self, vb):
            self.first = linear(8, 16, vb.pp("first"))
            self.second = linear(16, 4, vb.pp("second"))

        def forward(self, x):
            return self.second.forward(self.first.forward(x).relu())

    def loss_fn(model, x, y):
        return cj.nn.loss.cross_entropy(model.forward(x), y)

    rng = np.random.default_rng(0)
    x = Tensor.new(rng.standard_normal((16, 8)).astype(np.float32))
    y = Tensor.new(rng.integers(0, 4, 16).astype(np.uint32))
    model = Mlp(VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu))
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-3))
    state = opt.init(model)
    for _ in range(5):
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
    warm = _live()
    for _ in range(200):
        model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
    assert _live() <= warm and np.isfinite(loss.to_scalar())


def test_batcher_epochs_stopped_early_leave_no_prefetch_threads():
    import threading

    import candlejax as cj
    from candlejax import Tensor

    x = Tensor.new(np.zeros((100, 3), np.float32))
    batcher = cj.data.Batcher((x,), batch_size=8, shuffle=True, prefetch=2)
    before = threading.active_count()
    for epoch in range(30):
        for k, _ in enumerate(batcher):
            if epoch % 2 and k == 2:
                break
    gc.collect()
    assert threading.active_count() <= before
