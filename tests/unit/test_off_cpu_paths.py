"""The code paths candlejax takes off the CPU (a GPU or TPU process) or without the native kernels,
run here on the CPU: ``jax.default_backend`` reads ``"gpu"`` (so ``native.available()`` is False, as
on a GPU) or ``native.available`` is turned off, against float64 / torch references and against the
CPU path. Spies check that each test takes the path it claims (a compiled program for the same shapes
would otherwise be reused: the shapes here are used nowhere else)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import candlejax as cj
import candlejax.tensor.conv as tconv
from candlejax import Device, DType, nn
from candlejax.generation import LogitsProcessor, generate
from candlejax.generation import sampling as smp
from candlejax.nn import ops
from candlejax.nn.conv import nhwc_kernel, nhwc_kernel_layout, with_nhwc_kernels
from candlejax.quantized import native


@pytest.fixture
def off_cpu(monkeypatch):
    """``jax.default_backend()`` is ``"gpu"``: the branches for accelerators, without native kernels."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not native.available()

    def cpu_only(*a, **k):
        raise AssertionError("a CPU-only convolution program ran off the CPU")

    for name in ("_pointwise", "_depthwise_shifted", "_patch_conv"):
        monkeypatch.setattr(tconv, name, cpu_only)


def _t(a):
    return cj.Tensor(np.asarray(a, np.float32))


# (B, C, H, W, O, kh, kw, padding, stride, dilation, groups): 1x1, strided 1x1, padded 1x1, depthwise
# (plain, strided and dilated, channel multiplier 2), patch (stride == kernel), strided, dilated
# grouped, 5x5, a depthwise kernel wider than the shifted products take
CONVS = [(2, 5, 10, 11, 7, 1, 1, 0, 1, 1, 1), (2, 5, 10, 11, 7, 1, 1, 0, 2, 1, 1), (2, 5, 10, 11, 7, 1, 1, 1, 1, 1, 1),
         (2, 5, 10, 11, 5, 3, 3, 1, 1, 1, 5), (2, 5, 10, 11, 5, 3, 3, 1, 2, 2, 5), (2, 5, 10, 11, 10, 3, 3, 1, 1, 1, 5),
         (2, 5, 10, 10, 7, 2, 2, 0, 2, 1, 1), (2, 5, 10, 11, 7, 3, 3, 1, 2, 1, 1), (2, 6, 13, 13, 4, 3, 3, 2, 1, 2, 2),
         (1, 3, 11, 11, 7, 5, 5, 2, 1, 1, 1), (1, 5, 10, 10, 5, 9, 9, 4, 1, 1, 5)]  # fmt: skip


@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c)))
def test_convolutions_off_the_cpu_match_torch(off_cpu, rng, case):
    b, c, h, w, o, kh, kw, p, s, d, g = case
    x, k, bias = rng.standard_normal((b, c, h, w)), rng.standard_normal((o, c // g, kh, kw)), rng.standard_normal(o)
    ref = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(k), torch.tensor(bias), s, p, d, g).numpy()
    got = np.asarray(_t(x).conv2d(_t(k), p, s, d, g)) + bias[:, None, None]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    conv = nn.Conv2d(_t(k), _t(bias), nn.Conv2dConfig(padding=p, stride=s, dilation=d, groups=g))
    np.testing.assert_allclose(np.asarray(conv.forward(_t(x))), ref, rtol=1e-4, atol=1e-4)
    xh = _t(x.transpose(0, 2, 3, 1))
    if g == 1:
        assert nhwc_kernel_layout(conv, (h, w)) in (None, "HWIO")  # XLA's convolution, no stacked taps
        np.testing.assert_allclose(np.asarray(conv.forward_nhwc(xh)), ref.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
        fwd = jax.jit(lambda cs, ks, a: with_nhwc_kernels(cs, ks)[0].forward_nhwc(a, relu=True).jax)
        got = fwd([conv], [nhwc_kernel(conv, (h, w))], xh.jax)
        np.testing.assert_allclose(np.asarray(got), np.maximum(ref, 0).transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    elif o == c:
        nobias = ref - bias[:, None, None]
        got = ops.depthwise_conv2d(xh, _t(k), p, s, d, layout="nhwc")
        np.testing.assert_allclose(np.asarray(got), nobias.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    # the gradients
    xt, kt = torch.tensor(x, requires_grad=True), torch.tensor(k, requires_grad=True)
    (torch.nn.functional.conv2d(xt, kt, None, s, p, d, g) ** 2).sum().backward()
    gx, gk = jax.grad(lambda a, kk: (cj.Tensor(a).conv2d(cj.Tensor(kk), p, s, d, g).jax ** 2).sum(), (0, 1))(
        jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32))  # fmt: skip
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(gk), kt.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_conv1d_and_transposed_convolutions_off_the_cpu_match_torch(off_cpu, rng):
    x1, k1 = rng.standard_normal((2, 6, 17)), rng.standard_normal((4, 3, 3))
    ref = torch.nn.functional.conv1d(torch.tensor(x1), torch.tensor(k1), None, 2, 1, 2, 2).numpy()
    np.testing.assert_allclose(np.asarray(_t(x1).conv1d(_t(k1), 1, 2, 2, 2)), ref, rtol=1e-4, atol=1e-4)
    x, k = rng.standard_normal((2, 5, 7, 9)), rng.standard_normal((5, 3, 3, 3))
    for p, op_, s, d in ((0, 0, 3, 1), (1, 1, 2, 1), (1, 0, 1, 2)):
        ref = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(k), None, s, p, op_, 1, d).numpy()
        got = np.asarray(_t(x).conv_transpose2d(_t(k), p, op_, s, d))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mask", ["none", "padding", "padding_one_row", "bool", "full"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd", "keys_transposed"])
def test_sdpa_without_the_native_attention_matches_torch(monkeypatch, rng, mask, layout):
    b, h, s, t, d = 2, 3, 5, 7, 8
    q, k, v = (rng.standard_normal(shape).astype(np.float32) for shape in ((b, h, s, d), (b, h, t, d), (b, h, t, d)))
    pad = np.zeros((b, 1, 1, t), np.float32)
    pad[0, ..., 5:] = -np.inf
    pad[1] = -np.inf  # a batch entry that sees no key: zeros, as PyTorch
    keep = np.ones((b, 1, 1, t), bool)
    keep[0, ..., :2] = False
    full = np.where(rng.random((b, h, s, t)) > 0.3, 0.0, -np.inf).astype(np.float32)
    m = {"none": None, "padding": pad, "padding_one_row": pad[:1], "bool": keep, "full": full}[mask]
    tm = None if m is None else torch.tensor(m) if m.dtype == bool else torch.tensor(m, dtype=torch.float64)
    ref = torch.nn.functional.scaled_dot_product_attention(*(torch.tensor(a, dtype=torch.float64) for a in (q, k, v)),
                                                           tm).numpy()  # fmt: skip
    ref = np.nan_to_num(ref)  # PyTorch: NaN for a row that sees no key
    calls = []
    attention = native.f32_attention
    monkeypatch.setattr(native, "f32_attention", lambda *a, **kw: calls.append(1) or attention(*a, **kw))
    monkeypatch.setattr(native, "available", lambda: False)
    qq, kk, vv = q, k, v
    if layout == "bshd":
        qq, kk, vv = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    if layout == "keys_transposed":
        kk = k.transpose(0, 1, 3, 2)
    kw = {"layout": "bshd"} if layout == "bshd" else {"keys_transposed": layout == "keys_transposed"}
    mt = None if m is None else cj.Tensor(m)
    got = np.asarray(ops.sdpa(_t(qq), _t(kk), _t(vv), mt, **kw))
    got = got.transpose(0, 2, 1, 3) if layout == "bshd" else got
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    gq = jax.grad(lambda a: (ops.sdpa(cj.Tensor(a), _t(kk), _t(vv), mt, **kw).jax ** 2).sum())(jnp.asarray(qq))
    assert np.isfinite(np.asarray(gq)).all()
    assert not calls


@pytest.fixture(scope="module")
def tiny_llama():
    from candlejax.models import llama

    cfg = llama.Config(vocab_size=43, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    vb = nn.VarBuilder.from_varmap(nn.VarMap(seed=1), DType.F32, Device.Cpu)
    return llama.Llama.load(vb, cfg, strict=False)


@pytest.mark.parametrize("how", ["greedy", "sampled", "penalty", "eos", "cache_full", "prefill_buckets"])
def test_pipelined_generation_gives_the_same_tokens(tiny_llama, how):
    """``pipeline=True`` (the default off the CPU) dispatches the next step before the token reaches
    the host; the tokens, the finish reason and the processor's stream are those of ``pipeline=False``.
    At EOS the pipelined cache may hold the EOS (``pending_token`` None, ``pos`` one further)."""
    from candlejax.models import llama

    kw = {"greedy": {}, "sampled": {"proc": lambda: LogitsProcessor(3, 0.9, 0.95)},
          "penalty": {"proc": lambda: LogitsProcessor(4, 1.0, None), "repeat_penalty": 1.3, "repeat_last_n": 4},
          "eos": {"proc": lambda: LogitsProcessor(5, 1.5, None), "eos_token_id": list(range(0, 43, 3))},
          "cache_full": {"cap": 11, "n": 20}, "prefill_buckets": {"prefill_buckets": True}}[how]  # fmt: skip

    def run(pipeline):
        args = dict(kw)
        proc = args.pop("proc", lambda: None)()
        cache = tiny_llama.new_cache(1, args.pop("cap", 64))
        g = generate(llama.step, tiny_llama, cache, [5, 9, 22, 7, 3], args.pop("n", 10), proc, pipeline=pipeline,
                     **args)  # fmt: skip
        return list(g), g, proc

    want, g0, p0 = run(False)
    got, g1, p1 = run(True)
    assert g1.pipeline and not g0.pipeline
    assert got == want and g1.finish_reason == g0.finish_reason
    if p0 is not None:
        assert p1.step == p0.step
    if g0.finish_reason == "eos":
        assert g1.pos in (g0.pos, g0.pos + 1)
        more0 = list(generate(llama.step, tiny_llama, g0.cache, g0.continuation([11]), 4, start_pos=g0.pos))
        more1 = list(generate(llama.step, tiny_llama, g1.cache, g1.continuation([11]), 4, start_pos=g1.pos,
                              pipeline=True))  # fmt: skip
        assert more1 == more0
    else:
        assert g1.pos == g0.pos and g1.pending_token == g0.pending_token


def test_sampling_without_the_native_kernels_draws_the_same_tokens(monkeypatch, rng):
    """Candle's softmax and ``WeightedIndex`` in native code (the CPU) and in XLA (elsewhere): the same
    draws for the same seeds (the sums differ only in association)."""
    logits = [(rng.standard_normal(37) * 3).astype(np.float32) for _ in range(8)]
    samplings = [smp.TopP(p=0.9, temperature=0.7), smp.TopKThenTopP(k=10, p=0.8, temperature=1.2)]
    calls = []
    weighted = native.weighted_index
    monkeypatch.setattr(native, "weighted_index", lambda *a: calls.append(1) or weighted(*a))

    def draws(with_native):
        monkeypatch.setattr(native, "available", lambda: with_native)
        smp._sample_step.clear_cache()  # traced again, with or without the native kernels
        calls.clear()
        out = [LogitsProcessor.from_sampling(seed, s).sample(cj.Tensor(x)) for seed, x in enumerate(logits)
               for s in samplings]  # fmt: skip
        assert bool(calls) == with_native
        return out

    assert draws(False) == draws(True)
