"""candle-nn's attention tests, ported line by line from candle-nn/tests/sdpa.rs, cpu_flash_attn.rs and
varlen_flash_attention.rs (huggingface/candle).

* sdpa.rs: Candle runs these on Metal only (its ``ops::sdpa`` has no CPU implementation); candlejax's
  ``ops.sdpa`` runs on every backend (docs/differences/nn.md), so they run here on the CPU with
  Candle's tolerances. Candle's inputs come from ``rand::StdRng``; here from numpy's generator.
* cpu_flash_attn.rs: ``candle_nn::attention::{flash_attn, AttnMask}`` and
  ``cpu_flash::causal::causal_decode_f32_interleaved``; the same scenarios also run through
  ``ops.sdpa`` (with ``layout="bshd"``, flash_attn's input layout) against the same references.
* varlen_flash_attention.rs: ``candle_nn::attention::flash_attn_varlen_cpu`` and
  ``candle_nn::varlen_attention::flash_attn_varlen_unfused`` on packed sequences, against Candle's
  padded reference; the reference is also checked against ``ops.sdpa`` run per sequence.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import pytest

from candlejax import Device, DType, Tensor
from candlejax.nn import ops

F32 = np.float32


# ------------------------------------------------------------------------------------------------
# sdpa.rs
# ------------------------------------------------------------------------------------------------
def randn(rng, shape, dev):
    elem_count = math.prod(shape)
    vs = rng.standard_normal(elem_count).astype(F32)
    return Tensor.from_vec(vs, shape, dev)


def _sdpa_case(seed, bs, h, r, l, dk, softcap):
    scale = 1.0 / math.sqrt(float(dk))
    device = Device.Cpu
    rng = np.random.default_rng(seed)
    q = randn(rng, (bs, h, r, dk), device)
    k = randn(rng, (bs, h, l, dk), device)
    v = randn(rng, (bs, h, l, dk), device)
    att = (q * scale).matmul(k.t())
    att = att.to_dtype(DType.F32)
    if softcap is not None:
        att = att.div(softcap).tanh().mul(softcap)
    att = ops.softmax_last_dim(att).to_dtype(q.dtype())
    ground_truth = att.matmul(v)
    sdpa_output = ops.sdpa(q, k, v, None, False, scale, 1.0 if softcap is None else softcap)
    assert ground_truth.shape() == sdpa_output.shape()
    error = ((ground_truth - sdpa_output).abs() / ground_truth.abs()).sum_all().to_scalar()
    return error


def test_sdpa_full():
    # the full SDPA kernel path in Candle (q_seq > 8)
    error = _sdpa_case(42, bs=4, h=3, r=16, l=16, dk=64, softcap=None)
    # larger sequences have higher accumulated error
    assert error <= 0.02, error


def test_sdpa_vector():
    # vectorized, seqlen = 1
    error = _sdpa_case(4242, bs=4, h=3, r=1, l=1, dk=64, softcap=None)
    assert error <= 0.000, error


def test_sdpa_full_softcapping():
    # softcapping with q_seq = 1 (Candle's vector kernel; its full kernel has no softcapping)
    error = _sdpa_case(424242, bs=4, h=3, r=1, l=4, dk=64, softcap=50.0)
    # slightly higher error for the cross-attention case (R=1, L=4)
    assert error <= 0.002, error


def test_sdpa_vector_softcapping():
    error = _sdpa_case(42424242, bs=4, h=3, r=1, l=1, dk=64, softcap=50.0)
    assert error <= 0.0001, error


def test_sdpa_vector_cross():
    # vectorized, seqlen = 1: the cross-attention case R != L, R = 1
    error = _sdpa_case(4242424242, bs=4, h=3, r=1, l=24, dk=64, softcap=None)
    assert error <= 0.0013, error


# ------------------------------------------------------------------------------------------------
# cpu_flash_attn.rs
# ------------------------------------------------------------------------------------------------
def reference_sdpa(q, k, v, scale):
    """softmax(Q @ K^T * scale) @ V"""
    att = (q * scale).matmul(k.t())
    att = ops.softmax_last_dim(att.to_dtype(DType.F32)).to_dtype(q.dtype())
    return att.matmul(v)


def reference_causal_sdpa(q, k, v, scale):
    """Causal SDPA with the mask aligned at the end: query i sees key j iff j <= i + s_kv - s_q."""
    _, _, s_q, _ = q.dims4()
    _, _, s_kv, _ = k.dims4()
    offset = s_kv - s_q
    mask = [0.0 if j <= i + offset else -math.inf for i in range(s_q) for j in range(s_kv)]
    mask = Tensor.from_vec(np.array(mask, F32), (1, 1, s_q, s_kv), q.device())
    att = (q * scale).matmul(k.t())
    att = att.broadcast_add(mask)
    att = ops.softmax_last_dim(att.to_dtype(DType.F32)).to_dtype(q.dtype())
    return att.matmul(v)


def assert_close(a, b, tol, label):
    a_flat = np.asarray(a.to_dtype(DType.F32).flatten_all().to_vec1(), F32)
    b_flat = np.asarray(b.to_dtype(DType.F32).flatten_all().to_vec1(), F32)
    assert a_flat.shape == b_flat.shape, label
    max_diff = float(np.max(np.abs(a_flat - b_flat), initial=0.0))
    assert max_diff < tol, f"{label}: max diff {max_diff:.6e} > tol {tol:.6e}"


def _expand_kv(x, h_kv, reps, kv_len, d):
    """Repeat each of ``h_kv`` heads ``reps`` times: (1, h_kv, kv_len, d) -> (1, h_kv * reps, kv_len, d)."""
    return (
        x.reshape((1, h_kv, 1, kv_len, d)).broadcast_as((1, h_kv, reps, kv_len, d)).reshape((1, h_kv * reps, kv_len, d))
    )


def _causal_decode_b1_inputs(dev):
    h, d, kv_len = 4, 16, 32
    scale = 1.0 / math.sqrt(d)
    q = Tensor.randn(0.0, 1.0, (1, h, 1, d), dev)
    k = Tensor.randn(0.0, 1.0, (1, h, kv_len, d), dev)
    v = Tensor.randn(0.0, 1.0, (1, h, kv_len, d), dev)
    return q, k, v, scale, kv_len


# causal decode (q_len = 1)
def test_causal_decode_b1():
    from candlejax.nn.attention import AttnMask, flash_attn

    dev = Device.Cpu
    dev.set_seed(1)
    q, k, v, scale, kv_len = _causal_decode_b1_inputs(dev)
    expected = reference_sdpa(q, k, v, scale)

    # flash_attn takes (B, S, H, D) and returns (B, H, S, D)
    out = flash_attn(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        scale,
        AttnMask.causal_with_offset(kv_len - 1),
        None,
        None,
    )
    assert_close(out, expected, 1e-5, "causal_decode_b1")


def _prefill_inputs(dev, h, d, s_q, s_kv):
    q = Tensor.randn(0.0, 1.0, (1, h, s_q, d), dev)
    k = Tensor.randn(0.0, 1.0, (1, h, s_kv, d), dev)
    v = Tensor.randn(0.0, 1.0, (1, h, s_kv, d), dev)
    return q, k, v


# causal prefill
def test_causal_prefill_b1():
    from candlejax.nn.attention import AttnMask, flash_attn

    h, d, s = 4, 16, 8
    scale = 1.0 / math.sqrt(d)
    dev = Device.Cpu
    dev.set_seed(2)
    q, k, v = _prefill_inputs(dev, h, d, s, s)
    expected = reference_causal_sdpa(q, k, v, scale)

    out = flash_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, AttnMask.causal(), None, None)
    assert_close(out, expected, 1e-5, "causal_prefill_b1")


# causal prefill with a KV offset (a KV cache)
def test_causal_prefill_with_offset():
    from candlejax.nn.attention import AttnMask, flash_attn

    h, d, s_q, s_kv = 4, 16, 4, 12
    scale = 1.0 / math.sqrt(d)
    dev = Device.Cpu
    dev.set_seed(3)
    offset = s_kv - s_q  # 8
    q, k, v = _prefill_inputs(dev, h, d, s_q, s_kv)
    expected = reference_causal_sdpa(q, k, v, scale)

    out = flash_attn(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        scale,
        AttnMask.causal_with_offset(offset),
        None,
        None,
    )
    assert_close(out, expected, 1e-5, "causal_prefill_with_offset")


def _gqa_decode_inputs(dev):
    h_q, h_kv, d, kv_len = 8, 2, 16, 20
    q = Tensor.randn(0.0, 1.0, (1, h_q, 1, d), dev)
    k = Tensor.randn(0.0, 1.0, (1, h_kv, kv_len, d), dev)
    v = Tensor.randn(0.0, 1.0, (1, h_kv, kv_len, d), dev)
    return q, k, v, (h_q, h_kv, d, kv_len)


# GQA (fewer KV heads)
def test_causal_decode_gqa():
    from candlejax.nn.attention import AttnMask, flash_attn

    dev = Device.Cpu
    dev.set_seed(4)
    q, k, v, (h_q, h_kv, d, kv_len) = _gqa_decode_inputs(dev)
    scale = 1.0 / math.sqrt(d)
    # reference: expand K/V to match the Q heads
    reps = h_q // h_kv
    k_exp = _expand_kv(k, h_kv, reps, kv_len, d)
    v_exp = _expand_kv(v, h_kv, reps, kv_len, d)
    expected = reference_sdpa(q, k_exp, v_exp, scale)

    out = flash_attn(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        scale,
        AttnMask.causal_with_offset(kv_len - 1),
        None,
        None,
    )
    assert_close(out, expected, 1e-5, "causal_decode_gqa")


# standard (no mask)
def test_standard_no_mask_b1():
    from candlejax.nn.attention import AttnMask, flash_attn

    h, d, s = 4, 16, 8
    scale = 1.0 / math.sqrt(d)
    dev = Device.Cpu
    dev.set_seed(5)
    q, k, v = _prefill_inputs(dev, h, d, s, s)
    expected = reference_sdpa(q, k, v, scale)

    # AttnMask::None: `None` is a Python keyword, so the variant is spelled `None_`
    out = flash_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, AttnMask.None_, None, None)
    assert_close(out, expected, 1e-5, "standard_no_mask_b1")


def _causal_mask_tensor(s, dev):
    mask = [0.0 if j <= i else -math.inf for i in range(s) for j in range(s)]
    return Tensor.from_vec(np.array(mask, F32), (1, s, s), dev)


# standard with an explicit mask
def test_standard_with_mask_b1():
    from candlejax.nn.attention import AttnMask, flash_attn

    h, d, s = 2, 8, 4
    scale = 1.0 / math.sqrt(d)
    dev = Device.Cpu
    dev.set_seed(6)
    q, k, v = _prefill_inputs(dev, h, d, s, s)
    # the causal mask as an explicit tensor
    mask_tensor = _causal_mask_tensor(s, dev)
    # reference with the mask applied
    att = (q * scale).matmul(k.t())
    att = att.broadcast_add(mask_tensor.unsqueeze(0))
    att = ops.softmax_last_dim(att)
    expected = att.matmul(v)

    out = flash_attn(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, AttnMask.Mask(mask_tensor), None, None
    )
    assert_close(out, expected, 1e-4, "standard_with_mask_b1")


# interleaved KV decode
def test_interleaved_kv_decode():
    from candlejax.nn.attention.cpu_flash.causal import causal_decode_f32_interleaved

    dev = Device.Cpu
    dev.set_seed(7)
    q, k, v, (h_q, h_kv, d, kv_len) = _gqa_decode_inputs(dev)
    scale = 1.0 / math.sqrt(d)
    # reference with the GQA expansion
    reps = h_q // h_kv
    k_exp = _expand_kv(k, h_kv, reps, kv_len, d)
    v_exp = _expand_kv(v, h_kv, reps, kv_len, d)
    expected = reference_sdpa(q, k_exp, v_exp, scale)

    # interleaved KV: (kv_len, h_kv, 2 * d)
    k_seq = k.squeeze(0).transpose(0, 1).contiguous()
    v_seq = v.squeeze(0).transpose(0, 1).contiguous()
    kv = Tensor.cat([k_seq, v_seq], 2).contiguous()
    assert kv.dims() == (kv_len, h_kv, 2 * d)
    kv_data = kv.flatten_all().to_vec1()
    q_flat = q.squeeze(0).squeeze(1).contiguous().flatten_all().to_vec1()

    out = causal_decode_f32_interleaved(q_flat, kv_data, h_q, h_kv, d, kv_len, scale)
    out = out.unsqueeze(0)
    assert_close(out, expected, 1e-5, "interleaved_kv_decode")


# The same scenarios through candlejax's ops.sdpa, which takes flash_attn's (B, S, H, D) layout with
# layout="bshd" (and returns it) and aligns do_causal at the end, as AttnMask::causal_with_offset(s_kv - s_q).
@pytest.mark.parametrize(
    "case", ["causal_decode_b1", "causal_prefill_b1", "causal_prefill_with_offset", "causal_decode_gqa",
             "standard_no_mask_b1", "standard_with_mask_b1"],
)  # fmt: skip
def test_ops_sdpa_bshd_matches_flash_attn_references(case):
    dev = Device.Cpu
    dev.set_seed(11)
    mask, causal, tol = None, False, 1e-5
    if case == "causal_decode_b1":
        q, k, v, scale, _ = _causal_decode_b1_inputs(dev)
        expected, causal = reference_sdpa(q, k, v, scale), True
    elif case in ("causal_prefill_b1", "causal_prefill_with_offset", "standard_no_mask_b1"):
        s_q, s_kv = (4, 12) if case == "causal_prefill_with_offset" else (8, 8)
        q, k, v = _prefill_inputs(dev, 4, 16, s_q, s_kv)
        scale = 1.0 / math.sqrt(16)
        causal = case != "standard_no_mask_b1"
        expected = (reference_causal_sdpa if causal else reference_sdpa)(q, k, v, scale)
    elif case == "causal_decode_gqa":
        q, k, v, (h_q, h_kv, d, kv_len) = _gqa_decode_inputs(dev)
        scale, reps = 1.0 / math.sqrt(d), h_q // h_kv
        expected = reference_sdpa(q, _expand_kv(k, h_kv, reps, kv_len, d), _expand_kv(v, h_kv, reps, kv_len, d), scale)
        causal = True
    else:
        q, k, v = _prefill_inputs(dev, 2, 8, 4, 4)
        scale, tol = 1.0 / math.sqrt(8), 1e-4
        mask = _causal_mask_tensor(4, dev).unsqueeze(0)
        att = ops.softmax_last_dim((q * scale).matmul(k.t()).broadcast_add(mask))
        expected = att.matmul(v)
    out = ops.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, causal, scale, layout="bshd")
    assert out.dims() == q.transpose(1, 2).dims()
    assert_close(out.transpose(1, 2), expected, tol, case)


# ------------------------------------------------------------------------------------------------
# varlen_flash_attention.rs
# ------------------------------------------------------------------------------------------------
class VarlenImpl(enum.Enum):
    CpuFlash = "cpu_flash"
    Unfused = "unfused"

    def forward(self, q, k, v, alibi_slopes, seqlens_q, seqlens_k, max_q, max_k, softmax_scale, causal,
                window_left, window_right):  # fmt: skip
        if self is VarlenImpl.CpuFlash:
            from candlejax.nn.attention import flash_attn_varlen_cpu

            return flash_attn_varlen_cpu(q, k, v, alibi_slopes, seqlens_q, seqlens_k, max_q, max_k, softmax_scale,
                                         causal, window_left, window_right)  # fmt: skip
        from candlejax.nn.varlen_attention import flash_attn_varlen_unfused

        return flash_attn_varlen_unfused(q, k, v, alibi_slopes, seqlens_q, seqlens_k, max_q, max_k, softmax_scale,
                                         causal, window_left, window_right)  # fmt: skip


def convert_to_precision(q, k, v, precision):
    if precision == DType.F32:
        return q, k, v
    if precision == DType.F16:
        return q.to_dtype(DType.F16), k.to_dtype(DType.F16), v.to_dtype(DType.F16)
    raise ValueError(f"Unsupported precision: {precision}")


def get_tolerances(precision):
    if precision == DType.F32:
        return 1e-5, 5e-5
    if precision == DType.F16:
        return 2e-3, 1e-3
    return 1e-4, 1e-4


def rmse(a, reference):
    diff = a.sub(reference)
    mse = diff.sqr().mean_all().to_dtype(DType.F32).to_scalar()
    if math.isnan(mse) or mse < 0.0:
        a_vec = np.asarray(a.to_dtype(DType.F32).flatten_all().to_vec1(), F32)
        ref_vec = np.asarray(reference.to_dtype(DType.F32).flatten_all().to_vec1(), F32)
        if np.isnan(ref_vec).any() and not np.isnan(a_vec).any():
            return 0.0
        return 100.0
    return math.sqrt(mse)


def max_abs_diff(a, b):
    diff = a.sub(b).to_dtype(DType.F32)
    return float(np.max(np.abs(np.asarray(diff.flatten_all().to_vec1(), F32)), initial=0.0))


def repeat_kv_for_gqa(k, v, num_heads):
    total_k, num_kv_heads, head_dim = k.dims3()
    if num_heads == num_kv_heads:
        return k, v
    if num_heads % num_kv_heads:
        raise ValueError(f"Invalid GQA config: num_heads={num_heads} not divisible by num_kv_heads={num_kv_heads}")
    repeat_factor = num_heads // num_kv_heads
    k = (
        k.reshape((total_k, num_kv_heads, 1, head_dim))
        .broadcast_as((total_k, num_kv_heads, repeat_factor, head_dim))
        .reshape((total_k, num_heads, head_dim))
    )
    v = (
        v.reshape((total_k, num_kv_heads, 1, head_dim))
        .broadcast_as((total_k, num_kv_heads, repeat_factor, head_dim))
        .reshape((total_k, num_heads, head_dim))
    )
    return k, v


def make_varlen_inputs_prefill(batch_size, num_heads, num_kv_heads, head_dim, max_seq, device):
    rng = np.random.default_rng(456)
    seqlens = [int(rng.integers(4, max_seq + 1)) for _ in range(batch_size)]
    total, max_l = sum(seqlens), max(seqlens)
    q_data = rng.uniform(-1.0, 1.0, total * num_heads * head_dim).astype(F32)
    k_data = rng.uniform(-1.0, 1.0, total * num_kv_heads * head_dim).astype(F32)
    v_data = rng.uniform(-1.0, 1.0, total * num_kv_heads * head_dim).astype(F32)
    q = Tensor.from_vec(q_data, (total, num_heads, head_dim), device)
    k = Tensor.from_vec(k_data, (total, num_kv_heads, head_dim), device)
    v = Tensor.from_vec(v_data, (total, num_kv_heads, head_dim), device)
    seqlens_q = Tensor.from_vec(np.array(seqlens, np.uint32), batch_size, device)
    seqlens_k = Tensor.from_vec(np.array(seqlens, np.uint32), batch_size, device)
    return q, k, v, seqlens_q, seqlens_k, max_l, max_l


def build_reference_bias(seqlens_q, seqlens_k, num_heads, max_q, max_k, causal, window_left, window_right,
                         alibi_slopes, device):  # fmt: skip
    """The additive (B, H, max_q, max_k) bias: -1e10 on padding and (causal) future keys, -inf outside the
    sliding window, ``-slope * |i + offset - j|`` for ALiBi (Candle's loops, vectorised over i, j)."""
    slopes = None
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes.to_vec1(), F32)
        if len(slopes) != num_heads:
            raise ValueError(f"alibi_slopes has len {len(slopes)}, expected {num_heads}")
    if window_left is None and window_right is not None:
        raise ValueError("window_right without window_left")
    i = np.arange(max_q)[:, None]
    j = np.arange(max_k)[None, :]
    per_batch = []
    for lq, lk in zip(seqlens_q, seqlens_k, strict=True):
        offset = int(lk) - int(lq)
        i_k = i + offset
        masked = (i >= lq) | (j >= lk)
        if causal:
            masked |= j > i + offset
        out_of_window = np.zeros((max_q, max_k), bool)
        if window_left is not None and window_right is not None:
            out_of_window = (np.maximum(i_k - j, 0) > window_left) | (np.maximum(j - i_k, 0) > window_right)
        elif window_left is not None:
            out_of_window = (j > i_k) | (i_k - j > window_left)
        bias = np.zeros((num_heads, max_q, max_k), F32)
        if slopes is not None:
            bias -= slopes[:, None, None] * np.abs(i_k - j).astype(F32)[None]
        bias = np.where(out_of_window[None], -np.inf, bias)
        bias = np.where(masked[None], F32(-1e10), bias).astype(F32)
        per_batch.append(Tensor.from_vec(bias, (num_heads, max_q, max_k), device))
    return Tensor.stack(per_batch, 0)  # (B, H, max_q, max_k)


def reference_padded_attention(q_var, k_var, v_var, alibi_slopes, seqlens_q, seqlens_k, max_q, max_k,
                               softmax_scale, causal, window_left, window_right):  # fmt: skip
    device = q_var.device()
    total_q, num_heads, head_dim = q_var.dims3()
    _total_k, _num_kv_heads, _hd2 = k_var.dims3()
    assert head_dim == _hd2

    seqlens_q_vec = seqlens_q.to_vec1()
    seqlens_k_vec = seqlens_k.to_vec1()
    bsz = len(seqlens_q_vec)
    cu_q = [0, *np.cumsum(seqlens_q_vec).tolist()]
    cu_k = [0, *np.cumsum(seqlens_k_vec).tolist()]
    assert cu_q[bsz] == total_q

    k_var, v_var = repeat_kv_for_gqa(k_var, v_var, num_heads)

    q_padded, k_padded, v_padded = [], [], []
    for i in range(bsz):
        lq, lk = seqlens_q_vec[i], seqlens_k_vec[i]
        q_i = q_var.narrow(0, cu_q[i], lq)
        k_i = k_var.narrow(0, cu_k[i], lk)
        v_i = v_var.narrow(0, cu_k[i], lk)
        q_padded.append(Tensor.cat([q_i, Tensor.zeros((max_q - lq, num_heads, head_dim), q_i.dtype(), device)], 0))
        k_padded.append(Tensor.cat([k_i, Tensor.zeros((max_k - lk, num_heads, head_dim), k_i.dtype(), device)], 0))
        v_padded.append(Tensor.cat([v_i, Tensor.zeros((max_k - lk, num_heads, head_dim), v_i.dtype(), device)], 0))

    q = Tensor.stack(q_padded, 0).transpose(1, 2).contiguous()
    k = Tensor.stack(k_padded, 0).transpose(1, 2).contiguous()
    v = Tensor.stack(v_padded, 0).transpose(1, 2).contiguous()

    k_t = k.transpose(2, 3).contiguous()
    scores = q.matmul(k_t)
    scores = scores * softmax_scale

    bias = build_reference_bias(
        seqlens_q_vec, seqlens_k_vec, num_heads, max_q, max_k, causal, window_left, window_right, alibi_slopes,
        device,
    ).to_dtype(scores.dtype())  # fmt: skip
    scores = scores.add(bias)

    probs = ops.softmax_last_dim(scores)
    ctx = probs.matmul(v).transpose(1, 2)  # (B, max_q, H, D)

    outs = [ctx.i(i).narrow(0, 0, lq) for i, lq in enumerate(seqlens_q_vec[:bsz])]
    return Tensor.cat(outs, 0)


def varlen_assert_close(out_var, out_ref, precision, label):
    mae = max_abs_diff(out_var, out_ref)
    e = rmse(out_var, out_ref)
    mae_tol, rmse_tol = get_tolerances(precision)
    assert mae < mae_tol, f"{label}: MAE too large: {mae:.6e} > {mae_tol:.6e}"
    assert e < rmse_tol, f"{label}: RMSE too large: {e:.6e} > {rmse_tol:.6e}"


def _run_prefill(impl_fn, precision, shape, causal, label):
    device = Device.Cpu
    batch_size, num_heads, num_kv_heads, head_dim, max_seq = shape
    q, k, v, seqlens_q, seqlens_k, max_q, max_k = make_varlen_inputs_prefill(
        batch_size, num_heads, num_kv_heads, head_dim, max_seq, device
    )
    q, k, v = convert_to_precision(q, k, v, precision)
    softmax_scale = 1.0 / math.sqrt(head_dim)
    out_var = impl_fn.forward(q, k, v, None, seqlens_q, seqlens_k, max_q, max_k, softmax_scale, causal, None, None)
    out_ref = reference_padded_attention(
        q, k, v, None, seqlens_q, seqlens_k, max_q, max_k, softmax_scale, causal, None, None
    )
    varlen_assert_close(out_var, out_ref, precision, label)


MHA = (4, 8, 8, 64, 64)
GQA = (3, 12, 4, 64, 64)


def test_prefill_noncausal(impl_fn, precision):
    _run_prefill(impl_fn, precision, MHA, False, "prefill_noncausal")


def test_prefill_causal(impl_fn, precision):
    _run_prefill(impl_fn, precision, MHA, True, "prefill_causal")


def test_prefill_gqa(impl_fn, precision):
    _run_prefill(impl_fn, precision, GQA, False, "prefill_gqa")


def test_prefill_gqa_causal(impl_fn, precision):
    _run_prefill(impl_fn, precision, GQA, True, "prefill_gqa_causal")


# the four helpers above take arguments: they are Candle's parameterised bodies, not tests
for _f in (test_prefill_noncausal, test_prefill_causal, test_prefill_gqa, test_prefill_gqa_causal):
    _f.__test__ = False


def test_fused_vs_unfused(causal, precision):
    """The fused and unfused implementations agree with each other."""
    device = Device.Cpu
    batch_size, num_heads, num_kv_heads, head_dim, max_seq = MHA
    q, k, v, seqlens_q, seqlens_k, max_q, max_k = make_varlen_inputs_prefill(
        batch_size, num_heads, num_kv_heads, head_dim, max_seq, device
    )
    q, k, v = convert_to_precision(q, k, v, precision)
    softmax_scale = 1.0 / math.sqrt(head_dim)
    args = (None, seqlens_q, seqlens_k, max_q, max_k, softmax_scale, causal, None, None)
    out_fused = VarlenImpl.CpuFlash.forward(q, k, v, *args)
    out_unfused = VarlenImpl.Unfused.forward(q, k, v, *args)
    label = "fused_vs_unfused_causal" if causal else "fused_vs_unfused_noncausal"
    varlen_assert_close(out_fused, out_unfused, precision, label)


test_fused_vs_unfused.__test__ = False

# prefill noncausal
def test_prefill_noncausal_cpu_flash_f32():
    test_prefill_noncausal(VarlenImpl.CpuFlash, DType.F32)


def test_prefill_noncausal_cpu_flash_f16():
    test_prefill_noncausal(VarlenImpl.CpuFlash, DType.F16)


def test_prefill_noncausal_unfused_f32():
    test_prefill_noncausal(VarlenImpl.Unfused, DType.F32)


def test_prefill_noncausal_unfused_f16():
    test_prefill_noncausal(VarlenImpl.Unfused, DType.F16)


# prefill causal
def test_prefill_causal_cpu_flash_f32():
    test_prefill_causal(VarlenImpl.CpuFlash, DType.F32)


def test_prefill_causal_cpu_flash_f16():
    test_prefill_causal(VarlenImpl.CpuFlash, DType.F16)


def test_prefill_causal_unfused_f32():
    test_prefill_causal(VarlenImpl.Unfused, DType.F32)


def test_prefill_causal_unfused_f16():
    test_prefill_causal(VarlenImpl.Unfused, DType.F16)


# GQA noncausal
def test_prefill_gqa_cpu_flash_f32():
    test_prefill_gqa(VarlenImpl.CpuFlash, DType.F32)


def test_prefill_gqa_unfused_f32():
    test_prefill_gqa(VarlenImpl.Unfused, DType.F32)


# GQA causal
def test_prefill_gqa_causal_cpu_flash_f32():
    test_prefill_gqa_causal(VarlenImpl.CpuFlash, DType.F32)


def test_prefill_gqa_causal_unfused_f32():
    test_prefill_gqa_causal(VarlenImpl.Unfused, DType.F32)


# fused vs unfused agreement
def test_fused_vs_unfused_noncausal_f32():
    test_fused_vs_unfused(False, DType.F32)


def test_fused_vs_unfused_causal_f32():
    test_fused_vs_unfused(True, DType.F32)


def test_fused_vs_unfused_noncausal_f16():
    test_fused_vs_unfused(False, DType.F16)


def test_fused_vs_unfused_causal_f16():
    test_fused_vs_unfused(True, DType.F16)


# candlejax's equivalent today: ops.sdpa per sequence (layout="bshd", GQA without repeating k/v,
# do_causal aligned at the end as the reference's offset lk - lq), concatenated back to (total_q, H, D).
@pytest.mark.parametrize(
    ("shape", "causal", "precision"),
    [(MHA, False, DType.F32), (MHA, True, DType.F32), (GQA, False, DType.F32), (GQA, True, DType.F32),
     (MHA, True, DType.F16)],
)  # fmt: skip
def test_varlen_reference_matches_ops_sdpa_per_sequence(shape, causal, precision):
    device = Device.Cpu
    batch_size, num_heads, num_kv_heads, head_dim, max_seq = shape
    q, k, v, seqlens_q, seqlens_k, max_q, max_k = make_varlen_inputs_prefill(
        batch_size, num_heads, num_kv_heads, head_dim, max_seq, device
    )
    q, k, v = convert_to_precision(q, k, v, precision)
    softmax_scale = 1.0 / math.sqrt(head_dim)
    out_ref = reference_padded_attention(
        q, k, v, None, seqlens_q, seqlens_k, max_q, max_k, softmax_scale, causal, None, None
    )
    lens = seqlens_q.to_vec1()
    assert out_ref.dims() == (sum(lens), num_heads, head_dim)
    starts = [0, *np.cumsum(lens).tolist()]
    outs = []
    for b, lq in enumerate(lens):
        q_b, k_b, v_b = (t.narrow(0, starts[b], lq).unsqueeze(0) for t in (q, k, v))
        outs.append(ops.sdpa(q_b, k_b, v_b, None, causal, softmax_scale, layout="bshd").squeeze(0))
    out = Tensor.cat(outs, 0)
    assert out.dtype() == precision
    varlen_assert_close(out, out_ref, precision, "ops.sdpa per sequence")


# ------------------------------------------------------------------------------------------------
# Beyond Candle's tests: ALiBi, softcapping, windows, lengths, errors and jax.jit against a numpy
# float64 reference written from Candle's rules.
# ------------------------------------------------------------------------------------------------
def _np(t):
    return np.asarray(t.to_dtype(DType.F32).flatten_all().to_vec1(), np.float64).reshape(t.dims())


def _slopes(max_bias, h):
    n2 = 2 ** math.ceil(math.log2(h))
    return np.array([2.0 ** (-max_bias * (i + 1) / n2) for i in range(h)])


def _np_attend(q, k, v, scale, keep, bias=None, softcap=None):
    """q (S, H, D), k/v (Skv, Hkv, D), keep (S, Skv) or (H, S, Skv) bool, bias (H, S, Skv): float64,
    zeros where a query keeps no key."""
    s, h, _ = q.shape
    g = h // k.shape[1]
    out = np.zeros_like(q)
    keep = np.broadcast_to(keep, (h, s, k.shape[0]))
    for hi in range(h):
        sc = q[:, hi] @ k[:, hi // g].T * scale
        if softcap:
            sc = softcap * np.tanh(sc / softcap)
        if bias is not None:
            sc = sc + bias[hi]
        sc = np.where(keep[hi], sc, -np.inf)
        for i in range(s):
            if not keep[hi, i].any():
                continue
            p = np.exp(sc[i] - sc[i].max())
            out[i, hi] = (p / p.sum()) @ v[:, hi // g]
    return out


def _np_varlen(q, k, v, slopes, lq, lk, scale, causal, wl, wr):
    """Candle's varlen rules: per sequence, key range [lo, hi] around i_k = i + lk - lq, ALiBi distance."""
    h = q.shape[1]
    outs, sq, sk = [], 0, 0
    for a, b in zip(lq, lk, strict=True):
        keep = np.zeros((a, b), bool)
        bias = np.zeros((h, a, b))
        for i in range(a):
            i_k = i + b - a
            lo, hi = 0, b - 1
            if causal:
                hi = min(hi, i_k)
            if wl is not None and wr is not None:
                lo, hi = max(lo, i_k - wl), min(hi, i_k + wr)
            elif wl is not None:
                lo, hi = max(lo, i_k - wl), min(hi, i_k)
            if hi >= max(lo, 0):
                keep[i, max(lo, 0) : hi + 1] = True
            if slopes is not None:
                for j in range(b):
                    dist = max(i_k - j, 0) if causal else abs(j - i_k)
                    bias[:, i, j] = -slopes * dist
        outs.append(_np_attend(q[sq : sq + a], k[sk : sk + b], v[sk : sk + b], scale, keep, bias))
        sq, sk = sq + a, sk + b
    return np.concatenate(outs, 0)


def _packed(lq, lk, h=4, h_kv=2, d=16, seed=0, dtype=DType.F32):
    rng = np.random.default_rng(seed)
    dev = Device.Cpu

    def t(n, heads):
        return Tensor.from_vec(rng.uniform(-1, 1, n * heads * d).astype(F32), (n, heads, d), dev).to_dtype(dtype)

    sq = Tensor.from_vec(np.array(lq, np.uint32), len(lq), dev)
    sk = Tensor.from_vec(np.array(lk, np.uint32), len(lk), dev)
    return t(sum(lq), h), t(sum(lk), h_kv), t(sum(lk), h_kv), sq, sk


_LQ, _LK = [3, 5, 1, 4], [6, 5, 4, 9]


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize(
    ("causal", "wl", "wr"),
    [(False, None, None), (True, None, None), (False, 2, None), (False, 1, 2), (True, 3, 1), (True, 0, 0),
     (False, 0, 0)],
)  # fmt: skip
def test_varlen_rules_match_numpy_reference(causal, wl, wr, alibi):
    from candlejax.nn.attention import flash_attn_varlen_cpu
    from candlejax.nn.varlen_attention import flash_attn_varlen_unfused

    q, k, v, sq, sk = _packed(_LQ, _LK)
    slopes = Tensor.from_vec(np.array([0.5, 0.25, 0.125, 0.0625], F32), 4, Device.Cpu) if alibi else None
    want = _np_varlen(_np(q), _np(k), _np(v), None if slopes is None else _np(slopes), _LQ, _LK, 0.3, causal, wl, wr)
    args = (slopes, sq, sk, max(_LQ), max(_LK), 0.3, causal, wl, wr)
    got = flash_attn_varlen_cpu(q, k, v, *args)
    assert got.dims() == (sum(_LQ), 4, 16) and got.dtype() == DType.F32
    np.testing.assert_allclose(_np(got), want, atol=2e-6)
    # the unfused form agrees (every query here sees at least one key)
    np.testing.assert_allclose(_np(flash_attn_varlen_unfused(q, k, v, *args)), want, atol=2e-6)



@pytest.mark.parametrize("alibi", [False, True])
def test_varlen_unfused_in_float64_is_computed_in_float64(x64, alibi):
    """Candle's unfused varlen attention computes in the input's dtype: f64 input keeps f64 scores,
    softmax and values (and f64 ALiBi slopes)."""
    from candlejax.nn.varlen_attention import flash_attn_varlen_unfused

    q, k, v, sq, sk = _packed(_LQ, _LK, dtype=DType.F64)
    slopes = Tensor.from_vec(np.array([0.5, 0.25, 0.125, 0.0625 + 1e-9]), 4, Device.Cpu) if alibi else None
    def f64(t):
        return np.asarray(t.jax, np.float64)

    want = _np_varlen(f64(q), f64(k), f64(v), None if slopes is None else f64(slopes), _LQ, _LK, 0.3, True, 2, None)
    got = flash_attn_varlen_unfused(q, k, v, slopes, sq, sk, max(_LQ), max(_LK), 0.3, True, 2, None)
    assert got.dtype() == DType.F64
    np.testing.assert_allclose(f64(got), want, rtol=1e-12, atol=1e-13)

def test_varlen_window_keywords_follow_candle_names():
    # candle-nn cpu_flash/varlen.rs: window_left / window_right; attention/varlen.rs: window_size_left / _right
    from candlejax.errors import InvalidArgument
    from candlejax.nn.attention import flash_attn_varlen_cpu
    from candlejax.nn.varlen_attention import flash_attn_varlen_unfused

    q, k, v, sq, sk = _packed(_LQ, _LK)
    want = _np_varlen(_np(q), _np(k), _np(v), None, _LQ, _LK, 0.3, False, 1, 2)
    common = dict(alibi_slopes=None, seqlens_q=sq, seqlens_k=sk, max_seqlen_q=max(_LQ), max_seqlen_k=max(_LK),
                  softmax_scale=0.3, causal=False)  # fmt: skip
    got = flash_attn_varlen_cpu(q, k, v, **common, window_left=1, window_right=2)
    np.testing.assert_allclose(_np(got), want, atol=2e-6)
    got = flash_attn_varlen_cpu(q, k, v, **common, window_size_left=1, window_size_right=2)  # the other spelling
    np.testing.assert_allclose(_np(got), want, atol=2e-6)
    got = flash_attn_varlen_unfused(q, k, v, **common, window_size_left=1, window_size_right=2)
    np.testing.assert_allclose(_np(got), want, atol=2e-6)
    with pytest.raises(InvalidArgument, match="window_left or window_size_left"):
        flash_attn_varlen_cpu(q, k, v, **common, window_left=1, window_size_left=1)
    for bad in (1.5, True, -1):  # Candle's Option<usize>: 1.5 and True used to be taken as 1
        with pytest.raises(InvalidArgument, match=r"flash_attn_varlen_cpu: window_left must be None or an int"):
            flash_attn_varlen_cpu(q, k, v, **common, window_left=bad)
        with pytest.raises(InvalidArgument, match=r"window_size_right must be None or an int"):
            flash_attn_varlen_unfused(q, k, v, **common, window_size_left=1, window_size_right=bad)


def test_varlen_noncausal_shorter_keys_and_empty_sequences():
    from candlejax.nn.attention import flash_attn_varlen_cpu, flash_attn_varlen_unfused

    lq, lk = [4, 0, 2, 3], [2, 3, 0, 3]  # lk < lq (not causal), an empty query run, an empty key run
    q, k, v, sq, sk = _packed(lq, lk, seed=1)
    want = _np_varlen(_np(q), _np(k), _np(v), None, lq, lk, 0.25, False, 1, None)
    got = flash_attn_varlen_cpu(q, k, v, None, sq, sk, 4, 3, 0.25, False, 1, None)
    np.testing.assert_allclose(_np(got), want, atol=2e-6)
    # queries that see no key (the left window ends before key 0, or no keys at all): zeros
    assert not np.abs(_np(got)[4:6]).any()
    assert not np.abs(_np(got)[:2]).any()
    # Candle's unfused form: NaN for those queries, and no rows for the sequence without keys
    un = _np(flash_attn_varlen_unfused(q, k, v, None, sq, sk, 4, 3, 0.25, False, 1, None))
    assert un.shape == (7, 4, 16)
    assert np.isnan(un[:2]).all() and not np.isnan(un[2:4]).any()
    np.testing.assert_allclose(un[2:4], want[2:4], atol=2e-6)
    np.testing.assert_allclose(un[4:], want[6:], atol=2e-6)


def test_varlen_errors():
    from candlejax.errors import Msg
    from candlejax.nn.attention import flash_attn_varlen_cpu, flash_attn_varlen_unfused

    q, k, v, sq, sk = _packed([3, 2], [2, 4])
    for fn in (flash_attn_varlen_cpu, flash_attn_varlen_unfused):
        with pytest.raises(Msg, match="causal"):
            fn(q, k, v, None, sq, sk, 3, 4, 1.0, True, None, None)
        with pytest.raises(Msg, match="window_right specified without window_left"):
            fn(q, k, v, None, sq, sk, 3, 4, 1.0, False, None, 1)
        with pytest.raises(Msg, match="alibi_slopes"):
            fn(q, k, v, Tensor.new([0.5, 0.25], Device.Cpu), sq, sk, 3, 4, 1.0, False, None, None)
        with pytest.raises(Msg, match="GQA"):
            fn(q, k.narrow(1, 0, 1).broadcast_as((6, 3, 16)), v.broadcast_as((6, 2, 16)), None, sq, sk, 3, 4, 1.0,
               False, None, None)  # fmt: skip
    with pytest.raises(Msg, match="total_q/total_k mismatch"):
        flash_attn_varlen_cpu(q, k, v, None, sk, sk, 4, 4, 1.0, False, None, None)
    with pytest.raises(Msg, match="batch mismatch"):
        flash_attn_varlen_cpu(q, k, v, None, sq, sk.narrow(0, 0, 1), 3, 4, 1.0, False, None, None)
    with pytest.raises(Msg, match="f32 or f16"):
        flash_attn_varlen_cpu(q.to_dtype(DType.BF16), k.to_dtype(DType.BF16), v.to_dtype(DType.BF16), None, sq, sk,
                              3, 4, 1.0, False, None, None)  # fmt: skip


def test_varlen_under_jit():
    import jax

    from candlejax.errors import Msg
    from candlejax.nn.attention import flash_attn_varlen_cpu, flash_attn_varlen_unfused

    q, k, v, sq, sk = _packed(_LQ, _LK, seed=2)
    slopes = Tensor.new([0.5, 0.25, 0.125, 0.0625], Device.Cpu)
    want = flash_attn_varlen_cpu(q, k, v, slopes, sq, sk, 5, 9, 0.3, True, 4, None)

    # traced lengths: the max_seqlen bounds set the padded shapes
    @jax.jit
    def fused(q, k, v, sq, sk):
        return flash_attn_varlen_cpu(q, k, v, slopes, sq, sk, 5, 9, 0.3, True, 4, None)

    np.testing.assert_allclose(_np(fused(q, k, v, sq, sk)), _np(want), atol=1e-6)

    # a bound below a length cannot be reported from inside the trace: the result is all NaN
    @jax.jit
    def too_short(q, k, v, sq, sk):
        return flash_attn_varlen_cpu(q, k, v, slopes, sq, sk, 5, 8, 0.3, True, 4, None)

    assert np.isnan(_np(too_short(q, k, v, sq, sk))).all()

    # the unfused loop needs concrete lengths: constants work, traced lengths raise
    unfused = jax.jit(lambda q, k, v: flash_attn_varlen_unfused(q, k, v, slopes, sq, sk, 5, 9, 0.3, True, 4, None))
    np.testing.assert_allclose(_np(unfused(q, k, v)), _np(want), atol=1e-6)
    traced = jax.jit(lambda q, k, v, sq, sk: flash_attn_varlen_unfused(q, k, v, None, sq, sk, 5, 9, 0.3, True, None,
                                                                       None))  # fmt: skip
    with pytest.raises(Msg, match="concrete"):
        traced(q, k, v, sq, sk)


def _bshd(b, s, h, d, seed, dtype=DType.F32):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(b * s * h * d).astype(F32)
    return Tensor.from_vec(a, (b, s, h, d), Device.Cpu).to_dtype(dtype)


@pytest.mark.parametrize(("s", "skv", "kv_offset"), [(6, 6, 0), (4, 9, 5), (4, 9, 2), (1, 7, 0), (1, 7, 6)])
@pytest.mark.parametrize(("max_bias", "softcap"), [(None, None), (8.0, None), (None, 1.0), (4.0, 20.0)])
def test_flash_attn_b1_causal_alibi_softcap(s, skv, kv_offset, max_bias, softcap):
    from candlejax.nn.attention import AttnMask, flash_attn

    h, h_kv, d, scale = 4, 2, 8, 0.35
    q, k, v = _bshd(1, s, h, d, 1), _bshd(1, skv, h_kv, d, 2), _bshd(1, skv, h_kv, d, 3)
    out = flash_attn(q, k, v, scale, AttnMask.causal_with_offset(kv_offset), max_bias, softcap)
    assert out.dims() == (1, h, s, d) and out.dtype() == DType.F32
    # a single query (decode) sees every key whatever kv_offset says, as Candle's decode kernel
    off = skv - 1 if s == 1 else kv_offset
    i_k = np.arange(s)[:, None] + off
    j = np.arange(skv)[None, :]
    bias = None
    if max_bias:
        bias = _slopes(max_bias, h)[:, None, None] * (j - i_k)[None]
    want = _np_attend(_np(q)[0], _np(k)[0], _np(v)[0], scale, j <= i_k, bias, softcap)
    np.testing.assert_allclose(_np(out)[0], want.transpose(1, 0, 2), atol=2e-5)


@pytest.mark.parametrize("max_bias", [None, 8.0])
def test_flash_attn_b1_mask_and_none(max_bias):
    from candlejax.nn.attention import AttnMask, flash_attn

    h, s, skv, d, scale = 4, 3, 5, 8, 0.4
    q, k, v = _bshd(1, s, h, d, 4), _bshd(1, skv, h, d, 5), _bshd(1, skv, h, d, 6)
    rng = np.random.default_rng(7)
    mask = rng.uniform(-3, 0, (s, skv)).astype(F32)
    mask[0, 1:] = -np.inf
    mask[2, :] = -np.inf  # a query that sees no key: zeros
    mt = Tensor.from_vec(mask, (1, s, skv), Device.Cpu)
    out = _np(flash_attn(q, k, v, scale, AttnMask.Mask(mt), max_bias, 30.0))[0].transpose(1, 0, 2)
    slope = _slopes(max_bias, h) if max_bias else np.ones(h)
    bias = slope[:, None, None] * np.where(np.isinf(mask), -1e30, mask)[None]
    want = _np_attend(_np(q)[0], _np(k)[0], _np(v)[0], scale, ~np.isinf(mask), bias, 30.0)
    np.testing.assert_allclose(out, want, atol=2e-5)
    assert not np.abs(out[2]).any()
    # no mask: max_bias changes nothing in the B=1 kernel (its ALiBi scales the mask)
    plain = _np_attend(_np(q)[0], _np(k)[0], _np(v)[0], scale, np.ones((s, skv), bool))
    got = _np(flash_attn(q, k, v, scale, AttnMask.None_, max_bias, None))[0].transpose(1, 0, 2)
    np.testing.assert_allclose(got, plain, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("max_bias", [None, 8.0])
@pytest.mark.parametrize("dtype", [DType.F32, DType.F16])
def test_flash_attn_batched(causal, max_bias, dtype):
    from candlejax.nn.attention import AttnMask, flash_attn

    b, s, skv, h, h_kv, d, scale = 3, 4, 6, 4, 2, 8, 0.35
    q, k, v = _bshd(b, s, h, d, 8, dtype), _bshd(b, skv, h_kv, d, 9, dtype), _bshd(b, skv, h_kv, d, 10, dtype)
    # B>1 aligns causal queries at the end of the keys: kv_offset is not read
    out = flash_attn(q, k, v, scale, AttnMask.causal() if causal else AttnMask.None_, max_bias, None)
    assert out.dims() == (b, h, s, d) and out.dtype() == dtype
    slopes = _slopes(max_bias, h) if max_bias else None
    qn, kn, vn = _np(q), _np(k), _np(v)
    for bi in range(b):
        want = _np_varlen(qn[bi], kn[bi], vn[bi], slopes, [s], [skv], scale, causal, None, None)
        np.testing.assert_allclose(_np(out)[bi], want.transpose(1, 0, 2), atol=2e-5 if dtype == DType.F32 else 3e-3)


def test_flash_attn_errors_and_mask_api():
    from candlejax.errors import Msg
    from candlejax.nn.attention import AttnMask, flash_attn

    q, k = _bshd(2, 3, 2, 8, 0), _bshd(2, 3, 2, 8, 1)
    with pytest.raises(Msg, match="B>1 requires"):
        flash_attn(q, k, k, 1.0, AttnMask.None_, None, 10.0)
    with pytest.raises(Msg, match="B>1 requires"):
        flash_attn(q, k, k, 1.0, AttnMask.Mask(Tensor.zeros((3, 3), DType.F32, Device.Cpu)), None, None)
    with pytest.raises(Msg, match="B>1 requires"):
        qb, kb = q.to_dtype(DType.BF16), k.to_dtype(DType.BF16)
        flash_attn(qb, kb, kb, 1.0, AttnMask.causal(), None, None)
    with pytest.raises(Msg, match="causal requires lk>=lq"):
        flash_attn(_bshd(2, 4, 2, 8, 0), k, k, 1.0, AttnMask.causal(), None, None)
    # B=1 takes any float dtype and returns f32, as Candle's single-batch kernels
    out = flash_attn(q.narrow(0, 0, 1).to_dtype(DType.BF16), k.narrow(0, 0, 1).to_dtype(DType.BF16),
                     k.narrow(0, 0, 1).to_dtype(DType.BF16), 1.0, AttnMask.causal(), None, None)  # fmt: skip
    assert out.dtype() == DType.F32 and out.dims() == (1, 2, 3, 8)

    assert AttnMask.causal().is_causal() and AttnMask.causal().kv_offset() == 0
    assert AttnMask.causal_with_offset(7).kv_offset() == 7 == AttnMask.Causal(7).kv_offset()
    assert AttnMask.causal_with_offset(3) == AttnMask.Causal(3)
    assert not AttnMask.None_.is_causal() and AttnMask.None_.kv_offset() == 0
    assert AttnMask.default() is AttnMask.None_
    m = AttnMask.Mask(Tensor.zeros((3, 3), DType.F32, Device.Cpu))
    assert not m.is_causal() and m.kv_offset() == 0 and "Mask" in repr(m)
    with pytest.raises(Msg):
        AttnMask.causal_with_offset(-1)


def test_flash_attn_under_jit_and_deprecated_alias():
    import jax

    from candlejax.nn.attention import AttnMask, flash_attn
    from candlejax.nn.attention.cpu_flash import causal, standard
    from candlejax.nn.cpu_flash_attention import run_flash_attn_cpu

    q, k, v = _bshd(1, 5, 4, 8, 11), _bshd(1, 9, 2, 8, 12), _bshd(1, 9, 2, 8, 13)
    eager = flash_attn(q, k, v, 0.3, AttnMask.causal_with_offset(4), 8.0, 30.0)
    jitted = jax.jit(lambda q, k, v: flash_attn(q, k, v, 0.3, AttnMask.causal_with_offset(4), 8.0, 30.0))
    np.testing.assert_allclose(_np(jitted(q, k, v)), _np(eager), atol=1e-6)
    np.testing.assert_allclose(_np(causal.run_causal_attn_cpu(q, k, v, 0.3, 4, 8.0, 30.0)), _np(eager), atol=1e-6)

    mask = Tensor.from_vec(np.triu(np.full((5, 9), -np.inf, F32), 5), (5, 9), Device.Cpu)
    want = flash_attn(q, k, v, 0.3, AttnMask.Mask(mask), 8.0, None)
    with pytest.warns(DeprecationWarning):
        np.testing.assert_allclose(_np(run_flash_attn_cpu(q, k, v, mask, 0.3, 8.0, None)), _np(want), atol=1e-6)
    np.testing.assert_allclose(_np(standard.run_flash_attn_cpu(q, k, v, mask, 0.3, 8.0, None)), _np(want), atol=1e-6)
    jm = jax.jit(lambda q, k, v, m: flash_attn(q, k, v, 0.3, AttnMask.Mask(m), 8.0, None))
    np.testing.assert_allclose(_np(jm(q, k, v, mask)), _np(want), atol=1e-6)
    # an AttnMask is a pytree: it can be a jit argument (the Mask tensor traced, the causal offset static)
    ja = jax.jit(lambda q, k, v, am: flash_attn(q, k, v, 0.3, am, 8.0, None))
    np.testing.assert_allclose(_np(ja(q, k, v, AttnMask.Mask(mask))), _np(want), atol=1e-6)
    causal_want = flash_attn(q, k, v, 0.3, AttnMask.causal_with_offset(2), 8.0, None)
    np.testing.assert_allclose(_np(ja(q, k, v, AttnMask.causal_with_offset(2))), _np(causal_want), atol=1e-6)
    np.testing.assert_allclose(_np(ja(q, k, v, AttnMask.None_)), _np(flash_attn(q, k, v, 0.3, None, 8.0, None)),
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(("h_q", "h_kv"), [(4, 4), (4, 2), (6, 2)])
def test_interleaved_decode_gqa_and_longer_buffer(h_q, h_kv):
    from candlejax.nn.attention.cpu_flash.causal import causal_decode_f32_interleaved

    d, kv_len, cap = 8, 5, 9  # the buffer holds 9 positions, 5 of them written
    rng = np.random.default_rng(h_q * 10 + h_kv)
    q = rng.standard_normal((h_q, d)).astype(F32)
    kv = rng.standard_normal((cap, h_kv, 2 * d)).astype(F32)
    out = causal_decode_f32_interleaved(q.reshape(-1).tolist(), kv.reshape(-1), h_q, h_kv, d, kv_len, 0.3)
    assert out.dims() == (h_q, 1, d) and out.dtype() == DType.F32
    kd, vd = kv[:kv_len, :, :d].astype(np.float64), kv[:kv_len, :, d:].astype(np.float64)
    want = _np_attend(q[None].astype(np.float64), kd, vd, 0.3, np.ones((1, kv_len), bool))
    np.testing.assert_allclose(_np(out)[:, 0], want[0], atol=2e-6)
