"""Loading Ultralytics YOLO weights and running detection (``yolo.load``, ``yolo.detect``).

requires: candlejax.models.yolo.model (the network), candlejax.vision (letterbox, NMS), candlejax.io.pth
provides: ``load``, ``detect``, ``pt_to_safetensors``
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.models.yolo.model import SCALES, SIZES, Multiples, YoloV8
from candlejax.models.yolo.naming import CANDLE_FIRST, ULTRALYTICS_FIRST, candle_to_ultralytics
from candlejax.nn import VarBuilder
from candlejax.tensor import float_arg, int_arg, unwrap, wrap
from candlejax.vision import Detections, as_image, letterbox, nms_arrays, scale_boxes, scale_keypoints
from candlejax.xla import XLA_CONVOLUTION_OPTIONS, OptionsJit

__all__ = ["detect", "load", "pt_to_safetensors"]


# ------------------------------------------------------------------------------------------------
# Loading: Ultralytics' (or Candle's) names, the architecture read from the file where it can be
def _infer(names: dict[str, tuple[int, ...]], src: str) -> dict[str, Any]:
    """version / which / task / num_classes / kpt of an Ultralytics state dict (or a file of Candle's
    yolo-v8 example), from its names and shapes."""
    if ULTRALYTICS_FIRST not in names and CANDLE_FIRST in names:
        names = {candle_to_ultralytics(k): v for k, v in names.items()}
    if ULTRALYTICS_FIRST not in names:
        raise errors.Msg(f"yolo.load: {src} has no YOLO tensors (no {ULTRALYTICS_FIRST}, Ultralytics' name, "
                         f"nor {CANDLE_FIRST}, Candle's)")  # fmt: skip
    version = "11" if any(k.startswith("model.10.m.0.attn.") for k in names) else "v8"
    h = 22 if version == "v8" else 23
    task = "pose" if f"model.{h}.cv4.0.2.weight" in names else "detect"
    nc = names[f"model.{h}.cv3.0.2.weight"][0] if f"model.{h}.cv3.0.2.weight" in names else None
    nk = names[f"model.{h}.cv4.0.2.weight"][0] if task == "pose" else None
    kpt = None if nk is None else (nk // 3, 3) if nk % 3 == 0 else (nk // 2, 2)  # (x, y[, visibility])
    c0, n2 = names["model.0.conv.weight"][0], len({k.split(".")[3] for k in names if k.startswith("model.2.m.")})
    which = next((w for w in SIZES if Multiples.of(w, version).ch(64) == c0
                  and Multiples.of(w, version).n_(3 if version == "v8" else 2) == n2), None)  # fmt: skip
    return {"version": version, "which": which, "task": task, "num_classes": nc, "kpt": kpt}


def _check(arg: Any, found: Any, what: str, src: str) -> Any:
    if arg is not None and found is not None and arg != found:
        pretty = {"which": lambda v: f"size {v!r}", "version": lambda v: f"version {v!r}"}.get(what, repr)
        raise errors.Msg(f"yolo.load: {src} holds weights for {pretty(found)}, not {pretty(arg)} "
                         f"(pass {what}={found!r}, or leave {what} out to read it from the file)")  # fmt: skip
    return found if arg is None else arg


def _read_pt(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """An Ultralytics ``.pt`` checkpoint (pickled modules) -> (state dict, facts), without running its code."""
    from candlejax.io import pth

    ckpt = pth.load_pickle(path, allow_objects=("ultralytics.", "torch.nn.modules."))
    rec = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else ckpt
    if rec is None or not hasattr(rec, "state"):
        raise errors.Msg(f"yolo.load: {path} is not an Ultralytics checkpoint (no 'model' module record)")
    sd = pth.module_state_dict(rec)
    st = rec.state if isinstance(rec.state, dict) else {}
    yaml = st.get("yaml") if isinstance(st.get("yaml"), dict) else {}
    names = st.get("names")
    names = [names[i] for i in sorted(names)] if isinstance(names, dict) else names
    facts: dict[str, Any] = {"names": names, "scale": yaml.get("scale"), "sppf_act": True,
                             "kpt_shape": _kpt_shape(st.get("kpt_shape") or yaml.get("kpt_shape"))}  # fmt: skip
    try:  # SiLU or Identity after SPPF's first conv, as the pickled module says
        mods = st["_modules"]["model"].state["_modules"]
        act = mods["9"].state["_modules"]["cv1"].state["_modules"]["act"]
        facts["sppf_act"] = not act.qualname.endswith("Identity")
    except (KeyError, AttributeError, TypeError):
        pass
    return sd, facts


def _kpt_shape(v: Any) -> tuple[int, int] | None:
    """A checkpoint's ``kpt_shape`` ([K, 2] or [K, 3]) as a tuple, None when absent or malformed."""
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v) and v[1] in (2, 3):
        return int(v[0]), int(v[1])
    return None


def load(path: str | os.PathLike[str], *, version: str | None = None, which: str | None = None,
         task: str | None = None, num_classes: int | None = None, names: Any = None,
         kpt_shape: tuple[int, int] | None = None, dtype: DType = DType.F32,
         device: Device | str | None = None) -> YoloV8:  # fmt: skip
    """A YOLOv8 / YOLO11 model from Ultralytics weights (``.pt`` checkpoint or ``.safetensors``), or
    from a safetensors file of Candle's yolo-v8 example (``yolov8n.safetensors``, Candle's names).

    What is not given (version ``v8``/``11``, size ``n``..``x``, task ``detect``/``pose``, class
    count, keypoint shape) is read from the tensor names and shapes; what is given must match the
    file. Class names come from a ``.pt`` file, else COCO's (80 classes) or ``person`` (1 class).
    The keypoint shape ``(K, 2|3)`` of a pose model comes from ``kpt_shape``, else from the ``.pt``
    file (or the metadata :func:`pt_to_safetensors` writes), else from the channel count: ``(K, 3)``
    when it divides by 3 (a ``(12, 2)`` model's 24 channels need ``kpt_shape=(12, 2)``).
    """
    p = errors.path_arg(path, "yolo.load")
    if not os.path.isfile(p):
        raise errors.Msg(f"yolo.load: no such file {p!r}")
    if which is not None and which not in SIZES:
        raise errors.Msg(f"yolo.load: unknown size which={which!r} (known: n, s, m, l, x)")
    if version is not None and version not in SCALES:
        raise errors.Msg(f"yolo.load: unknown version {version!r} (known: v8, 11)")
    facts: dict[str, Any] = {"names": None, "scale": None, "sppf_act": True, "kpt_shape": None}
    if p.endswith((".pt", ".pth")):
        sd, facts = _read_pt(p)
        vb = VarBuilder.from_tensors({k: v for k, v in sd.items()}, dtype, device)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
    else:
        vb = VarBuilder.from_mmaped_safetensors([p], dtype, device)
        from candlejax.io.safetensors import MmapedSafetensors

        st = MmapedSafetensors([p])
        shapes = {k: tuple(st.get(k).shape) for k in st.names()}
        md = st.metadata() or {}
        if "names" in md:  # written by pt_to_safetensors
            import json

            facts = {"names": json.loads(md["names"]), "scale": md.get("scale") or None,
                     "sppf_act": md.get("sppf_act", "True") == "True",
                     "kpt_shape": _kpt_shape(json.loads(md.get("kpt_shape") or "null"))}  # fmt: skip
    found = _infer(shapes, p)
    if found["which"] is None:
        found["which"] = facts.get("scale")
    version = _check(version, found["version"], "version", p)
    task = _check(task, found["task"], "task", p)
    nc = _check(num_classes, found["num_classes"], "num_classes", p)
    w = _check(which, found["which"], "which", p)
    if w is None:
        raise errors.Msg(f"yolo.load: cannot tell the size of {p}; pass which='n'|'s'|'m'|'l'|'x'")
    kpt = found["kpt"] or (17, 3)
    if task == "pose" and (kpt_shape is not None or facts["kpt_shape"] is not None):
        given = tuple(kpt_shape) if kpt_shape is not None else facts["kpt_shape"]
        if len(given) != 2 or given[1] not in (2, 3) or given[0] * given[1] != kpt[0] * kpt[1]:
            raise errors.Msg(f"yolo.load: kpt_shape {given} does not fit {p}, whose keypoint branch has "
                             f"{kpt[0] * kpt[1]} channels")  # fmt: skip
        kpt = (int(given[0]), int(given[1]))
    return YoloV8.load(vb, Multiples.of(w, version), nc, version=version, task=task, kpt=kpt,
                       names=names or facts.get("names"), which=w, sppf_act=facts["sppf_act"])  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Inference: letterbox, one compiled forward + NMS, un-letterbox
def _postprocess(raw: Any, nc: int, conf: Any, iou: Any, max_det: int, top_k: int) -> tuple[Any, ...]:
    p = raw[0].T  # (A, 4 + nc + extra)
    xy, wh = p[:, :2], p[:, 2:4]
    boxes = jnp.concatenate([xy - wh / 2, xy + wh / 2], 1)
    cls = p[:, 4 : 4 + nc]
    scores, classes = cls.max(1), cls.argmax(1)
    idx, ok = nms_arrays(boxes, scores, classes, conf, iou, max_det=max_det, top_k=top_k)
    return boxes[idx], scores[idx], classes[idx], p[idx, 4 + nc :], ok


def _predict_fn(model: YoloV8, x: Any, conf: Any, iou: Any, max_det: int, top_k: int) -> tuple[Any, ...]:
    raw = unwrap(model.forward(wrap(x.astype(jnp.float32) / 255.0)))
    return _postprocess(raw, model.num_classes, conf, iou, max_det, top_k)


# XLA's own convolutions: YNNPACK runs those with at most 64 output channels on one thread
# (YOLO11n-pose end to end: 71.6 -> 64.0 ms on 2 cores)
_predict = OptionsJit(_predict_fn, XLA_CONVOLUTION_OPTIONS, static_argnames=("max_det", "top_k"))


def imgsz_arg(imgsz: Any, where: str) -> int | tuple[int, int]:
    """``imgsz`` (an int, or an ``(h, w)`` pair of ints) checked, or ``InvalidArgument`` naming ``where``."""
    if isinstance(imgsz, tuple | list):
        if len(imgsz) != 2:
            raise errors.InvalidArgument(f"{where}: imgsz must be an int or an (h, w) pair of ints, got {imgsz!r:.60}")
        h, w = (int_arg(s, where, "imgsz") for s in imgsz)
        sides: int | tuple[int, int] = (h, w)
    else:
        h = w = int_arg(imgsz, where, "imgsz")
        sides = h
    if h <= 0 or w <= 0:
        raise errors.InvalidArgument(f"{where}: imgsz must be positive, got {imgsz!r}")
    return sides


def detect(model: YoloV8, img: Any, conf: float = 0.25, iou: float = 0.45, *, imgsz: int | tuple[int, int] = 640,
           max_det: int = 300, top_k: int = 30000) -> Detections:  # fmt: skip
    """Detect objects (and keypoints) in one image: a ``(3, H, W)`` u8 Tensor, a path, a PIL image
    or an ``(H, W, 3)`` uint8 array (:func:`candlejax.vision.as_image`).

    As Ultralytics' predictor: letterbox to ``imgsz`` (an int or ``(h, w)``, each side rounded up
    to a multiple of 32 as Ultralytics' ``check_imgsz``), RGB / 255, best class per anchor,
    class-aware NMS (``iou``) over the ``top_k`` best anchors above ``conf`` (Ultralytics'
    ``max_nms``), at most ``max_det`` detections, boxes and keypoints mapped back to the image's
    pixels. Forward and NMS run as one compiled program per letterboxed shape.
    """
    if not isinstance(model, YoloV8):
        raise errors.ArgumentType(f"yolo.detect(model, img) takes the YoloV8 first and the image second,"
                                  f" got ({type(model).__name__}, {type(img).__name__})")  # fmt: skip
    conf, iou = float_arg(conf, "yolo.detect", "conf"), float_arg(iou, "yolo.detect", "iou")
    imgsz = imgsz_arg(imgsz, "yolo.detect")
    img = as_image(img, "yolo.detect")
    sides = imgsz if isinstance(imgsz, tuple) else (imgsz, imgsz)
    size = tuple(-(-int(s) // 32) * 32 for s in sides)  # check_imgsz: up to a multiple of the largest stride
    lb_img, lb = letterbox(img, size)
    batch = unwrap(lb_img)[None]
    boxes, scores, classes, extra, ok = _predict(model, batch, jnp.float32(conf), jnp.float32(iou), max_det=max_det,
                                                 top_k=top_k)  # fmt: skip
    ok = np.asarray(ok)
    kpts = None
    if model.kpt_shape is not None:
        k, nd = model.kpt_shape
        kpts = scale_keypoints(np.asarray(extra)[ok].reshape(-1, k, nd), lb)
    return Detections(scale_boxes(np.asarray(boxes)[ok], lb), np.asarray(scores)[ok],
                      np.asarray(classes)[ok].astype(np.int64), kpts)  # fmt: skip


def pt_to_safetensors(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Convert an Ultralytics ``.pt`` checkpoint to safetensors once (Ultralytics names, f32).

    The file's metadata keeps what the names cannot tell: class names, size, SPPF activation and
    keypoint shape.
    """
    import json

    from candlejax.io.safetensors import save

    sd, facts = _read_pt(os.fspath(src))
    meta = {"names": json.dumps(facts["names"]), "scale": str(facts["scale"] or ""),
            "sppf_act": str(facts["sppf_act"]), "kpt_shape": json.dumps(facts["kpt_shape"])}  # fmt: skip
    save({k: np.asarray(v, np.float32) if v.dtype.kind == "f" else v for k, v in sd.items()}, dst, meta)
