"""candlejax called from several Python threads at once (a serving thread pool sharing one model and
the device generators): every thread gets the result it would get alone, and shared generators hand
out each draw once (Candle's CUDA generator sits behind a Mutex: candle-core/src/cuda_backend/device.rs)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest

from candlejax import Device, Tensor, random
from candlejax.generation import generate
from candlejax.nn import ops

CPU = Device.Cpu
THREADS = 4


def _in_threads(fn: Callable[[int], Any], n: int = THREADS) -> list[Any]:
    """``fn(i)`` in ``n`` threads released together; the results in thread order (a thread's
    exception is raised here)."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n
    errs: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            out[i] = fn(i)
        except BaseException as e:  # re-raised in the caller
            errs.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errs:
        raise errs[0]
    return out


def _key_bits(k: Any) -> tuple[int, ...]:
    return tuple(np.asarray(jax.random.key_data(k)).reshape(-1).tolist())


def test_device_generator_hands_each_key_out_once_across_threads():
    n = 300
    CPU.set_seed(7)
    alone = {_key_bits(random.next_key(CPU, "test")) for _ in range(THREADS * n)}
    CPU.set_seed(7)
    drawn = _in_threads(lambda i: [_key_bits(random.next_key(CPU, "test")) for _ in range(n)])
    flat = [k for keys in drawn for k in keys]
    assert len(set(flat)) == len(flat), "two threads drew the same key"
    assert set(flat) == alone  # the same draws as one thread making them all, none skipped
    assert random.get_state(CPU) == (7, THREADS * n)


def test_randn_and_dropout_in_threads_draw_distinct_values():
    n = 150
    CPU.set_seed(11)
    x = Tensor.ones((64,), device=CPU)

    def work(i: int) -> list[tuple[float, ...]]:
        out = []
        for _ in range(n):
            out.append(tuple(Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1()))
            out.append(tuple(ops.dropout(x, 0.5).to_vec1()))
        return out

    flat = [v for vals in _in_threads(work) for v in vals]
    assert len(set(flat)) == len(flat), "two threads drew the same numbers"
    assert random.get_state(CPU) == (11, THREADS * n * 2)


class _SwitchingStep:
    """A step function whose ``hash`` lets another thread run ``between`` (the ``n``-th hash from
    now): a deterministic thread switch inside ``decode_fns``'s cache update."""

    def __init__(self) -> None:
        self.countdown = 0
        self.between: Callable[[], None] = lambda: None
        self.other: threading.Thread | None = None

    def __call__(self, params: Any, cache: Any, tokens: Any, pos: Any) -> Any:
        return jax.numpy.zeros((1, 8)), cache

    def __hash__(self) -> int:
        self.countdown -= 1
        if self.countdown == 0:
            self.other = threading.Thread(target=self.between)
            self.other.start()
            self.other.join(timeout=0.5)  # (it waits while this thread holds the cache)
        return id(self) >> 4


def test_generation_cache_survives_another_thread_evicting_the_entry(monkeypatch):
    gen = importlib.import_module("candlejax.generation.generate")
    # callable instances are held weakly (a dropped model is freed): here they stand for plain step functions,
    # which the bounded cache holds and evicts
    monkeypatch.setattr(gen, "_captures", lambda step_fn: False)
    step = _SwitchingStep()
    others = [_SwitchingStep() for _ in range(gen._CACHE_SIZE + 1)]
    failures: list[BaseException] = []

    def churn() -> None:  # another serving thread: generations with other steps fill the cache
        try:
            for s in others:
                generate(s, {}, {}, [1], 0)
        except BaseException as e:  # reported below
            failures.append(e)

    first = generate(step, {}, {}, [1], 0).fns
    assert generate(step, {}, {}, [1], 0).fns is first  # cached
    step.countdown, step.between = 2, churn  # between the lookup and the reordering of the next call
    assert generate(step, {}, {}, [1], 0).fns is first
    assert step.other is not None
    step.other.join()
    if failures:
        raise failures[0]


class _SwitchingLabel(str):
    """A label whose ``hash`` lets another thread run ``between`` on its ``n``-th call from now."""

    countdown = 0
    between: Callable[[], None] = staticmethod(lambda: None)

    def __hash__(self) -> int:
        type(self).countdown -= 1
        if type(self).countdown == 0:
            other = threading.Thread(target=type(self).between)
            other.start()
            other.join(timeout=0.5)
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)


def test_zero_shot_label_cache_survives_another_thread_evicting_the_labels(monkeypatch):
    from candlejax.pipelines import zero_shot

    monkeypatch.setattr(zero_shot.clip, "tokenize", lambda tok, labels, n, bucket=False: (labels, None))
    monkeypatch.setattr(zero_shot.clip, "text_features_jit",
                        lambda model, labels, mask: jax.numpy.ones((len(labels), 4)))  # fmt: skip
    clf = zero_shot.ZeroShotClassifier.__new__(zero_shot.ZeroShotClassifier)
    clf.cache_size, clf._text, clf.tokenizer = 1, {}, None
    clf.model = type("M", (), {"text_model": type("T", (), {"max_position_embeddings": 8})})()
    labels = [_SwitchingLabel("cat"), _SwitchingLabel("dog")]
    first = clf.text_features(labels)
    failures: list[BaseException] = []

    def other_labels() -> None:  # another thread classifies against other labels: they take the one slot
        try:
            clf.text_features(["car", "bus"])
        except BaseException as e:  # reported below
            failures.append(e)

    _SwitchingLabel.countdown, _SwitchingLabel.between = 3, staticmethod(other_labels)
    try:
        np.testing.assert_array_equal(np.asarray(clf.text_features(labels)), np.asarray(first))
    finally:
        _SwitchingLabel.countdown = 0
    assert not failures


def test_text_generation_shared_by_threads_streams_each_prompt_as_alone(tmp_path):
    """One TextGeneration serving new prompts (no ``continue_cache``) from several threads: each
    call generates after its own fresh cache, the text it gives when run alone."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from candlejax import DType
    from candlejax.models import llama
    from candlejax.pipelines import TextGeneration

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(tmp_path)
    model = llama.Llama.from_pretrained(tmp_path, dtype=DType.F32)

    class Ids:  # a tokenizer whose text is the ids
        def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
            return "".join(f"{int(t)} " for t in ids)

    tg = TextGeneration(model, Ids(), eos_token_ids=[], max_seq_len=48)
    prompts = [[5 + i, 17, 3, 42 + i] for i in range(THREADS)]
    alone = ["".join(tg.stream(p, 10)) for p in prompts]
    assert len(set(alone)) == THREADS
    for _ in range(3):
        assert _in_threads(lambda i: "".join(tg.stream(prompts[i], 10))) == alone


def test_training_step_with_dropout_and_other_threads_drawing_share_the_generator():
    """A training thread (dropout in the loss: one key per step from the device generator) next to
    threads drawing ``randn``: every draw is counted, none handed out twice."""
    from candlejax import DType, nn
    from candlejax.nn import SGD, VarBuilder, VarMap, loss

    CPU.set_seed(5)
    varmap = VarMap.new()
    lin = nn.linear(8, 4, VarBuilder.from_varmap(varmap, DType.F32, CPU).pp("l"))
    x = Tensor.ones((2, 8), DType.F32, CPU)
    y = Tensor.new(np.array([0, 1], np.uint32))
    drop = nn.Dropout.new(0.5)

    def with_dropout(m: Any, x: Any, y: Any) -> Any:
        return loss.cross_entropy(drop.forward_t(m.forward(x), True), y)

    opt = SGD.new(varmap.all_vars(), 0.0)
    opt.backward_step(with_dropout, lin, x, y)  # compiled before the threads start
    steps, draws = 40, 100
    start = random.get_state(CPU)[1]

    def work(i: int) -> list[tuple[float, ...]]:
        if i == 0:
            for _ in range(steps):
                opt.backward_step(with_dropout, lin, x, y)
            return []
        return [tuple(Tensor.randn(0.0, 1.0, (4,), CPU).to_vec1()) for _ in range(draws)]

    flat = [v for vals in _in_threads(work) for v in vals]
    assert len(set(flat)) == len(flat), "two draws got the same key"
    assert random.get_state(CPU) == (5, start + steps + (THREADS - 1) * draws)


def test_generate_greedy_and_seeded_in_threads_gives_each_call_its_own_tokens():
    """Serving threads sharing one model: each ``generate`` (greedy, or sampled with its own seeded
    LogitsProcessor) yields the tokens it yields alone."""
    from candlejax.generation import LogitsProcessor, Sampling

    r = np.random.default_rng(0)
    params = {"W": jax.numpy.asarray(r.normal(size=(32, 32)).astype(np.float32) * 3)}

    def step(params: Any, cache: Any, tokens: Any, pos: Any) -> Any:
        buf = jax.lax.dynamic_update_slice(cache, tokens.astype(np.int32), (0, pos))
        return params["W"][tokens[:, -1]] + 0.05 * buf.sum(), buf

    def run(i: int) -> list[int]:
        proc = None if i % 2 == 0 else LogitsProcessor.from_sampling(40 + i, Sampling.TopKThenTopP(8, 0.9, 1.0))
        return list(generate(step, params, jax.numpy.zeros((1, 64), np.int32), [1 + i, 2, 3], 24, proc))

    alone = [run(i) for i in range(THREADS)]
    for _ in range(3):
        assert _in_threads(run) == alone


def test_varmap_get_from_two_threads_returns_the_one_var_it_keeps():
    """Two threads creating the same Var (Candle's ``VarMap::get`` holds the map's Mutex throughout):
    both get the Var the map keeps, so training ``all_vars()`` trains what both models use."""
    from candlejax import DType
    from candlejax.nn import Init, VarMap

    varmap = VarMap.new()
    got: list[Any] = []

    class SlowInit:  # while this thread samples, another thread creates the same Var
        def sample(self, *args: Any) -> Any:
            other = threading.Thread(target=lambda: got.append(varmap.get((2, 3), "w", Init.Const(1.0),
                                                                              DType.F32, CPU)))  # fmt: skip
            other.start()
            other.join()
            return Init.Const(1.0).sample(*args)

    mine = varmap.get((2, 3), "w", SlowInit(), DType.F32, CPU)
    assert mine is got[0] is varmap.data()["w"]
