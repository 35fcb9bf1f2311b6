"""models.resnet against transformers' ResNetModel / ResNetForImageClassification (random small
configs, same weights through safetensors), a fine-tuning step against torch, and the classify CLI."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from candlejax import Device, DType, Tensor, errors, vision
from candlejax import optim as cjoptim
from candlejax.models import resnet
from candlejax.nn import VarBuilder, VarMap, loss

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = {
    "basic": dict(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 2, 1, 1]),
    "bottleneck": dict(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[2, 1, 2, 1]),
}


def _hf(kind: str, head: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.ResNetConfig(num_channels=3, num_labels=10, downsample_in_first_stage=False, **CONFIGS[kind])
    m = (transformers.ResNetForImageClassification if head else transformers.ResNetModel)(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return cfg, m


def _ours(cfg, vb, nclasses, fold_bn=True):
    block = resnet.BasicBlock if cfg.layer_type == "basic" else resnet.Bottleneck
    widths = [h // block.expansion for h in cfg.hidden_sizes]
    return resnet.ResNet.load(block, cfg.depths, nclasses, vb, widths=widths, stem_width=cfg.embedding_size,
                              fold_bn=fold_bn)  # fmt: skip


def _save(m, path) -> str:
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
@pytest.mark.parametrize("fold_bn", [True, False])
def test_logits_match_transformers(kind, fold_bn, tmp_path, rng):
    cfg, m = _hf(kind, head=True)
    vb = VarBuilder.from_mmaped_safetensors([_save(m, tmp_path / "m.safetensors")], DType.F32, Device.Cpu)
    net = _ours(cfg, vb.rename_f(resnet.hf_to_torchvision), 10, fold_bn)
    x = rng.standard_normal((2, 3, 64, 48)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).logits.numpy()
    got = net.forward(Tensor(x)).numpy()
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(resnet.forward_jit(net, Tensor(x)).numpy(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block", [resnet.BasicBlock, resnet.Bottleneck])
def test_forward_jit_matches_forward_at_odd_sizes(block, rng):
    # forward_jit runs channels-last with per-map kernel layouts worked out from the image size
    vb = VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu)
    net = resnet.ResNet.load(block, (1, 1, 1, 1), 10, vb, widths=(8, 16, 16, 32), stem_width=8)
    for hw in [(67, 45), (17, 9), (96, 97)]:
        x = Tensor(rng.standard_normal((2, 3, *hw)).astype(np.float32))
        np.testing.assert_allclose(resnet.forward_jit(net, x).numpy(), net.forward(x).numpy(), rtol=1e-5, atol=1e-5)


def test_pooled_features_match_resnet_model(tmp_path, rng):
    cfg, m = _hf("bottleneck", head=False, seed=1)
    vb = VarBuilder.from_mmaped_safetensors([_save(m, tmp_path / "m.safetensors")], DType.F32, Device.Cpu)
    net = _ours(cfg, vb.rename_f(functools.partial(resnet.hf_to_torchvision, prefix="")), None)
    x = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).pooler_output.numpy()[:, :, 0, 0]
    np.testing.assert_allclose(net.forward(Tensor(x)).numpy(), ref, atol=1e-4, rtol=1e-4)


def test_hf_names_cover_the_checkpoint(tmp_path):
    cfg, m = _hf("basic", head=True)
    names = set(_save(m, tmp_path / "m.safetensors") and m.state_dict())
    net = _ours(cfg, VarBuilder.from_mmaped_safetensors([str(tmp_path / "m.safetensors")], DType.F32, Device.Cpu)
                .rename_f(resnet.hf_to_torchvision), 10, fold_bn=False)  # fmt: skip
    read = {resnet.hf_to_torchvision(k) for k in net.named_tensors()}
    assert read == {k for k in names if not k.endswith("num_batches_tracked")}


def test_fine_tuning_step_matches_torch(tmp_path, rng):
    cfg, m = _hf("bottleneck", head=True, seed=2)
    vb = VarBuilder.from_mmaped_safetensors([_save(m, tmp_path / "m.safetensors")], DType.F32, Device.Cpu)
    net = _ours(cfg, vb.rename_f(resnet.hf_to_torchvision), 10, fold_bn=False)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    y = np.array([1, 7, 3, 0], np.uint32)
    lr = 0.05

    m.train()
    out = m(torch.from_numpy(x)).logits
    torch.nn.functional.cross_entropy(out, torch.from_numpy(y.astype(np.int64))).backward()
    with torch.no_grad():
        ref = {k: (p - lr * p.grad).numpy() for k, p in m.named_parameters()}

    def loss_fn(model, xb, yb):
        return loss.cross_entropy(model.forward_t(xb, True), yb)

    opt = cjoptim.SGD(lr)
    net2, _, lv = opt.backward_step(loss_fn, net, opt.init(net), Tensor(x), Tensor(y))
    ref_loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y.astype(np.int64))).item()
    assert abs(float(lv.to_vec0()) - ref_loss) < 1e-4
    got = {resnet.hf_to_torchvision(k): v.numpy() for k, v in net2.named_vars().items()}
    assert set(got) == set(ref)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, atol=2e-5, rtol=1e-4, err_msg=k)
    moved = max(float(np.abs(ref[k] - p.detach().numpy() + lr * p.grad.numpy()).max()) for k, p in m.named_parameters())
    assert moved < 1e-6  # the reference really is one SGD step
    assert max(float(np.abs(p.grad.numpy()).max()) for p in m.parameters()) > 1e-3  # and the gradients are not zero
    # the step's forward_t(x, True) moved the running statistics as torch's train-mode forward did
    ours = {resnet.hf_to_torchvision(k): t for k, t in net2.named_tensors().items()}  # (as named_vars above)
    stats = {k: b.numpy() for k, b in m.named_buffers() if "running" in k}
    assert stats and all(k in ours for k in stats)
    for k, v in stats.items():
        np.testing.assert_allclose(np.asarray(ours[k].jax), v, atol=1e-5, rtol=1e-4, err_msg=k)


def test_resnet50_shapes_and_names():
    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
    net = resnet.resnet50(1000, vb, fold_bn=False)
    names = net.named_tensors()
    assert "layer1.0.downsample.0.weight" in names and "layer4.2.bn3.running_var" in names
    assert names["fc.weight"].shape == (1000, 2048)
    assert sum(v.elem_count() for v in net.named_vars().values()) == 25_557_032  # torchvision's count

    def vb_new():
        return VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)

    r101 = resnet.resnet101(None, vb_new())
    assert [len(st) for st in r101.layers] == [3, 4, 23, 3] and r101.fc is None
    assert [len(st) for st in resnet.resnet152(None, vb_new()).layers] == [3, 8, 36, 3]
    assert [len(st) for st in resnet.resnet34(None, vb_new()).layers] == [3, 4, 6, 3]


def test_wrong_input_channels_raise():
    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
    net = resnet.resnet18(10, vb)
    with pytest.raises(errors.Error, match=r"\[batch, 3, H, W\]"):
        net.forward(Tensor(np.zeros((1, 4, 32, 32), np.float32)))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 3, 32, 32), (1, 32, 32, 3)])
def test_forward_jit_names_a_missing_batch_dim_or_channels_last_input(shape):
    """forward_jit takes (batch, 3, H, W) as forward does (Candle's conv2d: rank 4, 3 channels): an image
    without its batch dim raised Python's zip error, a channels-last one named the transposed shape."""
    net = resnet.resnet18(10, VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    x = Tensor(np.zeros(shape, np.float32))
    with pytest.raises(errors.Error, match=r"\[batch, 3, H, W\]"):
        net.forward(x)
    with pytest.raises(errors.UnexpectedShape, match=r"resnet.forward_jit: xs .*\(batch, 3, height, width\).*got: "
                       + re.escape(str(list(shape)))):
        resnet.forward_jit(net, x)


def test_forward_jit_names_its_argument_order():
    """forward_jit(xs, net) (the images first, as net.forward(xs)) was a raw AttributeError ('ResNet' object
    has no attribute 'shape')."""
    net = resnet.resnet18(10, VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    x = Tensor(np.zeros((1, 3, 32, 32), np.float32))
    for args in ((x, net), (net, None)):
        with pytest.raises(errors.ArgumentType, match=r"resnet.forward_jit\(net, xs\)"):
            resnet.forward_jit(*args)


@pytest.mark.parametrize("shape", [(1, 3, 0, 0), (1, 3, 32, 0), (0, 3, 32, 32)])
def test_empty_images_are_named(shape):
    """A 0x0 image or an empty batch is named at the model's entry (conv2d's invalid-args error came
    from the stem), eagerly, in forward_nhwc and in forward_jit."""
    net = resnet.resnet18(10, VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    x = np.zeros(shape, np.float32)
    dims = re.escape(str(list(shape)))
    with pytest.raises(errors.Msg, match=r"ResNet.forward: the image batch " + dims + r" \(batch, 3, height, w"):
        net.forward(Tensor(x))
    with pytest.raises(errors.Msg, match=r"resnet.forward_jit: the image batch " + dims):
        resnet.forward_jit(net, Tensor(x))
    with pytest.raises(errors.Msg, match=r"ResNet.forward_nhwc: the image batch"):
        net.forward_nhwc(Tensor(x.transpose(0, 2, 3, 1).copy()))


def test_classify_cli(tmp_path):
    from PIL import Image

    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
    net = resnet.resnet18(1000, vb)
    w = tmp_path / "r18.safetensors"
    net.save_safetensors(w)
    img = tmp_path / "x.png"
    Image.fromarray((np.arange(64 * 80 * 3) % 251).astype(np.uint8).reshape(64, 80, 3)).save(img)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "candlejax.models.resnet", "classify", str(img), "--weights", str(w),
                        "--which", "18"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "%" in ln]
    assert len(lines) == 5
    logits = net.forward(Tensor(vision.load_image224(img).numpy()[None]))
    top = int(np.argmax(logits.numpy()[0]))
    assert vision.IMAGENET_CLASSES[top] in lines[0]
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    r = subprocess.run([sys.executable, "-m", "candlejax.models.resnet", "classify", str(bad), "--weights", str(w)],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode != 0 and "not a readable image" in r.stderr
    r = subprocess.run([sys.executable, "-m", "candlejax.models.resnet", "classify", str(img), "--weights", str(w),
                        "--which", "50"], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 1 and r.stderr.startswith("error:") and "layer1.0.conv1.weight" in r.stderr


def test_load_reads_the_depth_and_either_naming(tmp_path, rng, capsys):
    vb = VarBuilder.from_varmap(VarMap(seed=1), DType.F32, Device.Cpu)
    net = resnet.resnet18(1000, vb, fold_bn=False)
    tv = tmp_path / "tv.safetensors"
    net.save_safetensors(tv)
    hf = tmp_path / "hf.safetensors"
    save_file({resnet.hf_to_torchvision(k): torch.from_numpy(v.numpy().copy()) for k, v in net.named_tensors().items()},
              str(hf))  # fmt: skip
    x = Tensor(rng.standard_normal((1, 3, 64, 64)).astype(np.float32))
    ref = net.forward(x).numpy()
    for path in (tv, hf):
        got = resnet.load(path)
        assert [len(st) for st in got.layers] == [2, 2, 2, 2]
        np.testing.assert_allclose(got.forward(x).numpy(), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(errors.Error, match="unknown depth which=19 "):
        resnet.load(tv, which=19)
    with pytest.raises(errors.Error, match="no such file"):
        resnet.load(tmp_path / "missing.safetensors")
    # the console sub-command prints the same top class as python -m candlejax.models.resnet
    from PIL import Image

    from candlejax import cli

    img = tmp_path / "x.png"
    Image.fromarray((np.arange(48 * 40 * 3) % 253).astype(np.uint8).reshape(48, 40, 3)).save(img)
    assert cli.main(["classify", str(img), "--weights", str(hf), "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    top = int(np.argmax(net.forward(vision.load_image224(img).unsqueeze(0)).numpy()[0]))
    assert len(lines) == 3 and lines[0].startswith(vision.IMAGENET_CLASSES[top])
    # Candle's resnet example spells it --image FILE --model FILE
    assert cli.main(["classify", "--image", str(img), "--model", str(hf), "--top", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_candle_no_final_layer_and_argument_order(rng):
    """Candle's resnet18_no_final_layer(vb) & co.: the pooled features of resnet18(num_classes, vb) on the
    same weights; arguments in the wrong order raise naming Candle's order."""
    vm = VarMap(seed=0)
    net = resnet.resnet18(10, VarBuilder.from_varmap(vm, DType.F32, Device.Cpu))
    feats = resnet.resnet18_no_final_layer(VarBuilder.from_varmap(vm, DType.F32, Device.Cpu))
    assert feats.fc is None and resnet.resnet18_no_final_layer.__name__ == "resnet18_no_final_layer"
    x = Tensor(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    pooled = feats.forward(x)
    np.testing.assert_allclose(net.fc.forward(pooled).numpy(), net.forward(x).numpy(), atol=1e-6)
    for depth in (34, 50, 101, 152):
        assert getattr(resnet, f"resnet{depth}_no_final_layer").__name__ == f"resnet{depth}_no_final_layer"
    vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
    with pytest.raises(errors.Error, match=r"resnet18\(num_classes, vb\) keeps that order"):
        resnet.resnet18(vb, 10)


def test_classify_lists_tied_classes_in_index_order(tmp_path, capsys):
    """Candle's example sorts the probabilities with a stable sort: equal ones keep the class order."""
    from PIL import Image
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file as save_np

    from candlejax import cli

    net = resnet.resnet18(1000, VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    w = tmp_path / "r18.safetensors"
    net.save_safetensors(w)
    t = load_file(str(w))
    t["fc.weight"] = np.zeros_like(t["fc.weight"])  # logits = fc.bias exactly
    bias = np.zeros(1000, np.float32)
    tied = [900, 700, 500, 3, 10, 20]
    bias[tied] = 5.0
    t["fc.bias"] = bias
    save_np(t, str(w))
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(img)
    assert cli.main(["classify", str(img), "--weights", str(w), "--top", "5"]) == 0
    names = [ln.rsplit(":", 1)[0].strip() for ln in capsys.readouterr().out.splitlines()]
    assert names == [vision.IMAGENET_CLASSES[i] for i in sorted(tied)[:5]]


def test_load_refuses_a_config_it_does_not_compute(tmp_path):
    """A transformers ResNetConfig beside the weights with the stride in the bottleneck's 1x1 convolution
    (or a downsampling first stage) would load and run with torchvision's strides: it raises instead."""
    cfg, m = _hf("bottleneck", head=True)
    path = _save(m, tmp_path / "model.safetensors")
    cfg.to_json_file(str(tmp_path / "config.json"))
    with pytest.raises(errors.Error) as ok:  # the defaults pass (the small widths then fail to load as a ResNet-50)
        resnet.load(path, nclasses=10, which=50)
    assert "does not compute" not in str(ok.value)
    for key in ("downsample_in_bottleneck", "downsample_in_first_stage"):
        bad = transformers.ResNetConfig.from_dict({**cfg.to_dict(), key: True})
        bad.to_json_file(str(tmp_path / "config.json"))
        with pytest.raises(errors.Error, match=key):
            resnet.load(path, nclasses=10, which=50)


def test_load_reads_a_transformers_folder_and_a_resnet_model_checkpoint(tmp_path, rng):
    """``resnet.load`` of a ``save_pretrained`` folder (as ``microsoft/resnet-18`` is laid out) and of a
    base ``ResNetModel``'s weights (no ``resnet.`` prefix): the folder raised 'no such file', the base
    model 'does not hold a ResNet-18/34/50/101/152 (stage depths (0, 0, 0, 0))'."""
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(layer_type="basic", embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                    depths=[2, 2, 2, 2], num_labels=10, downsample_in_first_stage=False)  # fmt: skip
    m = transformers.ResNetForImageClassification(cfg).eval()
    m.save_pretrained(tmp_path / "cls")
    m.resnet.save_pretrained(tmp_path / "base")
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        logits = m(torch.from_numpy(x)).logits.numpy()
        pooled = m.resnet(torch.from_numpy(x)).pooler_output.numpy()[:, :, 0, 0]
    np.testing.assert_allclose(resnet.load(tmp_path / "cls", nclasses=10).forward(Tensor(x)).numpy(), logits,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    for path in (tmp_path / "base", tmp_path / "base" / "model.safetensors"):
        got = resnet.load(path, nclasses=None).forward(Tensor(x)).numpy()
        np.testing.assert_allclose(got, pooled, atol=1e-4, rtol=1e-4)
