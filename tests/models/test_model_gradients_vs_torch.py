"""Whole-model fine-tuning gradients against torch autograd: BERT, LLaMA (tied and untied), Whisper
(encoder + decoder, tied output projection) and ResNet (BatchNorm in train mode), each loaded with the
same random weights as its transformers model; every trainable parameter's gradient is compared with
torch's, one AdamW step (Candle's ``ParamsAdamW`` defaults) on the tied LLaMA, and frozen tensors must
not train."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import candlejax as cj  # noqa: E402
from candlejax import Device, DType, Tensor  # noqa: E402
from candlejax.models import bert, llama, resnet, whisper  # noqa: E402
from candlejax.nn import VarBuilder, loss  # noqa: E402

LR = 1e-2
STEP_ATOL = 1e-3 * LR  # an AdamW update is ~lr * m / sqrt(v): gradient noise moves it by a fraction of lr


def _grads(model, fn, *args) -> tuple[float, dict[str, np.ndarray]]:
    val, g = cj.jit(cj.value_and_grad(fn))(model, *args)  # one program: eager grad compiles every op
    return float(np.asarray(val)), {k: np.asarray(v) for k, v in g.named_vars().items()}


def _compare(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], what: str, rtol: float = 1e-4,
             atol: float = 1e-7) -> None:
    """Each array within ``rtol`` of its own max-abs plus ``atol`` (a float32 noise floor), named on failure."""
    assert set(ours) == set(ref), (what, sorted(set(ours) ^ set(ref)))
    for k, r in ref.items():
        assert ours[k].shape == r.shape, (what, k)
        err = float(np.abs(ours[k] - r).max())
        assert err <= rtol * float(np.abs(r).max()) + atol, f"{what} {k}: max error {err}, max |ref| {np.abs(r).max()}"


def _torch_grads(m) -> dict[str, np.ndarray]:
    return {k: p.grad.numpy().copy() for k, p in m.named_parameters() if p.requires_grad}


def _adamw_step(model, fn, *args):
    opt = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=LR))
    new, _, _ = opt.backward_step(fn, model, opt.init(model), *args)
    return new


def _torch_adamw_step(m) -> dict[str, np.ndarray]:
    p = cj.optim.ParamsAdamW(lr=LR)
    params = [q for q in m.parameters() if q.requires_grad]
    torch.optim.AdamW(params, lr=LR, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay).step()
    return {k: q.detach().numpy().copy() for k, q in m.named_parameters()}


# ------------------------------------------------------------------------------------------------
# BERT: dropout off, padded positions
# ------------------------------------------------------------------------------------------------
def test_bert_gradients_and_padding(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=16, type_vocab_size=2,
                                  attn_implementation="eager")  # fmt: skip
    hf = transformers.BertModel(cfg).eval()  # eval: dropout off, as candlejax's BERT
    hf.save_pretrained(tmp_path, safe_serialization=True)
    vb = VarBuilder.from_mmaped_safetensors([tmp_path / "model.safetensors"], DType.F32, Device.Cpu)
    model = bert.BertModel.load(vb, bert.Config.from_json_file(tmp_path / "config.json"))
    rng = np.random.default_rng(0)
    b, s, pad_id = 2, 7, 98  # the pad id appears nowhere else: its embedding row must get no gradient
    mask = np.ones((b, s), np.int64)
    mask[1, 4:] = 0
    ids = np.where(mask == 1, rng.integers(1, 97, (b, s)), pad_id)
    tt = rng.integers(0, 2, (b, s))
    w = (rng.standard_normal((b, s, 16)) * mask[..., None]).astype(np.float32)  # padded outputs not in the loss
    pw = rng.standard_normal((b, 16)).astype(np.float32)

    def fn(m, ids, tt, mask):
        h = m.forward(ids, tt, mask)
        return (h * Tensor(w)).sum_all() + (m.pooled_output(h) * Tensor(pw)).sum_all()

    val, ours = _grads(model, fn, *(Tensor(a.astype(np.int32)) for a in (ids, tt, mask)))
    o = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(tt))
    ref_loss = (o.last_hidden_state * torch.tensor(w)).sum() + (o.pooler_output * torch.tensor(pw)).sum()
    ref_loss.backward()
    assert abs(val - ref_loss.item()) < 1e-4 * max(1.0, abs(ref_loss.item()))
    _compare(ours, _torch_grads(hf), "bert grad")
    assert not model.named_buffers()
    word = ours["embeddings.word_embeddings.weight"]
    assert np.all(word[pad_id] == 0) and np.abs(word).max() > 0
    assert np.all(ours["embeddings.position_embeddings.weight"][s:] == 0)  # positions never used


# ------------------------------------------------------------------------------------------------
# LLaMA: tied and untied embeddings, rotary tables are not parameters
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [False, True])
def test_llama_gradients_and_adamw_step(tie, tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=53, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=tie)  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = llama.Llama.from_pretrained(tmp_path, dtype=DType.F32)
    rng = np.random.default_rng(1)
    ids, labels = rng.integers(0, 53, (2, 6)), rng.integers(0, 53, (2, 6))

    def fn(m, ids, labels):
        return loss.cross_entropy(llama.forward_all(m, ids).flatten_to(1), labels.flatten_all())

    args = (Tensor(ids.astype(np.uint32)), Tensor(labels.astype(np.uint32)))
    val, ours = _grads(model, fn, *args)
    ref_loss = torch.nn.functional.cross_entropy(hf(torch.tensor(ids)).logits.reshape(-1, 53),
                                                 torch.tensor(labels).reshape(-1))  # fmt: skip
    ref_loss.backward()
    assert abs(val - ref_loss.item()) < 1e-5
    ref = _torch_grads(hf)
    # tied: one parameter, its gradient the sum of the embedding's and the LM head's uses (exactly once)
    assert ("lm_head.weight" in ours) is (not tie) and ("lm_head.weight" in ref) is (not tie)
    _compare(ours, ref, f"llama tie={tie} grad")
    assert not model.named_buffers()  # rotary tables are constants, not trained
    if tie:  # one AdamW step moves the tied matrix once, with the summed gradient
        new = _adamw_step(model, fn, *args)
        got = {k: np.asarray(v) for k, v in new.named_vars().items()}
        _compare(got, _torch_adamw_step(hf), "llama tied AdamW", rtol=1e-5, atol=STEP_ATOL)


# ------------------------------------------------------------------------------------------------
# Whisper: encoder + decoder, output projection tied to embed_tokens, frozen encoder positions
# ------------------------------------------------------------------------------------------------
def test_whisper_gradients_and_frozen_positions(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=60, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, max_source_positions=10,
        max_target_positions=12, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for n, p in hf.named_parameters():
            if "layer_norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    model = whisper.Whisper.from_pretrained(tmp_path, Device.Cpu)
    rng = np.random.default_rng(2)
    mel = rng.standard_normal((2, 8, 20)).astype(np.float32)
    toks, labels = rng.integers(0, 60, (2, 5)), rng.integers(0, 60, (2, 5))

    def fn(m, mel, toks, labels):  # the pure decoder step: the stateful forward reads ids on the host
        logits, _ = whisper.step(m.decoder, whisper.new_state(m.decoder, m.encoder.forward(mel)), toks)
        return loss.cross_entropy(logits.flatten_to(1), labels.flatten_all())

    args = (Tensor(mel), Tensor(toks.astype(np.uint32)), Tensor(labels.astype(np.uint32)))
    val, ours = _grads(model, fn, *args)
    logits = hf(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(toks)).logits
    ref_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 60), torch.tensor(labels).reshape(-1))
    ref_loss.backward()
    assert abs(val - ref_loss.item()) < 1e-5
    ref = _torch_grads(hf)
    # transformers freezes the sinusoid table (Candle does not even read it): not a trainable Var here
    assert "model.encoder.embed_positions.weight" not in ref
    assert "model.encoder.embed_positions.weight" in model.named_buffers()
    assert "model.encoder.embed_positions.weight" in model.state_dict()  # still saved with the model
    assert "proj_out.weight" not in ours  # tied: embed_tokens' gradient sums both uses
    _compare(ours, ref, "whisper grad")
    assert "model.encoder.embed_positions.weight" not in model.named_vars()  # no optimizer moves it


# ------------------------------------------------------------------------------------------------
# ResNet: BatchNorm in train mode, running statistics are buffers
# ------------------------------------------------------------------------------------------------
def test_resnet_train_mode_gradients_and_running_stats(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(num_channels=3, num_labels=5, downsample_in_first_stage=False, layer_type="basic",
                                    embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])  # fmt: skip
    hf = transformers.ResNetForImageClassification(cfg)
    with torch.no_grad():
        for mod in hf.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "m.safetensors"))
    vb = VarBuilder.from_mmaped_safetensors([tmp_path / "m.safetensors"], DType.F32, Device.Cpu)
    net = resnet.ResNet.load(resnet.BasicBlock, cfg.depths, 5, vb.rename_f(resnet.hf_to_torchvision),
                             widths=cfg.hidden_sizes, stem_width=8, fold_bn=False)  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 4, 3, 0], np.uint32)

    def fn(m, xb, yb):
        return loss.cross_entropy(m.forward_t(xb, True), yb)

    hf.train()
    ref_loss = torch.nn.functional.cross_entropy(hf(torch.tensor(x)).logits, torch.tensor(y.astype(np.int64)))
    ref_loss.backward()
    val, ours = _grads(net, fn, Tensor(x), Tensor(y))
    assert abs(val - ref_loss.item()) < 1e-4
    ours = {resnet.hf_to_torchvision(k): v for k, v in ours.items()}
    _compare(ours, {resnet.hf_to_torchvision(k): v for k, v in _torch_grads(hf).items()}, "resnet grad", rtol=2e-4)
    buffers = {resnet.hf_to_torchvision(k) for k in net.named_buffers()}
    assert buffers and all("running_" in k for k in buffers)
    assert not buffers & set(net.named_vars())  # running statistics are not trainable
    # running statistics moved as torch's after one train-mode forward (momentum 0.1, unbiased variance,
    # Candle's batch_norm.rs forward_train, which updates them on the forward inside the gradient too)
    hf_stats = {resnet.hf_to_torchvision(k): b.numpy() for k, b in hf.named_buffers() if "running" in k}
    stats = {resnet.hf_to_torchvision(k): np.asarray(t.jax) for k, t in net.named_buffers().items()}
    assert hf_stats and set(hf_stats) <= set(stats)
    for k, v in hf_stats.items():
        np.testing.assert_allclose(stats[k], v, atol=1e-5, rtol=1e-4, err_msg=k)
