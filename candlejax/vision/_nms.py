"""Non-maximum suppression with static shapes (runs under ``jax.jit``) and the ``Detections`` record.

requires: jax.lax (top_k, while_loop, dynamic_slice)
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
_MAX_NMS = 30000  # Ultralytics' max_nms: at most this many best candidates enter NMS


def _iou(a: Any, b: Any) -> Any:
    """``(m, n)`` IoU of xyxy boxes ``a`` (m, 4) and ``b`` (n, 4), in torchvision's f32 arithmetic."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _resolve_block(live: Any, over: Any) -> Any:
    """Greedy NMS inside one block: ``keep[i] = live[i] and no kept j < i overlaps i``.

    ``over[j, i]`` is True when j outscores i and overlaps it. Evaluating the recursion for every
    box at once and repeating until nothing changes reaches exactly the greedy result (after t
    rounds every box whose chain of suppressors is shorter than t is final), in a few matrix-vector
    products instead of one sequential step per box.
    """
    over = over.astype(jnp.float32)

    def body(state: Any) -> Any:
        keep, _, it = state
        return live & ~((keep.astype(jnp.float32) @ over) > 0), keep, it + 1

    def cond(state: Any) -> Any:
        keep, prev, it = state
        return jnp.any(keep != prev) & (it <= live.shape[0])

    keep, _, _ = lax.while_loop(cond, body, body((live, live, 0)))
    return keep


@partial(jax.jit, static_argnames=("max_det", "top_k", "agnostic", "block"))
def nms_arrays(boxes: Any, scores: Any, classes: Any, conf: Any, iou: Any, *, max_det: int = 300,
               top_k: int = _MAX_NMS, agnostic: bool = False, block: int = 512) -> tuple[Any, Any]:  # fmt: skip
    """Greedy NMS on ``(N, 4)`` xyxy ``boxes``: returns ``(indices (max_det,), valid (max_det,))``.

    Boxes scoring above ``conf`` are candidates, at most the ``top_k`` best (Ultralytics'
    ``max_nms``); a candidate is dropped when its IoU with a kept, higher-scoring box of the same
    class (any class when ``agnostic``) is above ``iou``. Equal scores keep their index order. Kept
    boxes come first, by descending score; the first ``max_det`` are returned.

    The candidates are sorted once and visited ``block`` at a time: each block is checked against
    the boxes kept so far (a fixed ``max_det`` buffer), resolved internally, and its kept boxes are
    appended; the loop stops once ``max_det`` boxes are kept or the candidates run out.
    """
    if max_det < 0 or top_k < 0 or block < 1:
        raise errors.Msg(f"nms: max_det and top_k must be >= 0 and block >= 1, got max_det={max_det},"
                         f" top_k={top_k}, block={block}")  # fmt: skip
    n = boxes.shape[0]
    k = min(top_k, n)
    if k == 0 or max_det == 0:
        return jnp.zeros(max_det, jnp.int32), jnp.zeros(max_det, bool)
    bsz = max(1, min(block, k))
    padded = -(-k // bsz) * bsz
    cand = scores > conf
    key = jnp.where(cand, scores, -jnp.inf)
    n_cand = jnp.minimum(jnp.sum(cand, dtype=jnp.int32), k)
    # candidates first, in greedy order; a full sort only when they do not fit in one block
    if k > bsz:
        idx = lax.cond(n_cand <= bsz, lambda: jnp.pad(lax.top_k(key, bsz)[1], (0, k - bsz)),
                       lambda: lax.top_k(key, k)[1])  # fmt: skip
    else:
        idx = lax.top_k(key, k)[1]
    b = boxes[idx].astype(jnp.float32)
    if not agnostic:
        b = b + (classes[idx].astype(jnp.float32) * _MAX_WH)[:, None]
    b = jnp.pad(b, ((0, padded - k), (0, 0)))
    lane = jnp.arange(bsz, dtype=jnp.int32)
    later = lane[:, None] < lane[None, :]  # [j, i]: j comes before i
    slot = jnp.arange(max_det, dtype=jnp.int32)

    def cond(state: Any) -> Any:
        start, count, _, _ = state
        return (count < max_det) & (start < n_cand)

    def body(state: Any, first: bool = False) -> Any:
        start, count, kept_b, kept_i = state
        bb = lax.dynamic_slice_in_dim(b, start, bsz)
        pos = start + lane
        live = pos < n_cand
        if not first:  # dropped by a box kept in an earlier block
            live &= ~jnp.any((_iou(kept_b, bb) > iou) & (slot < count)[:, None], 0)  # (max_det, bsz)
        keep = _resolve_block(live, (_iou(bb, bb) > iou) & later)
        dest = jnp.where(keep, count + jnp.cumsum(keep, dtype=jnp.int32) - 1, max_det)  # past the buffer: dropped
        kept_b = kept_b.at[dest].set(bb, mode="drop")
        kept_i = kept_i.at[dest].set(pos, mode="drop")
        return start + bsz, count + jnp.sum(keep, dtype=jnp.int32), kept_b, kept_i

    init = (jnp.int32(0), jnp.int32(0), jnp.zeros((max_det, 4), jnp.float32), jnp.zeros(max_det, jnp.int32))
    _, count, _, kept_i = lax.while_loop(cond, body, body(init, first=True))
    ok = slot < count
    return jnp.where(ok, idx[kept_i], 0), ok


def nms(boxes: Any, scores: Any, iou: float, classes: Any = None, *, conf: float | None = None, max_det: int = 300,
        top_k: int = _MAX_NMS) -> np.ndarray:  # fmt: skip
    """Indices of the boxes kept by NMS, by descending score (torchvision's ``ops.nms`` / ``batched_nms``).

    At most ``max_det`` boxes are returned, out of the ``top_k`` best boxes scoring above ``conf``
    (every box when ``None``; Ultralytics' ``conf`` / ``max_det`` / ``max_nms``); see :func:`nms_arrays`.
    """
    b, s = jnp.asarray(unwrap(boxes)), jnp.asarray(unwrap(scores))
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise errors.Msg(f"nms: boxes must be (N, 4) and scores (N,), got {errors.fmt_shape(b.shape)}"
                                   f" and {errors.fmt_shape(s.shape)}")  # fmt: skip
    c = jnp.zeros(b.shape[0], jnp.int32) if classes is None else jnp.asarray(unwrap(classes))
    t = -jnp.inf if conf is None else conf
    idx, ok = nms_arrays(b, s, c, t, iou, max_det=max_det, top_k=top_k, agnostic=classes is None)
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
