"""candlejax.vision: image loading and transforms, letterboxing, NMS against a numpy reference,
drawing, bad input; Conv2d.absorb_bn against torch's conv + BatchNorm."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from candlejax import Tensor, errors, vision
from candlejax.nn import BatchNorm, Conv2d, Conv2dConfig


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()  # (512, 512, 3) u8, a real photograph


def test_load_image_roundtrip(tmp_path, astronaut):
    p = tmp_path / "a.png"
    Image.fromarray(astronaut[:300, :200]).save(p)
    img = vision.load_image(p)
    assert img.shape == (3, 300, 200) and str(img.dtype) == "u8"
    np.testing.assert_array_equal(img.numpy().transpose(1, 2, 0), astronaut[:300, :200])
    Image.fromarray(astronaut[:10, :10, 0]).save(tmp_path / "g.png")  # grey -> RGB
    assert vision.load_image(tmp_path / "g.png").shape == (3, 10, 10)


def test_load_image_scales_16_bit_grey(tmp_path):
    # Candle's load_image: the image crate's to_rgb8 maps a 16-bit sample v to round(v * 255 / 65535);
    # Pillow's convert("RGB") clips at 255 (mode I;16 from PNG / TIFF, mode I from 16-bit PGM)
    v = (np.arange(12 * 9, dtype=np.int64) * 607).reshape(12, 9)
    want = np.broadcast_to(np.round(v * 255 / 65535).astype(np.uint8), (3, 12, 9))
    for ext in ("png", "tif", "pgm"):
        Image.fromarray(v.astype(np.uint16)).save(tmp_path / f"g.{ext}")
        np.testing.assert_array_equal(vision.load_image(tmp_path / f"g.{ext}").numpy(), want, err_msg=ext)
    np.testing.assert_array_equal(vision.open_rgb(tmp_path / "g.png").getpixel((1, 0)), (2, 2, 2))  # 607 -> 2.36
    with pytest.raises(vision.ImageError, match="load_image: no such file"):
        vision.open_rgb(tmp_path / "missing.png")


def test_image_to_tensor_pil_object_matches_file(tmp_path):
    # Image.open(file) through image_to_tensor / as_image gives the pixels load_image(file) gives: 16-bit
    # grey scaled as the image crate's to_rgb8 (round(v * 255 / 65535)), not clipped white by Pillow
    v = (np.arange(12 * 9, dtype=np.int64) * 607).reshape(12, 9)
    want = np.broadcast_to(np.round(v * 255 / 65535).astype(np.uint8), (3, 12, 9))
    for ext in ("png", "tif", "pgm"):
        Image.fromarray(v.astype(np.uint16)).save(tmp_path / f"g.{ext}")
        with Image.open(tmp_path / f"g.{ext}") as im:
            np.testing.assert_array_equal(vision.image_to_tensor(im).numpy(), want, err_msg=ext)
            np.testing.assert_array_equal(vision.as_image(im).numpy(), want, err_msg=ext)
    for mode in ("I;16", "I"):
        im = Image.fromarray(v.astype(np.uint16)).convert(mode) if mode == "I" else Image.fromarray(v.astype(np.uint16))
        assert im.mode == mode
        np.testing.assert_array_equal(vision.image_to_tensor(im).numpy(), want, err_msg=mode)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for mode, ext in (("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"),
                      ("CMYK", "jpg"), ("CMYK", "tif"), ("YCbCr", "jpg"), ("F", "tif"), ("I", "tif")):
        f = tmp_path / f"m_{mode.replace(';', '')}.{ext}"
        Image.fromarray(rgb).convert(mode).save(f)
        with Image.open(f) as im:
            np.testing.assert_array_equal(vision.image_to_tensor(im).numpy(), vision.load_image(f).numpy(),
                                          err_msg=f"{mode} {ext} {im.mode}")
    with pytest.raises(vision.ImageError, match="image_to_tensor: cannot convert a PIL image of mode 'La' to RGB"):
        vision.image_to_tensor(Image.new("La", (2, 2)))


def test_load_image_on_a_directory(tmp_path):
    for f in (vision.load_image, vision.open_rgb, vision.as_image):
        with pytest.raises(vision.ImageError, match="is a directory"):
            f(tmp_path)
    with pytest.raises(errors.InvalidArgument, match=r"load_image: path must be a str or os\.PathLike, got None"):
        vision.load_image(None)


def test_bad_images_raise(tmp_path):
    (tmp_path / "t.jpg").write_text("not an image")
    with pytest.raises(vision.ImageError, match="not a readable image"):
        vision.load_image(tmp_path / "t.jpg")
    with pytest.raises(vision.ImageError, match="no such file"):
        vision.load_image(tmp_path / "missing.png")
    with pytest.raises(vision.ImageError, match=r"expected a \(3, H, W\) RGB image, got shape \[4, 8, 8\]"):
        vision.resize_center_crop(Tensor(np.zeros((4, 8, 8), np.uint8)), 4)
    with pytest.raises(vision.ImageError, match="use image_to_tensor"):
        vision.letterbox(Tensor(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(vision.ImageError, match="empty"):
        vision.letterbox(Tensor(np.zeros((3, 0, 8), np.uint8)))
    with pytest.raises(vision.ImageError, match="empty"):
        vision.image_to_tensor(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(vision.ImageError, match="dtype u8"):
        vision.resize_center_crop(Tensor(np.zeros((3, 8, 8), np.float32)), 4)
    with pytest.raises(vision.ImageError, match=r"\(\.\.\., 3, H, W\)"):
        vision.imagenet_normalize(Tensor(np.zeros((1, 8, 8), np.uint8)))
    assert issubclass(vision.ImageError, errors.Error)


def test_resize_center_crop_and_normalize(astronaut):
    img = vision.image_to_tensor(astronaut[:, 56:456])  # 512 x 400
    out = vision.resize_center_crop(img, 224)
    ref = np.asarray(Image.fromarray(astronaut[:, 56:456]).resize((224, 287), Image.Resampling.BILINEAR))[31:255]
    np.testing.assert_array_equal(out.numpy().transpose(1, 2, 0), ref)
    x = vision.imagenet_normalize(out).numpy()
    mean, std = np.array(vision.IMAGENET_MEAN)[:, None, None], np.array(vision.IMAGENET_STD)[:, None, None]
    np.testing.assert_allclose(x, (out.numpy() / 255.0 - mean) / std, atol=1e-5)


def test_resize_center_crop_rounds_half_away_from_zero(astronaut):
    # the image crate's resize_dimensions: (601 * 224 / 448).round() = 300.5 -> 301 (Python's round: 300)
    a = np.concatenate([astronaut[:448], astronaut[:448, :89]], 1)  # 448 x 601
    out = vision.resize_center_crop(vision.image_to_tensor(a), 224).numpy().transpose(1, 2, 0)
    ref = np.asarray(Image.fromarray(a).resize((301, 224), Image.Resampling.BILINEAR))[:, 38:262]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("hw", [(300, 451), (512, 512), (640, 200), (7, 1000)])
def test_letterbox_shapes_and_inverse(hw):
    h, w = hw
    img = Tensor(np.full((3, h, w), 200, np.uint8))
    out, lb = vision.letterbox(img, 640)
    oh, ow = out.shape[1:]
    assert oh % 32 == 0 and ow % 32 == 0 and max(oh, ow) == 640
    a = out.numpy()
    left, top = lb.pad
    assert (a[:, :top] == 114).all() and (a[:, :, :left] == 114).all()
    # a box covering the resized image maps back to the whole original image
    nh, nw = max(round(h * lb.gain), 1), max(round(w * lb.gain), 1)
    box = np.array([[left, top, left + nw, top + nh]], np.float32)
    np.testing.assert_allclose(vision.scale_boxes(box, lb), [[0, 0, w, h]], atol=1e-3)
    kp = np.array([[[left + nw / 2, top + nh / 2, 0.9]]], np.float32)
    np.testing.assert_allclose(vision.scale_keypoints(kp, lb), [[[w / 2, h / 2, 0.9]]], atol=1e-3)


@pytest.mark.parametrize("hw", [(101, 2000), (2000, 101), (51, 1000)])
def test_scale_boxes_uses_the_letterbox_gain(hw):
    # 101 x 2000 at 640: resized to 32 x 640 (32.32 rows rounded down), no padding; the padded
    # shape's ratio 32 / 101 is not the 0.32 the columns were resized with
    h, w = hw
    _, lb = vision.letterbox(Tensor(np.zeros((3, h, w), np.uint8)), 640)
    nh, nw = max(round(h * lb.gain), 1), max(round(w * lb.gain), 1)
    left, top = lb.pad
    q = np.array([[left + nw / 4, top + nh / 4, left + 3 * nw / 4, top + nh / 2]], np.float64)
    np.testing.assert_allclose(vision.scale_boxes(q, lb), [[w / 4, h / 4, 3 * w / 4, h / 2]], rtol=1e-5)
    kp = q[:, None, :2].copy()
    np.testing.assert_allclose(vision.scale_keypoints(kp, lb), [[[w / 4, h / 4]]], rtol=1e-5)


@pytest.mark.parametrize("hw", [(300, 451), (7, 1000), (640, 640), (1000, 90)])
def test_letterbox_resize_is_bilinear(rng, hw):
    # the resized part of the letterbox against jax.image.resize (linear, no antialias) in f32
    img = rng.integers(0, 256, (3, *hw), dtype=np.uint8)
    out, lb = vision.letterbox(Tensor(img), 640)
    nh, nw = max(round(hw[0] * lb.gain), 1), max(round(hw[1] * lb.gain), 1)
    left, top = lb.pad
    got = out.numpy()[:, top : top + nh, left : left + nw].astype(int)
    want = np.asarray(jax.image.resize(img.astype(np.float32), (3, nh, nw), "linear", antialias=False))
    want = np.clip(np.round(want), 0, 255).astype(int)
    assert np.abs(got - want).max() <= 1 and (got != want).mean() < 1e-2  # f32 rounding


def test_letterbox_matches_ultralytics(astronaut):
    # Ultralytics' LetterBox (cv2 INTER_LINEAR in fixed point) on the same photo: off by at most 1
    want = np.load(Path(__file__).resolve().parents[1] / "golden" / "yolo11n_pose_astronaut.npz")["letterboxed"]
    got = vision.letterbox(vision.image_to_tensor(astronaut), 640)[0].numpy()
    assert got.shape == want.shape
    d = np.abs(got.astype(int) - want)
    assert d.max() <= 1 and d.mean() < 0.15


def _nms_ref(boxes, scores, iou, classes, *, conf=-np.inf, max_det=None, top_k=None):
    """Greedy NMS in plain numpy, float64: candidates above ``conf`` by descending score (equal scores
    in index order), the ``top_k`` best of them, a box dropped when it overlaps a kept box of its class."""
    order = [i for i in np.argsort(-np.asarray(scores, np.float64), kind="stable") if scores[i] > conf][:top_k]
    b = np.asarray(boxes, np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if classes[i] != classes[j]:
                continue
            wh = np.clip(np.minimum(b[i, 2:], b[j, 2:]) - np.maximum(b[i, :2], b[j, :2]), 0, None)
            inter = wh[0] * wh[1]
            if inter / (area[i] + area[j] - inter) > iou:
                ok = False
                break
        if ok:
            keep.append(i)
    return np.array(keep[:max_det], int)


def _grid_boxes(rng, n, span, size):
    """Boxes on an integer grid (IoU in f32 and f64 agree about a threshold): half scattered, half
    jittered copies of a few of them (overlap chains)."""
    xy = rng.integers(0, span, (n, 2))
    wh = rng.integers(4, size, (n, 2))
    src = rng.integers(0, max(n // 20, 1), n // 2)
    xy[: n // 2], wh[: n // 2] = xy[src] + rng.integers(-6, 7, (n // 2, 2)), wh[src] + rng.integers(-4, 5, (n // 2, 2))
    return np.concatenate([xy, xy + np.maximum(wh, 1)], 1).astype(np.float32)


@pytest.mark.parametrize("n, block, max_det, nc, conf", [
    (300, 16, 300, 3, 0.1),  # many blocks, fewer kept than max_det
    (300, 16, 20, 3, 0.1),  # more kept than max_det: stops early
    (1500, 512, 300, 4, 0.1),  # default block size, several blocks, more kept than max_det
    (1500, 512, 300, 4, 0.8),  # more boxes than a block, but the candidates fit in one
    (700, 64, 1000, 1, 0.1),  # max_det above the candidate count
    (5, 512, 300, 2, 0.1),  # fewer boxes than one block
])  # fmt: skip
def test_nms_blocks_match_greedy_reference(rng, n, block, max_det, nc, conf):
    boxes = _grid_boxes(rng, n, 200, 60)
    scores = (rng.integers(0, 25, n) / 25).astype(np.float32)  # many equal scores
    classes = rng.integers(0, nc, n).astype(np.int32)
    fn = jax.jit(lambda b, s, c, t: vision.nms_arrays(b, s, c, conf, t, max_det=max_det, block=block))
    idx, ok = (np.asarray(a) for a in fn(boxes, scores, classes, 0.45))
    ref = _nms_ref(boxes, scores, 0.45, classes, conf=np.float32(conf), max_det=max_det)
    assert ok.shape == idx.shape == (max_det,) and not ok[len(ref) :].any()
    np.testing.assert_array_equal(idx[ok], ref)
    full = _nms_ref(boxes, scores, 0.45, classes, conf=np.float32(conf))
    assert len(ref) == min(len(full), max_det) > 0
    # the public API: same result, any class (agnostic) as well
    np.testing.assert_array_equal(vision.nms(boxes, scores, 0.45, classes, conf=conf, max_det=max_det), ref)
    got = vision.nms(boxes, scores, 0.45, conf=conf, max_det=max_det, top_k=n // 2)
    np.testing.assert_array_equal(got, _nms_ref(boxes, scores, 0.45, np.zeros(n), conf=np.float32(conf),
                                                max_det=max_det, top_k=n // 2))  # fmt: skip


def test_nms_edge_cases():
    boxes = _grid_boxes(np.random.default_rng(1), 50, 100, 30)
    scores = np.linspace(0.1, 0.5, 50, dtype=np.float32)
    # no candidates
    assert vision.nms(boxes, scores, 0.45, conf=0.5).shape == (0,)
    assert vision.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.45).shape == (0,)
    idx, ok = vision.nms_arrays(boxes, scores, np.zeros(50, np.int32), 0.9, 0.45, max_det=7)
    assert idx.shape == ok.shape == (7,) and not np.asarray(ok).any()
    # without conf every box is a candidate, as in torchvision (zero, negative and infinite scores too)
    signed = scores - 0.3
    signed[[3, 17]] = np.inf
    np.testing.assert_array_equal(vision.nms(boxes, signed, 0.45), _nms_ref(boxes, signed, 0.45, np.zeros(50)))
    assert len(vision.nms(boxes, signed, 0.45)) > len(vision.nms(boxes, signed, 0.45, conf=0.0))
    with pytest.raises(errors.Error, match=r"boxes must be \(N, 4\)"):
        vision.nms(boxes[:, :3], scores, 0.45)
    with pytest.raises(errors.Error, match="max_det=-1"):
        vision.nms(boxes, scores, 0.45, max_det=-1)


@pytest.mark.parametrize("agnostic", [True, False])
def test_nms_matches_greedy_reference(rng, agnostic):
    n = 300
    xy = rng.uniform(0, 200, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(10, 60, (n, 2)).astype(np.float32)], 1)
    scores = rng.permutation(n).astype(np.float32) / n
    classes = rng.integers(0, 3, n)
    got = vision.nms(boxes, scores, 0.45, None if agnostic else classes, max_det=300)
    ref = _nms_ref(boxes, scores, 0.45, np.zeros(n, int) if agnostic else classes)
    np.testing.assert_array_equal(got, ref)
    assert len(vision.nms(boxes, scores, 0.45, max_det=5)) == 5
    assert len(vision.nms(boxes, scores, 0.45, conf=0.99)) == len(_nms_ref(boxes[scores > 0.99], scores[scores > 0.99],
                                                                             0.45, np.zeros(n, int)))


def test_draw_detections(astronaut):
    img = vision.image_to_tensor(astronaut)
    k = np.zeros((1, 17, 3), np.float32)
    k[0, :, 0], k[0, :, 1], k[0, :, 2] = np.linspace(100, 300, 17), 200, 1.0
    dets = vision.Detections(np.array([[50, 60, 400, 500]], np.float32), np.array([0.9], np.float32),
                             np.array([0]), k)  # fmt: skip
    im = vision.draw_detections(img, dets, ["person"])
    assert im.size == (512, 512)
    a = np.asarray(im)
    assert (a != astronaut).any(axis=2).sum() > 1000  # something was drawn
    assert tuple(a[300, 50]) == (255, 56, 56)  # the box outline in the class colour


def test_draw_detections_bad_boxes():
    # Candle's yolo-v8 example panics on such boxes (imageproc's Rect::of_size(0, ..)); Pillow raised a
    # ValueError / SystemError: a candlejax error naming the detection
    img = vision.image_to_tensor(np.zeros((64, 64, 3), np.uint8))

    def dets(*boxes, k=None):
        n = len(boxes)
        return vision.Detections(np.array(boxes, np.float32), np.full(n, 0.9, np.float32), np.zeros(n, int), k)

    for box in ([np.nan, 2, 30, 40], [1, 2, np.inf, 40]):
        with pytest.raises(vision.ImageError, match=r"draw_detections: detection 1 has a non-finite box"):
            vision.draw_detections(img, dets([1, 2, 30, 40], box))
    with pytest.raises(vision.ImageError, match=r"draw_detections: detection 0 has x2 < x1 or y2 < y1"):
        vision.draw_detections(img, dets([30, 2, 1, 40]))
    # far outside the image: clipped, the same pixels as the box's visible part
    far = np.asarray(vision.draw_detections(img, dets([-1e30, 10, 1e30, 40])))
    near = np.asarray(vision.draw_detections(img, dets([-100, 10, 200, 40])))
    np.testing.assert_array_equal(far, near)
    k = np.zeros((1, 17, 3), np.float32)
    k[0, :, :2], k[0, :, 2] = 20, 1.0
    k[0, 3, 0] = np.nan  # a non-finite keypoint is not drawn
    vision.draw_detections(img, dets([1, 2, 30, 40], k=k))


def test_absorb_bn_matches_torch(rng):
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=True)
    bn = torch.nn.BatchNorm2d(6, eps=1e-3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    with torch.no_grad():
        ref = bn(conv(torch.from_numpy(x))).numpy()
    c = Conv2d(conv.weight.detach().numpy(), conv.bias.detach().numpy(), Conv2dConfig(padding=1, stride=2))
    b = BatchNorm(6, bn.running_mean.numpy(), bn.running_var.numpy(), bn.weight.detach().numpy(),
                  bn.bias.detach().numpy(), eps=1e-3)  # fmt: skip
    fused = c.absorb_bn(b)
    np.testing.assert_allclose(fused.forward(Tensor(x)).numpy(), ref, atol=1e-5)
    with pytest.raises(errors.Error, match="features"):
        c.absorb_bn(BatchNorm(5, np.zeros(5, np.float32), np.ones(5, np.float32), np.ones(5, np.float32),
                              np.zeros(5, np.float32)))  # fmt: skip


def test_nms_suppression_chains():
    # each box overlaps the next one: greedy keeps every other box (a kept box's neighbour is
    # suppressed, which frees the box after it)
    x = np.arange(40, dtype=np.float32) * 4.0
    boxes = np.stack([x, np.zeros(40, np.float32), x + 10, np.full(40, 10, np.float32)], 1)
    scores = np.linspace(1.0, 0.5, 40).astype(np.float32)
    got = vision.nms(boxes, scores, 0.4)
    np.testing.assert_array_equal(got, _nms_ref(boxes, scores, 0.4, np.zeros(40, int)))
    assert len(got) < 40


@pytest.mark.parametrize("hw, size, crop", [((300, 200), 96, 80), ((45, 60), 32, 32), ((20, 30), 24, 40)])
def test_processor_steps_match_transformers(astronaut, hw, size, crop):
    """resize / resize_shortest / center_crop against transformers.image_transforms (channels first),
    normalize against numpy float64; ``as_image`` takes every image form."""
    it = pytest.importorskip("transformers.image_transforms")
    from transformers.image_utils import ChannelDimension, PILImageResampling

    a = np.ascontiguousarray(astronaut[: hw[0], : hw[1]])
    chw = a.transpose(2, 0, 1)
    img = vision.as_image(a)
    for other in (Image.fromarray(a), Tensor(chw)):
        np.testing.assert_array_equal(vision.as_image(other).numpy(), chw)
    first = ChannelDimension.FIRST
    ref = it.resize(chw, (size, crop), PILImageResampling.BICUBIC, data_format=first, input_data_format=first)
    np.testing.assert_array_equal(vision.resize(img, (size, crop), "bicubic").numpy(), ref)
    short = it.get_resize_output_image_size(chw, size, default_to_square=False, input_data_format=first)
    ref = it.resize(chw, short, PILImageResampling.BICUBIC, data_format=first, input_data_format=first)
    got = vision.resize_shortest(img, size)
    np.testing.assert_array_equal(got.numpy(), ref)
    ref = it.center_crop(ref, (crop, crop), data_format=first, input_data_format=first)
    np.testing.assert_array_equal(vision.center_crop(got, crop).numpy(), ref)
    mean, std = vision.OPENAI_CLIP_MEAN, vision.OPENAI_CLIP_STD
    want = (chw / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    out = vision.normalize(img, mean, std)
    assert str(out.dtype) == "f32"
    np.testing.assert_allclose(out.numpy(), want, atol=1e-5)


def test_processor_steps_reject_bad_input(tmp_path):
    with pytest.raises(vision.ImageError, match=r"an \(H, W, 3\) uint8 array .* shape \[4, 4, 4\] and dtype uint8"):
        vision.as_image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(vision.ImageError, match="dtype float32"):
        vision.as_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(vision.ImageError, match="no such file"):
        vision.as_image(tmp_path / "missing.png")
    img = Tensor(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(vision.ImageError, match="unknown interpolation 'cubic'"):
        vision.resize(img, 4, "cubic")
    with pytest.raises(vision.ImageError, match="size must be positive"):
        vision.center_crop(img, 0)
    with pytest.raises(vision.ImageError, match=r"normalize: expected \(\.\.\., 3, H, W\)"):
        vision.normalize(Tensor(np.zeros((4, 8, 8), np.uint8)), vision.IMAGENET_MEAN, vision.IMAGENET_STD)
    assert vision.as_pixel_batch(img) is None and vision.as_pixel_batch("x.png") is None
    assert vision.as_pixel_batch(np.zeros((3, 8, 8), np.float32)).shape == (1, 3, 8, 8)


def test_as_image_rejects_lists_of_images():
    """A list of differently sized images (transformers' processors take lists) is not one image:
    an ImageError, not numpy's ragged-array ValueError."""
    a, b = Image.fromarray(np.zeros((20, 30, 3), np.uint8)), Image.fromarray(np.zeros((25, 30, 3), np.uint8))
    with pytest.raises(vision.ImageError, match="an image is a path, a PIL image"):
        vision.as_image([a, b])


def test_as_pixel_batch_takes_float64_pixels():
    """Preprocessed pixels computed in numpy float64 pass through as f32 (without x64 mode), equal to
    the float32 array's values."""
    x = np.random.default_rng(0).standard_normal((3, 8, 8))
    got = vision.as_pixel_batch(x)
    assert str(got.dtype) == "f32" and got.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(got.numpy()[0], x.astype(np.float32))


def test_sizes_and_boxes_are_checked():
    """Sizes that are not positive ints (or (h, w) pairs), a zero stride and boxes / keypoints of the
    wrong shape raise candlejax errors naming them (were TypeError / ValueError / ZeroDivisionError,
    or a silent 27 x 27 letterbox for imgsz=-5)."""
    img = Tensor(np.zeros((3, 20, 30), np.uint8))
    bad = [
        (lambda: vision.resize_center_crop(img, 16.5), "resize_center_crop: size"),
        (lambda: vision.resize(img, 2.5), "resize: size"),
        (lambda: vision.resize(img, (2,)), "resize: size"),
        (lambda: vision.center_crop(img, (2, 3, 4)), "center_crop: size"),
        (lambda: vision.resize_shortest(img, (2, 3)), "resize_shortest: size"),
        (lambda: vision.letterbox(img, 0), "letterbox: size must be positive"),
        (lambda: vision.letterbox(img, -5), "letterbox: size must be positive"),
        (lambda: vision.letterbox(img, (64, 64, 3)), "letterbox: size"),
        (lambda: vision.letterbox(img, 64, stride=0), "letterbox: stride"),
    ]
    for f, msg in bad:
        with pytest.raises(vision.ImageError, match=msg):
            f()
    _, lb = vision.letterbox(img, 64)
    with pytest.raises(errors.Error, match=r"scale_boxes: boxes must be \(\.\.\., 4\)"):
        vision.scale_boxes(np.zeros(3), lb)
    with pytest.raises(errors.Error, match=r"scale_keypoints: keypoints must be \(\.\.\., K, 2\|3\)"):
        vision.scale_keypoints(np.zeros(3), lb)
