"""Non-maximum suppression with static shapes (runs under ``jax.jit``) and the ``Detections`` record.

requires: jax.lax (top_k, while_loop)
provides: ``nms``, ``nms_arrays``, ``Detections``

torchvision: ``ops.batched_nms(boxes, scores, classes, iou)``; Ultralytics:
``utils.nms.non_max_suppression`` (best class per box, class-offset boxes, ``max_det``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from candlejax import errors
from candlejax.tensor import unwrap

_MAX_WH = 7680.0  # Ultralytics' class offset for class-aware NMS


def _iou_matrix(b: Any) -> Any:
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = jnp.maximum(b[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(b[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


@partial(jax.jit, static_argnames=("max_det", "top_k", "agnostic"))
def nms_arrays(boxes: Any, scores: Any, classes: Any, conf: Any, iou: Any, *, max_det: int = 300, top_k: int = 1024,
               agnostic: bool = False) -> tuple[Any, Any]:  # fmt: skip
    """Greedy NMS on ``(N, 4)`` xyxy ``boxes``: returns ``(indices (max_det,), valid (max_det,))``.

    Only the ``top_k`` highest scores above ``conf`` are considered (Ultralytics' ``max_nms``); a box
    is dropped when its IoU with a kept, higher-scoring box of the same class (any class when
    ``agnostic``) is above ``iou``. Kept boxes come first, by descending score.
    """
    n = boxes.shape[0]
    k = min(top_k, n)
    s = jnp.where(scores > conf, scores, -jnp.inf)
    top_s, idx = lax.top_k(s, k)
    b = boxes[idx].astype(jnp.float32)
    if not agnostic:
        b = b + (classes[idx].astype(jnp.float32) * _MAX_WH)[:, None]
    pos = jnp.arange(k)
    over = ((_iou_matrix(b) > iou) & (pos[:, None] < pos[None, :])).astype(jnp.float32)  # [j, i]: j outscores i
    valid = jnp.isfinite(top_s)

    # Greedy NMS is the recursion keep[i] = valid[i] and no kept j < i overlaps i. Evaluating it for
    # all i at once and repeating until nothing changes reaches exactly the greedy result (after t
    # rounds every box whose chain of suppressors is shorter than t is final), in a few matrix-
    # vector products instead of k sequential steps.
    def body(state: Any) -> Any:
        keep, _, it = state
        return valid & ~((keep.astype(jnp.float32) @ over) > 0), keep, it + 1

    def cond(state: Any) -> Any:
        keep, prev, it = state
        return jnp.any(keep != prev) & (it <= k)

    keep, _, _ = lax.while_loop(cond, body, body((valid, valid, 0)))
    order = jnp.argsort(~keep, stable=True)[: min(max_det, k)]
    if max_det > k:
        order = jnp.concatenate([order, jnp.zeros(max_det - k, order.dtype)])
        ok = jnp.concatenate([keep[order[:k]], jnp.zeros(max_det - k, bool)])
    else:
        ok = keep[order]
    return idx[order], ok


def nms(boxes: Any, scores: Any, iou: float, classes: Any = None, *, conf: float = 0.0, max_det: int = 300,
        top_k: int = 1024) -> np.ndarray:  # fmt: skip
    """Indices of the boxes kept by NMS, by descending score (torchvision's ``ops.nms`` / ``batched_nms``)."""
    b, s = jnp.asarray(unwrap(boxes)), jnp.asarray(unwrap(scores))
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise errors.Msg(f"nms: boxes must be (N, 4) and scores (N,), got {errors.fmt_shape(b.shape)}"
                                   f" and {errors.fmt_shape(s.shape)}")  # fmt: skip
    c = jnp.zeros(b.shape[0], jnp.int32) if classes is None else jnp.asarray(unwrap(classes))
    idx, ok = nms_arrays(b, s, c, conf, iou, max_det=max_det, top_k=top_k, agnostic=classes is None)
    idx, ok = np.asarray(idx), np.asarray(ok)
    return idx[ok]


@dataclass
class Detections:
    """Post-processed detections of one image, in that image's pixels (numpy arrays).

    ``boxes`` (N, 4) xyxy f32, ``scores`` (N,) f32, ``classes`` (N,) int, ``keypoints`` (N, K, 3)
    (x, y, visibility) f32 or None. Candle's yolo-v8 example: ``Vec<Vec<Bbox<Vec<KeyPoint>>>>``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    keypoints: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __repr__(self) -> str:
        k = "" if self.keypoints is None else f", keypoints={errors.fmt_shape(self.keypoints.shape)}"
        return f"Detections(n={len(self)}, classes={sorted(set(self.classes.tolist()))}{k})"
