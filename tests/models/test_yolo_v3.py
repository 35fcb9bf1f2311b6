"""models.yolo.darknet (Candle's yolo-v3 example) against OpenCV's darknet importer.

Reference: ``cv2.dnn.readNetFromDarknet(cfg, weights)`` on a small cfg holding every block type the
model supports (conv with and without BatchNorm, leaky and linear, stride 2, shortcut, route of one
and of two blocks, upsample, two yolo heads of 3 classes) at 64x64, with random weights written in
darknet's binary ``.weights`` format by this file (independently of ``load_darknet_weights``).

What OpenCV's yolo (``Region``) layer computes, per row ``(grid row, grid column, anchor)``
(``modules/dnn/src/layers/region_layer.cpp``): ``x = (col + sigmoid(tx)) / grid_w``, ``y = (row +
sigmoid(ty)) / grid_h`` (image fractions), ``w = exp(tw) * anchor_w / H``, ``h = exp(th) *
anchor_h / W`` (the input's size; equal here, the cfg is square), ``objectness = sigmoid(to)`` and
class scores ``sigmoid(tc) * objectness``, set to 0 when not above the yolo block's ``thresh``, then
a per-class NMS when ``nms_threshold > 0``. The cfg sets ``thresh=0`` and ``nms_threshold=0``
(Candle ignores both keys), so OpenCV's rows are candlejax's rows divided by the image size, with
the class scores multiplied by the objectness.

BatchNorm eps: Candle (and candlejax) use 1e-5, OpenCV's importer 1e-6. OpenCV gets its own copy of
the weights with every running variance raised by 9e-6, so both compute the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import Tensor, errors
from candlejax.models.yolo import darknet
from candlejax.models.yolo.darknet import (
    YOLO_V3_CFG,
    Darknet,
    DarknetConfigError,
    DarknetWeightsError,
    load_darknet_weights,
)
from candlejax.nn import VarBuilder

cv2 = pytest.importorskip("cv2")

SIZE = 64
SMALL_CFG = f"""[net]
# a small net with every supported block
width={SIZE}
height={SIZE}
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask = 3,4,5
anchors = 5,6,  9,14,  17,11,  20,30,  36,25,  50,56
classes=3
num=6
thresh=0
nms_threshold=0

[route]
layers = -3

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 5

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask = 0,1,2
anchors = 5,6,  9,14,  17,11,  20,30,  36,25,  50,56
classes=3
num=6
thresh=0
nms_threshold=0
"""
ROWS = 3 * (8 * 8 + 16 * 16)  # two heads: 8x8 and 16x16 grids, 3 anchors each


def _random_layers(net: Darknet, seed: int = 0) -> list[list[np.ndarray]]:
    """Per conv block, darknet's arrays in file order: biases, [scales, mean, variance,] kernel."""
    rng = np.random.default_rng(seed)
    out = []
    for name, shape in net.tensor_shapes().items():
        kind = name.rsplit(".", 1)[1]
        if kind == "weight" and ".conv_" in name:
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) * (1.5 / np.sqrt(fan_in))
        elif kind in ("weight", "running_var"):  # BN scales, variances
            a = rng.uniform(0.5, 1.5, shape)
        else:
            a = rng.normal(0.0, 0.2, shape)
        out.append((name, a.astype(np.float32)))
    return out


def _write_weights(path, arrays, major=0, minor=2, var_shift=0.0) -> None:
    with open(path, "wb") as f:
        np.array([major, minor, 5], "<i4").tofile(f)
        np.array([123456], "<i8" if major * 10 + minor >= 2 else "<i4").tofile(f)
        for name, a in arrays:
            (a + var_shift if name.endswith("running_var") else a).astype("<f4").tofile(f)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo_v3")
    cfg = d / "small.cfg"
    cfg.write_text(SMALL_CFG)
    net = Darknet.parse_config(cfg)
    arrays = _random_layers(net)
    _write_weights(d / "small.weights", arrays)  # version 0.2: `seen` is i64
    _write_weights(d / "small_v01.weights", arrays, minor=1)  # version 0.1: `seen` is i32
    _write_weights(d / "opencv.weights", arrays, minor=1, var_shift=1e-5 - 1e-6)  # OpenCV's eps is 1e-6
    return {"dir": d, "cfg": cfg, "net": net, "arrays": dict(arrays)}


@pytest.fixture(scope="module")
def run(files):
    """candlejax (eager and jitted) and OpenCV on one random image."""
    net = files["net"]
    tensors = load_darknet_weights(files["dir"] / "small.weights", net)
    model = net.build_model(VarBuilder.from_tensors(tensors))
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        layers = [np.asarray(y._a) for y in model.forward_layers(Tensor.new(x))]
        eager = np.asarray(model.forward(Tensor.new(x))._a)
        jitted = np.asarray(jax.jit(lambda m, a: m.forward(Tensor(a))._a)(model, jnp.asarray(x)))
    cv = cv2.dnn.readNetFromDarknet(str(files["cfg"]), str(files["dir"] / "opencv.weights"))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cv.enableWinograd(False)
    cv.setInput(x)
    names = list(cv.getUnconnectedOutLayersNames())
    heads = cv.forward(names)
    cv.setInput(x)
    leaky0 = cv.forward("leaky_1")  # block 0 (conv + BN + leaky); OpenCV names the activation by the next id
    return {"model": model, "tensors": tensors, "x": x, "layers": layers, "eager": eager, "jitted": jitted,
            "cv_names": names, "cv_heads": heads, "cv_leaky0": leaky0}  # fmt: skip


def _to_opencv_rows(rows: np.ndarray) -> np.ndarray:
    """candlejax's ``(cx, cy, w, h)`` pixels, objectness, class sigmoids -> OpenCV's yolo rows."""
    out = rows.copy()
    out[:, :4] /= SIZE
    out[:, 5:] *= rows[:, 4:5]
    return out


def test_detections_match_opencv(run):
    assert run["eager"].shape == (1, ROWS, 8)
    assert run["cv_names"] == ["yolo_9", "yolo_16"]  # cfg order: the 8x8 head, then the 16x16 head
    ref = np.concatenate([np.asarray(h).reshape(-1, 8) for h in run["cv_heads"]], 0)
    ours = _to_opencv_rows(run["eager"][0])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert ours[:, :4].std() > 0.05 and 0.05 < ours[:, 4].mean() < 0.95  # not degenerate values


def test_jit_matches_eager(run):
    np.testing.assert_allclose(run["jitted"], run["eager"], rtol=1e-5, atol=1e-6)
    batch = jax.ShapeDtypeStruct((2, 3, SIZE, SIZE), jnp.float32)
    assert jax.eval_shape(lambda m, a: m.forward(Tensor(a))._a, run["model"], batch).shape == (2, ROWS, 8)


def test_non_square_cfg():
    """Strides per axis (Candle's ``detect`` assumes a square input): 128 wide, 64 high."""
    net = Darknet.parse_config_str(SMALL_CFG.replace(f"width={SIZE}", "width=128"))
    model = net.build_model(VarBuilder.zeros())
    out = np.asarray(model.forward(Tensor.new(np.zeros((1, 3, SIZE, 128), np.float32)))._a)[0]
    assert out.shape == (3 * (8 * 16 + 16 * 32), 8)
    # zero weights: sigmoid(0) = 0.5, so the last cell's centre is (grid - 0.5) * stride on each axis
    np.testing.assert_allclose(out[3 * 8 * 16 - 1, :2], [(16 - 0.5) * 8, (8 - 0.5) * 8])
    np.testing.assert_allclose(out[-1, :4], [(32 - 0.5) * 4, (16 - 0.5) * 4, 17, 11])  # anchor 2 of mask 0,1,2


def test_intermediate_conv_bn_leaky_matches_opencv(run):
    ours, ref = run["layers"][0], np.asarray(run["cv_leaky0"])
    assert ours.shape == ref.shape == (1, 8, SIZE, SIZE)
    assert (ours < 0).any()  # leaky's negative side is exercised
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_decoding_is_candles(run):
    """Candle's ``detect`` on block 8's raw output: sigmoid(xy) + cell times stride, exp(wh) * anchors."""
    raw, rows = run["layers"][8], run["layers"][9][0]  # blocks 8 (linear conv, 24 x 8 x 8) and 9 (yolo)
    t = raw[0].reshape(3, 8, 8, 8).transpose(2, 3, 0, 1)  # (row, col, anchor, attr)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    cols, rws = np.meshgrid(np.arange(8), np.arange(8))
    anchors = np.array([(20, 30), (36, 25), (50, 56)], np.float32)
    want = np.concatenate([
        (sig(t[..., 0]) + cols[..., None])[..., None] * 8, (sig(t[..., 1]) + rws[..., None])[..., None] * 8,
        np.exp(t[..., 2:4]) * anchors, sig(t[..., 4:]),
    ], -1).reshape(-1, 8)  # fmt: skip
    np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-5)


def test_weights_names_and_header_versions(files, run):
    net, tensors = files["net"], run["tensors"]
    assert list(tensors) == list(net.tensor_shapes())  # darknet's file order
    assert "0.batch_norm_0.running_var" in tensors and "6.conv_6.bias" in tensors and "0.conv_0.bias" not in tensors
    assert {k: tuple(v.shape) for k, v in tensors.items()} == net.tensor_shapes()
    vb = VarBuilder.from_tensors(tensors)
    net.build_model(vb)
    assert vb.read_names() == set(tensors)
    for name, a in files["arrays"].items():
        np.testing.assert_array_equal(np.asarray(tensors[name]._a), a)
    old = load_darknet_weights(files["dir"] / "small_v01.weights", net)
    for name in tensors:
        np.testing.assert_array_equal(np.asarray(old[name]._a), np.asarray(tensors[name]._a))


def test_parse_config_str_and_net_parameters(files):
    a, b = Darknet.parse_config_str(SMALL_CFG), darknet.parse_config(files["cfg"])
    assert [(x.block_type, x.parameters) for x in a.blocks] == [(x.block_type, x.parameters) for x in b.blocks]
    assert (a.width(), a.height(), a.channels()) == (SIZE, SIZE, 3)
    lines, route = SMALL_CFG.splitlines(), a.blocks[13]
    assert route.block_type == "route" and route.parameters["layers"] == "-1, 5"
    assert lines[route.line - 1] == "[route]" and lines[route.lines["layers"] - 1] == "layers = -1, 5"


def test_yolo_v3_cfg_shapes():
    net = Darknet.parse_config(YOLO_V3_CFG)
    assert (net.width(), net.height(), len(net.blocks)) == (416, 416, 107)
    assert [b.block_type for b in net.blocks].count("convolutional") == 75
    shapes = net.tensor_shapes()
    assert len(shapes) == 72 * 5 + 3 * 2 and shapes["81.conv_81.weight"] == (255, 1024, 1, 1)
    assert shapes["0.conv_0.weight"] == (32, 3, 3, 3) and shapes["73.batch_norm_73.running_var"] == (1024,)
    # 20 header bytes + the f32 of every tensor: the size of darknet's published yolov3.weights
    assert 20 + 4 * sum(int(np.prod(s)) for s in shapes.values()) == 248_007_048
    model = net.build_model(VarBuilder.zeros())
    x = jax.ShapeDtypeStruct((1, 3, 416, 416), jnp.float32)
    out = jax.eval_shape(lambda m, a: m.forward(Tensor(a))._a, model, x)
    assert out.shape == (1, 3 * (13 * 13 + 26 * 26 + 52 * 52), 85) == (1, 10647, 85)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[net]\nwidth=64\n[convolutional\nfilters=8\n", r"<cfg>:3: malformed section header"),
        ("[net]\nwidth 64\n", r"<cfg>:2: expected 'key = value'"),
        ("filters=8\n[net]\n", r"<cfg>:1: 'filters' comes before any \[section\]"),
        ("[net]\nwidth=64\n\n# c\nwidth=32\n", r"<cfg>:5: a second value for 'width' .*first at line 2"),
        ("[net]\n[net]\n", r"<cfg>:2: a second \[net\]"),
    ],
)
def test_malformed_cfg_lines(text, match):
    with pytest.raises(DarknetConfigError, match=match):
        Darknet.parse_config_str(text)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[upsample]", "[maxpool]", r"<cfg>:\d+ \[maxpool\]: unsupported block type 'maxpool'"),
        ("filters=8\n", "filters=eight\n", r"<cfg>:9 \[convolutional\]: filters = 'eight' is not an integer"),
        ("activation=leaky", "activation=mish", r"<cfg>:13 \[convolutional\]: unsupported activation 'mish'"),
        ("layers = -1, 5", "layers = -1, 15", r"refers to block 15, but block 13 can only read blocks 0..12"),
        ("from=-3", "from=-2", r"cannot add block 2's output \(8, 32, 32\) to the previous one \(16, 32, 32\)"),
        ("mask = 0,1,2", "mask = 0,1,7", r"mask \[0, 1, 7\] indexes 6 anchors"),
        ("classes=3\nnum=6\nthresh=0\nnms_threshold=0\n\n[route]", "classes=4\n\n[route]", r"need 27"),
        (f"width={SIZE}", "width=60", r"cannot concatenate feature maps of different sizes.*multiples of"),
    ],
)
def test_bad_cfg_raises_naming_the_line(old, new, match):
    assert old in SMALL_CFG
    net = Darknet.parse_config_str(SMALL_CFG.replace(old, new, 1))
    with pytest.raises(DarknetConfigError, match=match):
        net.build_model(VarBuilder.zeros())


def test_missing_net_size():
    net = Darknet.parse_config_str("[net]\nchannels=3\n[upsample]\n")
    with pytest.raises(DarknetConfigError, match="cannot find 'width' in the \\[net\\] parameters"):
        net.width()


def test_bad_weights_files(files, tmp_path):
    net, good = files["net"], (files["dir"] / "small.weights").read_bytes()
    (tmp_path / "cut.weights").write_bytes(good[:2000])
    with pytest.raises(DarknetWeightsError, match=r"ends at byte 2000, inside block 1 \(\[convolutional\] at .*small"
                       r"\.cfg:15\): its weight \(16, 8, 3, 3\) needs bytes 1268\.\.5876"):  # fmt: skip
        load_darknet_weights(tmp_path / "cut.weights", net)
    (tmp_path / "long.weights").write_bytes(good + b"\0" * 8)
    with pytest.raises(DarknetWeightsError, match=r"8 bytes left after the last convolutional block"):
        load_darknet_weights(tmp_path / "long.weights", net)
    (tmp_path / "tiny.weights").write_bytes(good[:8])
    with pytest.raises(DarknetWeightsError, match="too short for darknet's header"):
        load_darknet_weights(tmp_path / "tiny.weights", net)


def test_wrong_input_size(run):
    model = run["model"]
    for shape in [(1, 3, 96, 96), (1, 3, 64, 32), (3, SIZE, SIZE), (1, 1, SIZE, SIZE)]:
        with pytest.raises(errors.UnexpectedShape, match="the cfg's \\[net\\] size"):
            model.forward(Tensor.new(np.zeros(shape, np.float32)))


def test_yolo_v3_example_main_and_report_as_written(files, run, tmp_path):
    """main.rs: ``darknet::parse_config(config)``, ``darknet.build_model(vb)`` over safetensors,
    the image tensor built as written, and report's per-row class pick and NMS."""
    from candlejax import Device, DType, safetensors
    from candlejax.models.object_detection import Bbox, non_maximum_suppression

    safetensors.save({k: Tensor.new(np.asarray(v)) for k, v in run["tensors"].items()}, tmp_path / "w.safetensors")
    vb = VarBuilder.from_mmaped_safetensors([tmp_path / "w.safetensors"], DType.F32, Device.Cpu)
    dn = darknet.parse_config(files["cfg"])
    model = dn.build_model(vb)
    (net_width, net_height) = (dn.width(), dn.height())
    data = (run["x"][0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    image = Tensor.from_vec(data.reshape(-1).tolist(), (net_width, net_height, 3), Device.Cpu).permute((2, 0, 1))
    image = image.unsqueeze(0).to_dtype(DType.F32) * (1.0 / 255.0)
    pred = model.forward(image).squeeze(0).to_device(Device.Cpu)
    with jax.default_matmul_precision("highest"):
        want = np.asarray(run["model"].forward(Tensor.new(data.transpose(2, 0, 1)[None] / np.float32(255))).jax)[0]
    np.testing.assert_allclose(np.asarray(pred.jax), want, rtol=1e-4, atol=1e-4)
    (npreds, pred_size) = pred.dims2()
    nclasses = pred_size - 5
    bboxes: list[list[Bbox]] = [[] for _ in range(nclasses)]
    for index in range(npreds):
        p = pred.get(index).to_vec1()
        confidence = p[4]
        if confidence > 0.5:
            class_index = 0
            for i in range(nclasses):
                if p[5 + i] > p[5 + class_index]:
                    class_index = i
            if p[class_index + 5] > 0.0:
                bboxes[class_index].append(Bbox(p[0] - p[2] / 2.0, p[1] - p[3] / 2.0, p[0] + p[2] / 2.0,
                                                p[1] + p[3] / 2.0, confidence, None))  # fmt: skip
    kept = sum(map(len, bboxes))
    non_maximum_suppression(bboxes, 0.4)
    assert kept > 0 and 0 < sum(map(len, bboxes)) <= kept
