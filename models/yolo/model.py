"""The YOLOv8 / YOLO11 network (detect and pose heads).

Papers/code: Ultralytics YOLOv8 and YOLO11 (https://github.com/ultralytics/ultralytics,
``nn/modules/{conv,block,head}.py``). Classes follow Candle's ``candle-examples/examples/yolo-v8/
model.rs`` (``Multiples``, ``ConvBlock``, ``C2f``, ``Sppf``, ``Dfl``, ``DarkNet``, ``YoloV8Neck``,
``DetectionHead``, ``PoseHead``, ``YoloV8``, ``YoloV8Pose``); tensor names are Ultralytics' own
(``model.0.conv.weight``, ``model.22.cv2.0.0.bn.running_mean``, ...), so an Ultralytics state dict
loads as it is; ``YoloV8.load`` also reads the names of Candle's example files (``net.b1.0.conv.weight``,
:mod:`~candlejax.models.yolo.naming`). BatchNorm (eps 1e-3) is folded into each conv at load time. Loading files and
detection: :mod:`candlejax.models.yolo` (``load``, ``detect``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.models.yolo.naming import ultralytics_view
from candlejax.nn import Conv2d, Conv2dConfig, Module, batch_norm, conv2d, conv2d_no_bias, ops
from candlejax.tensor import Tensor

__all__ = [
    "C2PSA", "C2f", "C3k", "C3k2", "COCO_NAMES", "ConvBlock", "DarkNet", "DetectionHead", "Dfl", "Multiples",
    "PSABlock", "PoseHead", "SCALES", "SIZES", "Sppf", "YoloV8", "YoloV8Neck", "YoloV8Pose",
]  # fmt: skip

# Candle's yolo-v8 example (coco_classes.rs): the 80 COCO names in darknet spelling.
COCO_NAMES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

SIZES = ("n", "s", "m", "l", "x")


@dataclass(frozen=True)
class Multiples:
    """Candle's ``Multiples``: depth and width gains, ``ratio`` = max channels / 512 (Ultralytics' scales)."""

    depth: float
    width: float
    ratio: float

    @staticmethod
    def of(which: str, version: str = "v8") -> Multiples:
        """The scale ``which`` (``n``, ``s``, ``m``, ``l``, ``x``) of ``version`` (``v8`` or ``11``)."""
        table = SCALES.get(version)
        if table is None:
            raise errors.Msg(f"yolo: unknown version {version!r} (known: v8, 11)")
        if which not in table:
            raise errors.Msg(f"yolo: unknown size --which {which!r} (known: n, s, m, l, x)")
        return table[which]

    @staticmethod
    def n() -> Multiples:
        """Candle's ``Multiples::n()``: depth 0.33, width 0.25, ratio 2.0."""
        return Multiples(0.33, 0.25, 2.0)

    @staticmethod
    def s() -> Multiples:
        """Candle's ``Multiples::s()``: depth 0.33, width 0.50, ratio 2.0."""
        return Multiples(0.33, 0.50, 2.0)

    @staticmethod
    def m() -> Multiples:
        """Candle's ``Multiples::m()``: depth 0.67, width 0.75, ratio 1.5."""
        return Multiples(0.67, 0.75, 1.5)

    @staticmethod
    def l() -> Multiples:  # noqa: E743 - Candle's name
        """Candle's ``Multiples::l()``: depth 1.00, width 1.00, ratio 1.0."""
        return Multiples(1.00, 1.00, 1.0)

    @staticmethod
    def x() -> Multiples:
        """Candle's ``Multiples::x()``: depth 1.00, width 1.25, ratio 1.0."""
        return Multiples(1.00, 1.25, 1.0)


    def ch(self, c: int) -> int:
        """Ultralytics' ``make_divisible(min(c, max_channels) * width, 8)``."""
        return math.ceil(min(c, 512 * self.ratio) * self.width / 8) * 8

    def n_(self, n: int) -> int:
        """The number of repeats of a block: ``n`` scaled by the depth multiple (at least 1)."""
        return max(round(n * self.depth), 1) if n > 1 else n

    def filters(self) -> tuple[int, int, int]:
        """Channels of the three feature maps (P3, P4, P5) the head reads."""
        return self.ch(256), self.ch(512), self.ch(1024)


#: YOLO version -> size letter -> the depth/width/max-channel multiples of Ultralytics' yaml
SCALES = {
    "v8": {k: getattr(Multiples, k)() for k in SIZES},
    "11": {"n": Multiples(0.50, 0.25, 2.0), "s": Multiples(0.50, 0.50, 2.0), "m": Multiples(0.50, 1.00, 1.0),
           "l": Multiples(1.00, 1.00, 1.0), "x": Multiples(1.00, 1.50, 1.0)},
}  # fmt: skip


def _seq(mods: list[Any], x: Any) -> Any:
    for m in mods:
        x = m.forward(x)
    return x


class ConvBlock(Module):
    """Ultralytics ``Conv``: conv (BatchNorm folded in) then SiLU (``act=False``: none)."""

    def __init__(self, conv: Conv2d, act: bool = True):
        self.conv = conv
        self.act = act

    @staticmethod
    def load(vb: Any, c1: int, c2: int, k: int, s: int = 1, p: int | None = None, g: int = 1,
             act: bool = True) -> ConvBlock:  # fmt: skip
        """candle-examples' ``ConvBlock::load``: ``conv`` and ``bn`` (or a checkpoint with the norm fused into
        ``conv``)."""
        cfg = Conv2dConfig(padding=k // 2 if p is None else p, stride=s, groups=g)
        if not vb.contains_tensor("bn.weight") and vb.contains_tensor("conv.bias"):  # a fused checkpoint
            return ConvBlock(conv2d(c1, c2, k, cfg, vb.pp("conv")), act)
        conv = conv2d_no_bias(c1, c2, k, cfg, vb.pp("conv"))
        return ConvBlock(conv.absorb_bn(batch_norm(c2, 1e-3, vb.pp("bn"))), act)

    def forward(self, xs: Any) -> Any:
        """Convolution and batch norm, then SiLU when ``act``: ``(B, c1, H, W)`` in, ``(B, c2, H/s, W/s)`` out."""
        ys = self.conv.forward(xs)
        return ops.silu(ys) if self.act else ys


class Bottleneck(Module):
    """Two convs with an optional residual (``c1 == c2 and shortcut``); hidden ``int(c2 * e)``."""

    def __init__(self, cv1: ConvBlock, cv2: ConvBlock, residual: bool):
        self.cv1, self.cv2, self.residual = cv1, cv2, residual

    @staticmethod
    def load(vb: Any, c1: int, c2: int, shortcut: bool, e: float = 1.0) -> Bottleneck:
        c_ = int(c2 * e)
        return Bottleneck(ConvBlock.load(vb.pp("cv1"), c1, c_, 3), ConvBlock.load(vb.pp("cv2"), c_, c2, 3),
                          shortcut and c1 == c2)  # fmt: skip

    def forward(self, xs: Any) -> Any:
        ys = self.cv2.forward(self.cv1.forward(xs))
        return xs + ys if self.residual else ys


class C2f(Module):
    """CSP bottleneck with two convs (``C2f``): split, ``n`` blocks each feeding the next, concat all."""

    def __init__(self, cv1: ConvBlock, cv2: ConvBlock, m: list[Any]):
        self.cv1, self.cv2, self.m = cv1, cv2, m

    @staticmethod
    def load(vb: Any, c1: int, c2: int, n: int, shortcut: bool) -> C2f:
        """candle-examples' ``C2f::load(vb, c1, c2, n, shortcut)``: ``cv1``, ``cv2`` and the ``m`` bottlenecks."""
        c = int(c2 * 0.5)
        m = [Bottleneck.load(vb.pp(f"m.{i}"), c, c, shortcut) for i in range(n)]
        return C2f(ConvBlock.load(vb.pp("cv1"), c1, 2 * c, 1), ConvBlock.load(vb.pp("cv2"), (2 + n) * c, c2, 1), m)

    def forward(self, xs: Any) -> Any:
        """``(B, c1, H, W)`` in, ``(B, c2, H, W)`` out."""
        ys = list(self.cv1.forward(xs).chunk(2, 1))
        for m in self.m:
            ys.append(m.forward(ys[-1]))
        return self.cv2.forward(Tensor.cat(ys, 1))


class C3k(Module):
    """``C3k``: CSP with three convs and ``n`` 3x3 bottlenecks on half the channels."""

    def __init__(self, cv1: ConvBlock, cv2: ConvBlock, cv3: ConvBlock, m: list[Bottleneck]):
        self.cv1, self.cv2, self.cv3, self.m = cv1, cv2, cv3, m

    @staticmethod
    def load(vb: Any, c1: int, c2: int, n: int, shortcut: bool) -> C3k:
        """``cv1``, ``cv2``, ``cv3`` and the ``m`` bottlenecks under ``vb`` (Ultralytics' ``C3k``)."""
        c_ = int(c2 * 0.5)
        m = [Bottleneck.load(vb.pp(f"m.{i}"), c_, c_, shortcut) for i in range(n)]
        return C3k(ConvBlock.load(vb.pp("cv1"), c1, c_, 1), ConvBlock.load(vb.pp("cv2"), c1, c_, 1),
                   ConvBlock.load(vb.pp("cv3"), 2 * c_, c2, 1), m)  # fmt: skip

    def forward(self, xs: Any) -> Any:
        """``(B, c1, H, W)`` in, ``(B, c2, H, W)`` out."""
        return self.cv3.forward(Tensor.cat([_seq(self.m, self.cv1.forward(xs)), self.cv2.forward(xs)], 1))


class C3k2(C2f):
    """YOLO11's ``C3k2``: a ``C2f`` whose blocks are ``C3k`` (``c3k``) or half-width bottlenecks."""

    @staticmethod
    def load(vb: Any, c1: int, c2: int, n: int, shortcut: bool = True, c3k: bool = False,  # type: ignore[override]
             e: float = 0.5) -> C3k2:  # fmt: skip
        """A ``C2f`` whose inner blocks are ``C3k`` when ``c3k`` (Ultralytics' ``C3k2``)."""
        c = int(c2 * e)
        m = [C3k.load(vb.pp(f"m.{i}"), c, c, 2, shortcut) if c3k else Bottleneck.load(vb.pp(f"m.{i}"), c, c, shortcut,
             0.5) for i in range(n)]  # fmt: skip
        return C3k2(ConvBlock.load(vb.pp("cv1"), c1, 2 * c, 1), ConvBlock.load(vb.pp("cv2"), (2 + n) * c, c2, 1), m)


class Sppf(Module):
    """Spatial pyramid pooling, fast: three chained ``k x k`` stride-1 max-pools, concatenated."""

    def __init__(self, cv1: ConvBlock, cv2: ConvBlock, k: int):
        self.cv1, self.cv2, self.k = cv1, cv2, k

    @staticmethod
    def load(vb: Any, c1: int, c2: int, k: int = 5, act: bool = True) -> Sppf:
        """``act``: SiLU after ``cv1`` (as released; Ultralytics >= 8.4 builds new models without it)."""
        c_ = c1 // 2
        return Sppf(ConvBlock.load(vb.pp("cv1"), c1, c_, 1, act=act), ConvBlock.load(vb.pp("cv2"), c_ * 4, c2, 1), k)

    def forward(self, xs: Any) -> Any:
        """Spatial pyramid pooling (three chained max pools): ``(B, c1, H, W)`` in, ``(B, c2, H, W)`` out."""
        p = self.k // 2
        ys = [self.cv1.forward(xs)]
        for _ in range(3):
            ys.append(ys[-1].pad_with_same(2, p, p).pad_with_same(3, p, p).max_pool2d_with_stride(self.k, 1))
        return self.cv2.forward(Tensor.cat(ys, 1))


class Attention(Module):
    """YOLO11's area attention over all positions: ``qkv`` 1x1 conv, softmax, plus a depthwise ``pe`` conv."""

    def __init__(self, qkv: ConvBlock, proj: ConvBlock, pe: ConvBlock, num_heads: int, key_dim: int, head_dim: int):
        self.qkv, self.proj, self.pe = qkv, proj, pe
        self.num_heads, self.key_dim, self.head_dim = num_heads, key_dim, head_dim

    @staticmethod
    def load(vb: Any, dim: int, num_heads: int, attn_ratio: float = 0.5) -> Attention:
        head_dim = dim // num_heads
        key_dim = int(head_dim * attn_ratio)
        h = dim + key_dim * num_heads * 2
        qkv = ConvBlock.load(vb.pp("qkv"), dim, h, 1, act=False)
        proj = ConvBlock.load(vb.pp("proj"), dim, dim, 1, act=False)
        pe = ConvBlock.load(vb.pp("pe"), dim, dim, 3, 1, g=dim, act=False)
        return Attention(qkv, proj, pe, num_heads, key_dim, head_dim)

    def forward(self, xs: Any) -> Any:
        b, c, h, w = xs.dims4()
        nh, kd, hd = self.num_heads, self.key_dim, self.head_dim
        qkv = self.qkv.forward(xs).reshape((b, nh, 2 * kd + hd, h * w))
        q, k, v = qkv.narrow(2, 0, kd), qkv.narrow(2, kd, kd), qkv.narrow(2, 2 * kd, hd)
        attn = ops.softmax_last_dim((q * (kd**-0.5)).transpose(2, 3).matmul(k))  # (b, nh, N, N)
        ys = v.matmul(attn.transpose(2, 3)).reshape((b, c, h, w)) + self.pe.forward(v.reshape((b, c, h, w)))
        return self.proj.forward(ys)


class PSABlock(Module):
    """Attention then a 2x-wide conv feed-forward, both residual."""

    def __init__(self, attn: Attention, ffn: list[ConvBlock]):
        self.attn, self.ffn = attn, ffn

    @staticmethod
    def load(vb: Any, c: int, num_heads: int) -> PSABlock:
        """``attn`` and ``ffn`` under ``vb`` (Ultralytics' ``PSABlock``)."""
        ffn = [ConvBlock.load(vb.pp("ffn.0"), c, 2 * c, 1), ConvBlock.load(vb.pp("ffn.1"), 2 * c, c, 1, act=False)]
        return PSABlock(Attention.load(vb.pp("attn"), c, num_heads), ffn)

    def forward(self, xs: Any) -> Any:
        """``xs + attn(xs)``, then ``+ ffn``: ``(B, c, H, W)`` in and out."""
        xs = xs + self.attn.forward(xs)
        return xs + _seq(self.ffn, xs)


class C2PSA(Module):
    """YOLO11's ``C2PSA``: half the channels go through ``n`` ``PSABlock``s."""

    def __init__(self, cv1: ConvBlock, cv2: ConvBlock, m: list[PSABlock], c: int):
        self.cv1, self.cv2, self.m, self.c = cv1, cv2, m, c

    @staticmethod
    def load(vb: Any, c1: int, n: int) -> C2PSA:
        """``cv1``, ``cv2`` and the ``m`` PSA blocks under ``vb`` (Ultralytics' ``C2PSA``)."""
        c = c1 // 2
        m = [PSABlock.load(vb.pp(f"m.{i}"), c, max(c // 64, 1)) for i in range(n)]
        return C2PSA(ConvBlock.load(vb.pp("cv1"), c1, 2 * c, 1), ConvBlock.load(vb.pp("cv2"), 2 * c, c1, 1), m, c)

    def forward(self, xs: Any) -> Any:
        """``(B, c1, H, W)`` in, ``(B, c1, H, W)`` out."""
        a, b = self.cv1.forward(xs).chunk(2, 1)
        return self.cv2.forward(Tensor.cat([a, _seq(self.m, b)], 1))


def _csp(vb: Any, version: str, m: Multiples, c1: int, c2: int, n: int, shortcut: bool, c3k: bool = False,
         e: float = 0.5) -> Any:  # fmt: skip
    if version == "v8":
        return C2f.load(vb, c1, c2, m.n_(n), shortcut)
    return C3k2.load(vb, c1, c2, m.n_(n), True, c3k or m.width >= 1.0, e)  # m/l/x use C3k blocks everywhere


class DarkNet(Module):
    """Backbone (Ultralytics layers 0-9, YOLO11 also 10): returns the P3, P4, P5 feature maps."""

    def __init__(self, layers: list[Any]):
        self.layers = layers

    @staticmethod
    def load(vb: Any, m: Multiples, version: str = "v8", sppf_act: bool = True) -> DarkNet:
        """candle-examples' ``DarkNet::load(vb, m)``: the backbone ``model.0`` .. ``model.9`` (``model.10`` for
        YOLO11)."""
        c, v8 = m.ch, version == "v8"
        e = 0.5 if v8 else 0.25
        L = [
            ConvBlock.load(vb.pp("model.0"), 3, c(64), 3, 2, 1),
            ConvBlock.load(vb.pp("model.1"), c(64), c(128), 3, 2, 1),
            _csp(vb.pp("model.2"), version, m, c(128), c(128 if v8 else 256), 3 if v8 else 2, True, e=e),
            ConvBlock.load(vb.pp("model.3"), c(128 if v8 else 256), c(256), 3, 2, 1),
            _csp(vb.pp("model.4"), version, m, c(256), c(256 if v8 else 512), 6 if v8 else 2, True, e=e),
            ConvBlock.load(vb.pp("model.5"), c(256 if v8 else 512), c(512), 3, 2, 1),
            _csp(vb.pp("model.6"), version, m, c(512), c(512), 6 if v8 else 2, True, c3k=True),
            ConvBlock.load(vb.pp("model.7"), c(512), c(1024), 3, 2, 1),
            _csp(vb.pp("model.8"), version, m, c(1024), c(1024), 3 if v8 else 2, True, c3k=True),
            Sppf.load(vb.pp("model.9"), c(1024), c(1024), 5, sppf_act),
        ]  # fmt: skip
        if not v8:
            L.append(C2PSA.load(vb.pp("model.10"), c(1024), m.n_(2)))
        return DarkNet(L)

    def forward(self, xs: Any) -> tuple[Any, Any, Any]:
        """``(B, 3, H, W)`` in, the ``(P3, P4, P5)`` feature maps out."""
        feats = []
        for layer in self.layers:
            xs = layer.forward(xs)
            feats.append(xs)
        return feats[4], feats[6], xs


class YoloV8Neck(Module):
    """The PAN neck (Ultralytics layers 10-21, YOLO11 11-22): top-down then bottom-up fusion."""

    def __init__(self, n1: Any, n2: Any, n3: ConvBlock, n4: Any, n5: ConvBlock, n6: Any):
        self.n1, self.n2, self.n3, self.n4, self.n5, self.n6 = n1, n2, n3, n4, n5, n6

    @staticmethod
    def load(vb: Any, m: Multiples, version: str = "v8") -> YoloV8Neck:
        """candle-examples' ``YoloV8Neck::load(vb, m)``: the neck ``model.10`` .. ``model.21`` (shifted for YOLO11)."""
        c, o = m.ch, 0 if version == "v8" else 1
        c_p3, n = c(256 if o == 0 else 512), 3 if o == 0 else 2  # YOLO11's P3 block is twice as wide
        sc = version != "v8"  # YOLO11's C3k2 keep their residuals in the neck, YOLOv8's C2f do not
        return YoloV8Neck(
            _csp(vb.pp(f"model.{12 + o}"), version, m, c(1024) + c(512), c(512), n, sc),
            _csp(vb.pp(f"model.{15 + o}"), version, m, c(512) + c_p3, c(256), n, sc),
            ConvBlock.load(vb.pp(f"model.{16 + o}"), c(256), c(256), 3, 2, 1),
            _csp(vb.pp(f"model.{18 + o}"), version, m, c(256) + c(512), c(512), n, sc),
            ConvBlock.load(vb.pp(f"model.{19 + o}"), c(512), c(512), 3, 2, 1),
            _csp(vb.pp(f"model.{21 + o}"), version, m, c(512) + c(1024), c(1024), n, sc, c3k=True),
        )  # fmt: skip

    def forward(self, p3: Any, p4: Any, p5: Any) -> tuple[Any, Any, Any]:
        """The backbone's ``(P3, P4, P5)`` in, the three fused feature maps out."""
        def up(t: Any) -> Any:
            _, _, h, w = t.dims4()
            return t.upsample_nearest2d(2 * h, 2 * w)

        x = self.n1.forward(Tensor.cat([up(p5), p4], 1))
        h1 = self.n2.forward(Tensor.cat([up(x), p3], 1))
        h2 = self.n4.forward(Tensor.cat([self.n3.forward(h1), x], 1))
        h3 = self.n6.forward(Tensor.cat([self.n5.forward(h2), p5], 1))
        return h1, h2, h3


class Dfl(Module):
    """Distribution focal loss decoding: expected value of a softmax over ``c1`` bins per box side."""

    def __init__(self, weight: Any, c1: int = 16):
        self.weight, self.c1 = weight, c1

    @staticmethod
    def load(vb: Any, c1: int = 16) -> Dfl:
        """candle-examples' ``Dfl::load``: the ``conv.weight`` ``(1, c1, 1, 1)``."""
        return Dfl(vb.get((1, c1, 1, 1), "conv.weight"), c1)

    def forward(self, xs: Any) -> Any:
        """Distribution focal loss decoding: ``(B, 4 * c1, A)`` in, ``(B, 4, A)`` expected distances out."""
        b, _, a = xs.dims3()
        p = ops.softmax(xs.reshape((b, 4, self.c1, a)), 2)
        return p.broadcast_mul(self.weight.reshape((1, 1, self.c1, 1))).sum(2)


def _make_anchors(shapes: list[tuple[int, int]], strides: tuple[int, ...]) -> tuple[Any, Any]:
    pts, st = [], []
    for (h, w), s in zip(shapes, strides, strict=True):
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        pts.append(np.stack([sx.ravel(), sy.ravel()], 0))
        st.append(np.full((1, h * w), s, np.float32))
    return np.concatenate(pts, 1), np.concatenate(st, 1)  # (2, A), (1, A)


class DetectionHead(Module):
    """Ultralytics ``Detect``: per level a box branch (``cv2``, DFL bins) and a class branch (``cv3``).

    ``legacy`` (YOLOv8) class branches are two 3x3 convs; YOLO11's are depthwise 3x3 + 1x1, twice.
    """

    def __init__(self, dfl: Dfl, cv2: list[list[Any]], cv3: list[list[Any]], nc: int, ch: int = 16):
        self.dfl, self.cv2, self.cv3, self.nc, self.ch = dfl, cv2, cv3, nc, ch

    @staticmethod
    def load(vb: Any, nc: int, filters: tuple[int, int, int], legacy: bool = True) -> DetectionHead:
        """candle-examples' ``DetectionHead::load(vb, nc, filters)``: the box (``cv2``), class (``cv3``) and ``dfl``
        branches."""
        ch = 16
        c2, c3 = max(16, filters[0] // 4, ch * 4), max(filters[0], min(nc, 100))
        cv2, cv3 = [], []
        for i, f in enumerate(filters):
            v2, v3 = vb.pp(f"cv2.{i}"), vb.pp(f"cv3.{i}")
            cv2.append([ConvBlock.load(v2.pp(0), f, c2, 3), ConvBlock.load(v2.pp(1), c2, c2, 3),
                        conv2d(c2, 4 * ch, 1, Conv2dConfig(), v2.pp(2))])  # fmt: skip
            if legacy:
                cv3.append([ConvBlock.load(v3.pp(0), f, c3, 3), ConvBlock.load(v3.pp(1), c3, c3, 3)])
            else:
                cv3.append([
                    ConvBlock.load(v3.pp("0.0"), f, f, 3, g=f), ConvBlock.load(v3.pp("0.1"), f, c3, 1),
                    ConvBlock.load(v3.pp("1.0"), c3, c3, 3, g=c3), ConvBlock.load(v3.pp("1.1"), c3, c3, 1),
                ])  # fmt: skip
            cv3[-1].append(conv2d(c3, nc, 1, Conv2dConfig(), v3.pp(2)))
        return DetectionHead(Dfl.load(vb.pp("dfl"), ch), cv2, cv3, nc, ch)

    def anchors(self, xs: list[Any]) -> tuple[Any, Any]:
        """Anchor centres ``(2, A)`` in grid units and strides ``(1, A)`` for the feature maps ``xs``."""
        a, s = _make_anchors([tuple(x.shape[2:]) for x in xs], (8, 16, 32))
        return Tensor(a), Tensor(s)

    def forward(self, xs: list[Any]) -> Any:
        """Feature maps (P3, P4, P5) -> ``(B, 4 + nc, A)``: xywh boxes in input pixels, class probabilities."""
        b = xs[0].dims4()[0]
        box = Tensor.cat([_seq(br, x).reshape((b, 4 * self.ch, -1)) for br, x in zip(self.cv2, xs, strict=True)], 2)
        cls = Tensor.cat([_seq(br, x).reshape((b, self.nc, -1)) for br, x in zip(self.cv3, xs, strict=True)], 2)
        anchors, strides = self.anchors(xs)
        lt, rb = self.dfl.forward(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0).broadcast_sub(lt), anchors.unsqueeze(0).broadcast_add(rb)
        dbox = Tensor.cat([(x1y1 + x2y2) * 0.5, x2y2 - x1y1], 1).broadcast_mul(strides.unsqueeze(0))
        return Tensor.cat([dbox, ops.sigmoid(cls)], 1)


class PoseHead(Module):
    """Ultralytics ``Pose``: a ``DetectionHead`` plus a keypoint branch (``cv4``) per level."""

    def __init__(self, detect: DetectionHead, cv4: list[list[Any]], kpt: tuple[int, int]):
        self.detect, self.cv4, self.kpt = detect, cv4, kpt

    @staticmethod
    def load(vb: Any, nc: int, kpt: tuple[int, int], filters: tuple[int, int, int], legacy: bool = True) -> PoseHead:
        """candle-examples' ``PoseHead::load``: the detection head and the keypoint branch ``cv4``."""
        nk = kpt[0] * kpt[1]
        c4 = max(filters[0] // 4, nk)
        cv4 = [[ConvBlock.load(vb.pp(f"cv4.{i}.0"), f, c4, 3), ConvBlock.load(vb.pp(f"cv4.{i}.1"), c4, c4, 3),
                conv2d(c4, nk, 1, Conv2dConfig(), vb.pp(f"cv4.{i}.2"))] for i, f in enumerate(filters)]  # fmt: skip
        return PoseHead(DetectionHead.load(vb, nc, filters, legacy), cv4, tuple(kpt))

    def forward(self, xs: list[Any]) -> Any:
        """``(B, 4 + nc + K*D, A)``: the detection output, then per keypoint x, y (pixels) [, visibility]."""
        d = self.detect.forward(xs)
        b, (k, nd) = xs[0].dims4()[0], self.kpt
        y = Tensor.cat([_seq(br, x).reshape((b, k * nd, -1)) for br, x in zip(self.cv4, xs, strict=True)], 2)
        anchors, strides = self.detect.anchors(xs)
        y = y.reshape((b, k, nd, -1))
        xy = ((y.narrow(2, 0, 2) * 2.0).broadcast_add(anchors.reshape((1, 1, 2, -1)) - 0.5)).broadcast_mul(strides)
        parts = [xy] + ([ops.sigmoid(y.narrow(2, 2, 1))] if nd == 3 else [])
        return Tensor.cat([d, Tensor.cat(parts, 2).reshape((b, k * nd, -1))], 1)


class YoloV8(Module):
    """Backbone + neck + head (Candle's ``YoloV8`` / ``YoloV8Pose``); ``forward`` gives the raw output."""

    def __init__(self, net: DarkNet, fpn: YoloV8Neck, head: Any, names: tuple[str, ...], task: str, version: str,
                 which: str):  # fmt: skip
        self.net, self.fpn, self.head = net, fpn, head
        self.names, self.task, self.version, self.which = tuple(names), task, version, which

    @staticmethod
    def load(
        vb: Any, m: Multiples, num_classes: int, *, version: str = "v8", task: str = "detect",
        kpt: tuple[int, int] = (17, 3), names: Any = None, which: str = "", sppf_act: bool = True,
    ) -> YoloV8:  # fmt: skip
        """Ultralytics' tensor names, or those of Candle's yolo-v8 example (YOLOv8), read from ``vb``."""
        vb = ultralytics_view(vb, version)
        net, fpn = DarkNet.load(vb, m, version, sppf_act), YoloV8Neck.load(vb, m, version)
        hv = vb.pp(f"model.{22 if version == 'v8' else 23}")
        legacy = version == "v8"
        if task == "pose":
            head = PoseHead.load(hv, num_classes, kpt, m.filters(), legacy)
        elif task == "detect":
            head = DetectionHead.load(hv, num_classes, m.filters(), legacy)
        else:
            raise errors.Msg(f"yolo: unknown task {task!r} (detect or pose)")
        if names is None:
            names = COCO_NAMES if num_classes == 80 else ("person",) if num_classes == 1 else range(num_classes)
        return YoloV8(net, fpn, head, tuple(str(n) for n in names), task, version, which)

    @property
    def kpt_shape(self) -> tuple[int, int] | None:
        """``(keypoints, dims)`` of a pose model, or ``None``."""
        return self.head.kpt if isinstance(self.head, PoseHead) else None

    @property
    def num_classes(self) -> int:
        """The number of classes the head predicts."""
        return (self.head.detect if isinstance(self.head, PoseHead) else self.head).nc

    def forward(self, xs: Any) -> Any:
        """``(B, 3, H, W)`` f32 RGB in [0, 1], H and W multiples of 32 -> ``(B, 4 + nc [+ K*D], A)``."""
        x = xs if isinstance(xs, Tensor) else Tensor(xs)
        if x.ndim != 4 or x.shape[1] != 3:
            raise errors.Msg(f"YoloV8.forward: expected a (B, 3, H, W) image batch, got {errors.fmt_shape(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32 or 0 in x.shape:
            raise errors.Msg(
                f"YoloV8.forward: H and W must be positive multiples of 32 (letterbox) and the batch >= 1,"
                f" got {errors.fmt_shape(x.shape)}"
            )
        p3, p4, p5 = self.net.forward(x)
        return self.head.forward(list(self.fpn.forward(p3, p4, p5)))


class YoloV8Pose(YoloV8):
    """Candle's ``YoloV8Pose``: ``YoloV8Pose.load(vb, m, num_classes, kpt)``."""

    @staticmethod
    def load(vb: Any, m: Multiples, num_classes: int = 1, kpt: tuple[int, int] = (17, 3), **kw: Any) -> YoloV8:  # type: ignore[override]
        """``YoloV8.load`` of a pose model (``task="pose"``, ``kpt`` keypoints)."""
        return YoloV8.load(vb, m, num_classes, task="pose", kpt=kpt, **kw)
