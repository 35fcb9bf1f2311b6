"""``candlejax.models.with_tracing`` (candle-transformers' ``models/with_tracing.rs``): Candle's
constructors, values against numpy (float64) and torch, and the layers under ``jax.jit``."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from candlejax import Device, DType, Tensor, errors, nn
from candlejax.io import gguf
from candlejax.models import quantized_var_builder, with_tracing
from candlejax.quantized import GgmlDType, QTensor


@pytest.fixture()
def vb():
    rng = np.random.default_rng(0)
    tensors = {
        "fc.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "fc.bias": rng.standard_normal(3).astype(np.float32),
        "emb.weight": rng.standard_normal((10, 4)).astype(np.float32),
        "norm.weight": rng.standard_normal(4).astype(np.float32),
        "norm.bias": rng.standard_normal(4).astype(np.float32),
    }
    return nn.VarBuilder.from_tensors({k: Tensor.new(v) for k, v in tensors.items()}, DType.F32, Device.Cpu), tensors


def test_linear_constructors_read_candles_names(vb):
    vb, t = vb
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    with_bias = with_tracing.linear(4, 3, vb.pp("fc"))
    assert isinstance(with_bias, with_tracing.Linear) and isinstance(with_bias, nn.Linear)
    expected = x @ t["fc.weight"].T + t["fc.bias"]
    np.testing.assert_allclose(with_bias.forward(Tensor.new(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    no_bias = with_tracing.linear_no_bias(4, 3, vb.pp("fc"))
    assert no_bias.bias is None
    np.testing.assert_allclose(no_bias.forward(Tensor.new(x)).numpy(), x @ t["fc.weight"].T, rtol=1e-5, atol=1e-6)
    assert with_tracing.linear_b(4, 3, False, vb.pp("fc")).bias is None
    direct = with_tracing.Linear.from_weights(Tensor.new(t["fc.weight"]), Tensor.new(t["fc.bias"]))
    np.testing.assert_array_equal(direct.forward(Tensor.new(x)).numpy(), with_bias.forward(Tensor.new(x)).numpy())
    with pytest.raises(errors.Error, match=r"fc\.weight"):
        with_tracing.linear(5, 3, vb.pp("fc"))


def test_embedding_new_reads_the_table_and_from_weights_takes_it(vb):
    vb, t = vb
    emb = with_tracing.Embedding.new(10, 4, vb.pp("emb"))
    assert isinstance(emb, with_tracing.Embedding) and emb.hidden_size() == 4
    np.testing.assert_array_equal(emb.embeddings().numpy(), t["emb.weight"])
    ids = Tensor.new(np.array([[1, 9, 0]], np.uint32))
    np.testing.assert_array_equal(emb.forward(ids).numpy(), t["emb.weight"][[[1, 9, 0]]])
    same = with_tracing.Embedding.from_weights(Tensor.new(t["emb.weight"]))
    np.testing.assert_array_equal(same.forward(ids).numpy(), emb.forward(ids).numpy())


def test_norms_against_torch(vb):
    vb, t = vb
    x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    rms = with_tracing.RmsNorm.new(4, 1e-6, vb.pp("norm"))
    ref = torch.nn.functional.rms_norm(torch.from_numpy(x), (4,), torch.from_numpy(t["norm.weight"]), 1e-6)
    np.testing.assert_allclose(rms.forward(Tensor.new(x)).numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rms.forward_diff(Tensor.new(x)).numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    ln_ref = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (4,), torch.from_numpy(t["norm.weight"]), torch.from_numpy(t["norm.bias"]), 1e-5
    ).numpy()
    for ln in (
        with_tracing.layer_norm(4, 1e-5, vb.pp("norm")),
        with_tracing.layer_norm(4, nn.LayerNormConfig(eps=1e-5), vb.pp("norm")),
        with_tracing.LayerNorm.new(Tensor.new(t["norm.weight"]), Tensor.new(t["norm.bias"]), 1e-5),
    ):
        assert isinstance(ln, with_tracing.LayerNorm)
        np.testing.assert_allclose(ln.forward(Tensor.new(x)).numpy(), ln_ref, rtol=1e-5, atol=1e-5)


def test_qmatmul_new_from_a_gguf_var_builder(tmp_path):
    """Candle's ``with_tracing::QMatMul::new(out_dim, in_dim, vb)`` reads ``vb.get((in_dim, out_dim),
    "weight")``: every Candle caller passes ``(in_features, out_features)`` (``quantized_nn::linear``,
    ``quantized_blip_text``'s ``QMatMul::new(hidden_size, vocab_size, ..)``, quantized T5's
    ``QMatMul::new(d_model, d_ff, vb.pp("wi"))``), so a ``(out, in)`` weight is read by ``new(in, out)``."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    q = QTensor.quantize(Tensor.new(w), GgmlDType.Q8_0)
    path = tmp_path / "w.gguf"
    gguf.write(str(path), {}, {"proj.weight": q})
    qvb = quantized_var_builder.VarBuilder.from_gguf(str(path), Device.Cpu)
    mm = with_tracing.QMatMul.new(64, 8, qvb.pp("proj"))  # weight (8, 64): 64 inputs -> 8 outputs
    assert isinstance(mm, with_tracing.QMatMul)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    expected = x.astype(np.float64) @ q.dequantize().numpy().astype(np.float64).T
    np.testing.assert_allclose(mm.forward(Tensor.new(x)).numpy(), expected, rtol=1e-4, atol=1e-4)
    again = with_tracing.QMatMul.from_weights(q)
    np.testing.assert_allclose(again.forward(Tensor.new(x)).numpy(), expected, rtol=1e-4, atol=1e-4)
    jitted = jax.jit(lambda m, v: m.forward(v))(mm, Tensor.new(x))
    np.testing.assert_allclose(jitted.numpy(), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(errors.Error, match=r"proj\.weight"):
        with_tracing.QMatMul.new(8, 64, qvb.pp("proj"))


def test_layers_in_a_module_compile_and_differentiate(vb):
    vb, _ = vb

    class Block(nn.Module):
        def __init__(self, vb):
            self.emb = with_tracing.Embedding.new(10, 4, vb.pp("emb"))
            self.norm = with_tracing.RmsNorm.new(4, 1e-6, vb.pp("norm"))
            self.fc = with_tracing.linear(4, 3, vb.pp("fc"))

        def forward(self, ids):
            return self.fc.forward(self.norm.forward(self.emb.forward(ids)))

    block = Block(vb)
    ids = Tensor.new(np.array([[1, 2, 3]], np.uint32))
    eager = block.forward(ids).numpy()
    compiled = jax.jit(lambda m, i: m.forward(i))(block, ids).numpy()
    np.testing.assert_allclose(compiled, eager, rtol=1e-6, atol=1e-6)
    leaves = jax.tree_util.tree_leaves(block)
    assert len(leaves) == 4  # embedding table, norm weight, linear weight and bias
    grads = jax.grad(lambda m: m.forward(ids).jax.sum())(block)
    assert isinstance(grads.fc, with_tracing.Linear) and np.abs(grads.fc.weight.numpy()).sum() > 0
