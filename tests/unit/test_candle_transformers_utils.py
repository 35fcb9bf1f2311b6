"""candle-transformers' ``object_detection`` (boxes, IoU, NMS, soft-NMS) and ``utils`` (causal
masks, repeat_kv, repeat penalty), checked against a literal port of Candle's loops (f32), torch
and candlejax's own array NMS."""

import math

import numpy as np
import pytest
import torch

from candlejax import DType, errors
from candlejax.models import object_detection as od
from candlejax.models import utils

F32 = np.float32


def _candle_iou(a, b):
    """Candle's iou line by line, in f32."""
    one = F32(1)
    a1 = (F32(a[2]) - F32(a[0]) + one) * (F32(a[3]) - F32(a[1]) + one)
    a2 = (F32(b[2]) - F32(b[0]) + one) * (F32(b[3]) - F32(b[1]) + one)
    ix0, ix1 = max(F32(a[0]), F32(b[0])), min(F32(a[2]), F32(b[2]))
    iy0, iy1 = max(F32(a[1]), F32(b[1])), min(F32(a[3]), F32(b[3]))
    inter = max(ix1 - ix0 + one, F32(0)) * max(iy1 - iy0 + one, F32(0))
    return inter / (a1 + a2 - inter)


def _candle_nms(rows, threshold):
    """Candle's swap-and-truncate loop over (x0, y0, x1, y1, conf) rows."""
    rows = sorted(rows, key=lambda r: -r[4])
    cur = 0
    for i in range(len(rows)):
        if not any(_candle_iou(rows[p], rows[i]) > F32(threshold) for p in range(cur)):
            rows[cur], rows[i] = rows[i], rows[cur]
            cur += 1
    return rows[:cur]


def _boxes(seed, n):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 60, (n, 2)).astype(F32)
    wh = rng.uniform(5, 30, (n, 2)).astype(F32)
    conf = rng.permutation(n).astype(F32) / n + F32(0.01)
    return [(float(x), float(y), float(x + w), float(y + h), float(c)) for (x, y), (w, h), c in zip(xy, wh, conf)]


def test_iou_counts_edge_pixels():
    a, b = od.Bbox(0, 0, 9, 9, 1.0), od.Bbox(5, 0, 14, 9, 1.0)
    assert od.iou(a, b) == pytest.approx(50 / 150)  # 10x10 boxes sharing a 5x10 strip
    assert od.iou(a, od.Bbox(20, 20, 30, 30, 1.0)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_candles_loop(seed):
    classes = [_boxes(seed * 10 + c, 40) for c in range(3)]
    bboxes = [[od.Bbox(*r, data=[od.KeyPoint(r[0], r[1], 1.0)]) for r in rows] for rows in classes]
    od.non_maximum_suppression(bboxes, 0.3)
    for got, rows in zip(bboxes, classes):
        want = _candle_nms(list(rows), 0.3)
        assert [(b.xmin, b.ymin, b.xmax, b.ymax, b.confidence) for b in got] == want
        assert all(b.data[0].x == b.xmin for b in got)  # data rides along
        assert 0 < len(got) < len(rows)


def test_soft_nms_decays_overlaps_from_their_original_confidence():
    rows = _boxes(7, 30)
    bboxes = [[od.Bbox(*r) for r in rows]]
    od.soft_non_maximum_suppression(bboxes, None, None, None)  # Candle's defaults 0.5, 0.1, 0.5
    srt = sorted(rows, key=lambda r: -r[4])
    want = [F32(r[4]) for r in srt]
    for i in range(len(srt)):
        for j in range(i + 1, len(srt)):
            v = _candle_iou(srt[i], srt[j])
            if v > F32(0.5):
                want[j] = F32(srt[j][4]) * np.exp(-v * v / F32(0.5), dtype=F32)
    want = [0.0 if w < F32(0.1) else float(w) for w in want]
    assert [b.confidence for b in bboxes[0]] == want
    assert len(bboxes[0]) == len(rows)  # soft-NMS keeps every box


def test_nms_errors():
    with pytest.raises(errors.Error, match="one list of Bbox per class"):
        od.non_maximum_suppression([od.Bbox(0, 0, 1, 1, 0.5)], 0.5)
    with pytest.raises(errors.Error, match="NaN confidence"):
        od.non_maximum_suppression([[od.Bbox(0, 0, 1, 1, math.nan)]], 0.5)


@pytest.mark.parametrize("seq_len,index_pos", [(1, 0), (4, 0), (3, 5), (1, 7)])
def test_build_causal_mask(seq_len, index_pos):
    m = utils.build_causal_mask(seq_len, index_pos)
    assert m.dtype == DType.U8 and m.shape == (seq_len, index_pos + seq_len)
    want = [[int(j > index_pos + i) for j in range(index_pos + seq_len)] for i in range(seq_len)]
    assert m.to_vec2() == want


@pytest.mark.parametrize("tgt,offset,sw", [(4, 0, None), (3, 2, None), (5, 3, 2), (1, 6, 3)])
def test_build_additive_causal_mask(tgt, offset, sw):
    m = utils.build_additive_causal_mask(tgt, offset, sw, None, DType.F32)
    assert m.shape == (1, 1, tgt, tgt + offset)
    keep = np.array([[j <= i + offset and (sw is None or j + sw >= i + offset) for j in range(tgt + offset)]
                     for i in range(tgt)])  # fmt: skip
    np.testing.assert_array_equal(np.asarray(m)[0, 0], np.where(keep, 0.0, -np.inf))
    assert utils.build_additive_causal_mask(tgt, offset, sw, dtype=DType.BF16).dtype == DType.BF16
    with pytest.raises(errors.Error, match="float type"):
        utils.build_additive_causal_mask(2, 0, None, None, DType.U8)
    with pytest.raises(errors.Error, match="tgt must be an int"):
        utils.build_additive_causal_mask(-1, 0)


def test_repeat_kv_and_penalty_are_candles():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(F32)
    got = np.asarray(utils.repeat_kv(x, 2))
    np.testing.assert_array_equal(got, torch.from_numpy(x).repeat_interleave(2, dim=1).numpy())
    logits = np.array([1.0, -2.0, 3.0], F32)
    np.testing.assert_allclose(np.asarray(utils.apply_repeat_penalty(logits, 2.0, [0, 1, 1])), [0.5, -4.0, 3.0])
