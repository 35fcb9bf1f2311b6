"""Drawing detections on an image (Candle's yolo-v8 example ``report_detect`` / ``report_pose``).

requires: PIL.ImageDraw
provides: ``draw_detections``, ``COCO_SKELETON``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from candlejax.optional import require
from candlejax.vision._image import ImageError, check_image

# COCO's 17-keypoint skeleton (1-based pairs, as in Ultralytics and Candle's KP_CONNECTIONS).
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10),
    (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip

_PALETTE = ((255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
            (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
            (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
            (255, 149, 200), (255, 55, 199))  # fmt: skip


def draw_detections(img: Any, dets: Any, names: Sequence[str] | dict[int, str] | None = None, *,
                    kpt_conf: float = 0.5, line_width: int | None = None) -> Any:  # fmt: skip
    """Draw ``dets`` (a :class:`Detections`) on ``img`` ((3, H, W) u8 Tensor); returns a PIL image.

    Boxes with ``name score`` labels; keypoints with visibility above ``kpt_conf`` as dots, joined
    by the COCO skeleton when there are 17. A box with a NaN or infinite coordinate, or with
    ``x2 < x1`` / ``y2 < y1``, raises :class:`ImageError` naming the detection (Candle's example
    panics on those); boxes reaching far outside the image are clipped to it, and keypoints with a
    non-finite coordinate are not drawn.
    """
    require("PIL", "draw_detections")
    from PIL import Image, ImageDraw

    a = check_image(img, "draw_detections")
    im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))
    draw = ImageDraw.Draw(im)
    lw = line_width or max(round(sum(im.size) / 2 * 0.003), 2)
    boxes = np.asarray(dets.boxes, np.float64).reshape(-1, 4)
    for i, b in enumerate(boxes):
        if not np.isfinite(b).all():
            raise ImageError(f"draw_detections: detection {i} has a non-finite box {b.tolist()} (xyxy pixels)")
        if b[2] < b[0] or b[3] < b[1]:
            raise ImageError(f"draw_detections: detection {i} has x2 < x1 or y2 < y1: {b.tolist()} (xyxy expected)")
    w, h = im.size  # beyond the line width outside the image nothing shows: Pillow fails on huge values
    boxes = np.stack([boxes[:, [0, 2]].clip(-lw, w + lw), boxes[:, [1, 3]].clip(-lw, h + lw)], 2).reshape(-1, 4)
    for i in range(len(dets)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        c = int(dets.classes[i])
        color = _PALETTE[c % len(_PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=lw)
        name = names[c] if names is not None and c in (names if isinstance(names, dict) else range(len(names))) else c
        label = f"{name} {float(dets.scores[i]):.2f}"
        tb = draw.textbbox((x1, y1), label)
        th = tb[3] - tb[1] + 2
        draw.rectangle((x1, max(y1 - th, 0), x1 + tb[2] - tb[0] + 4, max(y1 - th, 0) + th), fill=color)
        draw.text((x1 + 2, max(y1 - th, 0)), label, fill=(255, 255, 255))
        if dets.keypoints is None:
            continue
        k = dets.keypoints[i]
        vis = k[:, 2] > kpt_conf if k.shape[1] > 2 else np.ones(len(k), bool)
        vis &= np.isfinite(k[:, :2]).all(1)
        if len(k) == 17:
            for p, q in COCO_SKELETON:
                if vis[p - 1] and vis[q - 1]:
                    draw.line((*k[p - 1, :2], *k[q - 1, :2]), fill=(51, 153, 255), width=lw)
        r = lw + 1
        for j in np.flatnonzero(vis):
            x, y = float(k[j, 0]), float(k[j, 1])
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(0, 255, 0))
    return im
