"""YOLO v3 as a darknet network: the ``.cfg`` parser, the network it describes, and darknet's ``.weights``.

Paper: Redmon & Farhadi, "YOLOv3: An Incremental Improvement" (https://arxiv.org/abs/1804.02767);
darknet: https://github.com/pjreddie/darknet. Follows Candle's ``candle-examples/examples/yolo-v3/
darknet.rs`` (``parse_config``, ``Darknet::{width, height, build_model}``; blocks ``convolutional``
(optional ``batch_normalize``, ``leaky`` / ``linear``), ``upsample``, ``route``, ``shortcut``,
``yolo``) with Candle's tensor names: block ``i`` reads ``{i}.conv_{i}.{weight,bias}`` and
``{i}.batch_norm_{i}.{weight,bias,running_mean,running_var}`` (BatchNorm eps 1e-5, as Candle)::

    net = Darknet.parse_config("yolo-v3.cfg")          # YOLO_V3_CFG: the standard 416x416 COCO cfg
    tensors = load_darknet_weights("yolov3.weights", net)  # darknet's binary file, no conversion
    model = net.build_model(VarBuilder.from_tensors(tensors))
    preds = model.forward(x)   # (B, 3, H, W) f32 in [0, 1] -> (B, N, 5 + classes)

A prediction row is ``(cx, cy, w, h)`` in input pixels, then the objectness and the per-class
scores, all sigmoids (class scores are *not* multiplied by the objectness, as in Candle). For
``yolo-v3.cfg`` at 416x416, ``N = 3 * (13² + 26² + 52²) = 10647``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from candlejax import errors
from candlejax.nn import BatchNorm, Conv2d, Conv2dConfig, Module, batch_norm, conv2d, conv2d_no_bias
from candlejax.tensor import Tensor

__all__ = [
    "YOLO_V3_CFG", "Block", "Darknet", "DarknetConfigError", "DarknetConv", "DarknetModel", "DarknetWeightsError",
    "Route", "Shortcut", "Upsample", "YoloHead", "load_darknet_weights", "parse_config",
]  # fmt: skip

#: The standard YOLO v3 cfg (darknet's ``yolov3.cfg``: 416x416, 80 COCO classes; public domain).
YOLO_V3_CFG = Path(__file__).with_name("yolo-v3.cfg")

_LAYERS = ("convolutional", "upsample", "route", "shortcut", "yolo")


class DarknetConfigError(errors.Msg):
    """A malformed or unsupported darknet ``.cfg`` (the message names the file and line)."""


class DarknetWeightsError(errors.Msg):
    """A darknet ``.weights`` file that does not fit its cfg (the message names the layer and byte)."""


# ------------------------------------------------------------------------------------------------
# the cfg file
# ------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """One ``[section]`` of a cfg: its type, ``key = value`` strings, and where it was written."""

    block_type: str
    parameters: dict[str, str] = field(default_factory=dict)
    line: int = 0  # the line of the ``[section]`` header
    lines: dict[str, int] = field(default_factory=dict)  # key -> its line
    source: str = "<cfg>"

    def where(self, key: str | None = None) -> str:
        """``source:line [type]`` of the block (or of ``key``'s line), for error messages."""
        line = self.lines.get(key, self.line) if key else self.line
        return f"{self.source}:{line} [{self.block_type}]"

    def get(self, key: str) -> str:
        """The raw value of ``key`` (candle-examples' ``Block::get``); raises ``DarknetConfigError`` when missing."""
        if key not in self.parameters:
            raise DarknetConfigError(f"{self.where()}: cannot find {key!r} in {self.block_type}")
        return self.parameters[key]

    def get_int(self, key: str, default: int | None = None) -> int:
        """``key`` as an int, or ``default`` when given and the key is missing."""
        if default is not None and key not in self.parameters:
            return default
        return _int(self.get(key), self, key)

    def get_ints(self, key: str) -> list[int]:
        """``key`` as a comma-separated list of ints."""
        return [_int(s, self, key) for s in self.get(key).split(",")]


def _int(s: str, block: Block, key: str) -> int:
    try:
        return int(s.strip())
    except ValueError:
        raise DarknetConfigError(f"{block.where(key)}: {key} = {s.strip()!r} is not an integer") from None


class Darknet:
    """A parsed darknet cfg: the ``[net]`` parameters and the layer blocks, in order."""

    def __init__(self, blocks: list[Block], parameters: Block):
        self.blocks = blocks
        self.net = parameters

    @property
    def parameters(self) -> dict[str, str]:
        """The ``[net]`` section's parameters."""
        return self.net.parameters

    @staticmethod
    def parse_config(path: str | os.PathLike) -> Darknet:
        """Candle's ``darknet::parse_config(path)``."""
        return Darknet.parse_config_str(Path(path).read_text(encoding="utf-8"), source=str(path))

    @staticmethod
    def parse_config_str(text: str, source: str = "<cfg>") -> Darknet:
        """Parses cfg text: ``[section]`` headers and ``key = value`` lines; ``#`` / ``;`` lines are comments."""
        blocks: list[Block] = []
        net: Block | None = None
        current: Block | None = None
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                if not line.endswith("]") or len(line) < 3:
                    raise DarknetConfigError(f"{source}:{n}: malformed section header {line!r} (expected '[name]')")
                current = Block(line[1:-1].strip(), line=n, source=source)
                if current.block_type in ("net", "network"):
                    if net is not None:
                        raise DarknetConfigError(f"{source}:{n}: a second [net] section (first at line {net.line})")
                    net = current
                else:
                    blocks.append(current)
                continue
            key, eq, value = line.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or not key:
                raise DarknetConfigError(f"{source}:{n}: expected 'key = value' or '[section]', got {line!r}")
            if current is None:
                raise DarknetConfigError(f"{source}:{n}: {key!r} comes before any [section]")
            if key in current.parameters:
                raise DarknetConfigError(
                    f"{source}:{n}: a second value for {key!r} in [{current.block_type}] "
                    f"(first at line {current.lines[key]})"
                )
            current.parameters[key] = value
            current.lines[key] = n
        return Darknet(blocks, net if net is not None else Block("net", source=source))

    def _net_int(self, key: str) -> int:
        if key not in self.net.parameters:
            raise DarknetConfigError(f"{self.net.source}: cannot find {key!r} in the [net] parameters")
        return _int(self.net.parameters[key], self.net, key)

    def width(self) -> int:
        """The ``[net]`` ``width`` (the input image width)."""
        return self._net_int("width")

    def height(self) -> int:
        """The ``[net]`` ``height`` (the input image height)."""
        return self._net_int("height")

    def channels(self) -> int:
        """The ``[net]`` ``channels`` (3 when absent)."""
        return self.net.get_int("channels", 3)

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The tensors ``build_model`` reads, in darknet's ``.weights`` order, with their shapes."""
        out: dict[str, tuple[int, ...]] = {}
        for spec in _plan(self):
            if isinstance(spec, _Conv):
                out.update(spec.tensors())
        return out

    def build_model(self, vb: Any) -> DarknetModel:
        """Candle's ``build_model(vb)``: the network as a Module (a pytree: jit it with the model as an argument)."""
        layers: list[Module] = []
        for spec in _plan(self):
            layers.append(spec.build(vb) if isinstance(spec, _Conv) else spec.layer)
        return DarknetModel(layers, self.height(), self.width(), self.channels())


def parse_config(path: str | os.PathLike) -> Darknet:
    """Candle's free function ``darknet::parse_config``."""
    return Darknet.parse_config(path)


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
class DarknetConv(Module):
    """``[convolutional]``: conv, optional BatchNorm (eval mode), then ``max(x, 0.1 x)`` (leaky) or nothing."""

    def __init__(self, conv: Conv2d, bn: BatchNorm | None, leaky: bool):
        self.conv, self.bn, self.leaky = conv, bn, leaky

    def forward(self, xs: Any) -> Any:
        """Convolution, batch norm when present, then leaky ReLU (slope 0.1) when ``leaky``."""
        xs = self.conv.forward(xs)
        if self.bn is not None:
            xs = self.bn.forward_t(xs, False)
        return xs.maximum(xs * 0.1) if self.leaky else xs


class Upsample(Module):
    """``[upsample]``: nearest neighbour, ``stride`` times (2 in yolo-v3; Candle always doubles)."""

    def __init__(self, scale: int):
        self.scale = scale

    def forward(self, xs: Any) -> Any:
        """Nearest-neighbour upsampling by ``scale``: ``(B, C, H, W)`` in, ``(B, C, scale*H, scale*W)`` out."""
        _, _, h, w = xs.dims4()
        return xs.upsample_nearest2d(self.scale * h, self.scale * w)


class Route(Module):
    """``[route]``: the outputs of ``layers`` (absolute block indices), concatenated on channels."""

    def __init__(self, layers: tuple[int, ...]):
        self.layers = layers


class Shortcut(Module):
    """``[shortcut]``: the previous output plus the output of block ``source`` (absolute index)."""

    def __init__(self, source: int):
        self.source = source


class YoloHead(Module):
    """``[yolo]``: decodes ``(B, A * (5 + classes), gh, gw)`` into ``(B, gh * gw * A, 5 + classes)`` rows.

    Row order: grid row, grid column, anchor (Candle's). ``x, y = (sigmoid(t) + cell) * stride``,
    ``w, h = exp(t) * anchor`` (pixels), objectness and classes ``sigmoid(t)``.
    """

    def __init__(self, classes: int, anchors: tuple[tuple[int, int], ...], image_hw: tuple[int, int]):
        self.classes, self.anchors, self.image_hw = classes, anchors, image_hw

    def forward(self, xs: Any) -> Any:
        """``(B, anchors * (5 + classes), H, W)`` in, ``(B, H * W * anchors, 5 + classes)`` decoded boxes out."""
        b, _, gh, gw = xs.dims4()
        attrs, na = 5 + self.classes, len(self.anchors)
        xs = xs.reshape((b, na * attrs, gh * gw)).transpose(1, 2).reshape((b, gh * gw * na, attrs))
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        cell = np.repeat(np.stack([cols.ravel(), rows.ravel()], 1), na, axis=0).astype(np.float32)
        stride = np.array([self.image_hw[1] / gw, self.image_hw[0] / gh], np.float32)
        anchors = np.tile(np.array(self.anchors, np.float32), (gh * gw, 1))
        const = lambda a: Tensor.new(a, xs.device, xs.dtype)  # noqa: E731
        xy = xs.narrow(2, 0, 2).sigmoid().broadcast_add(const(cell[None])).broadcast_mul(const(stride))
        wh = xs.narrow(2, 2, 2).exp().broadcast_mul(const(anchors[None]))
        return Tensor.cat([xy, wh, xs.narrow(2, 4, attrs - 4).sigmoid()], 2)


class DarknetModel(Module):
    """The network ``Darknet.build_model`` returns: blocks in cfg order, run as Candle's ``Func`` does."""

    def __init__(self, layers: list[Module], height: int, width: int, channels: int = 3):
        self.layers, self.height, self.width, self.channels = layers, height, width, channels

    def forward_layers(self, xs: Any) -> list[Any]:
        """Every block's output (a yolo block's: its decoded rows), for inspecting intermediate layers."""
        shape = tuple(xs.shape)
        if len(shape) != 4 or shape[1:] != (self.channels, self.height, self.width):
            raise errors.UnexpectedShape(
                "darknet: the input must be (batch, channels, height, width) with the cfg's [net] size "
                "(resize the image, or change width/height in the cfg: multiples of 32 for yolo-v3)",
                (shape[0] if shape else 1, self.channels, self.height, self.width), shape,
            )  # fmt: skip
        outs: list[Any] = []
        for layer in self.layers:
            if isinstance(layer, Route):
                ys = Tensor.cat([outs[i] for i in layer.layers], 1) if len(layer.layers) > 1 else outs[layer.layers[0]]
            elif isinstance(layer, Shortcut):
                ys = outs[-1] + outs[layer.source]
            else:
                ys = layer.forward(outs[-1] if outs else xs)
            outs.append(ys)
        return outs

    def forward(self, xs: Any) -> Any:
        """``(B, C, H, W)`` -> ``(B, N, 5 + classes)``: the yolo heads' rows, concatenated in cfg order."""
        outs = self.forward_layers(xs)
        dets = [y for layer, y in zip(self.layers, outs) if isinstance(layer, YoloHead)]
        if not dets:
            raise DarknetConfigError("darknet: the cfg has no [yolo] block, so the network has no detections")
        return Tensor.cat(dets, 1) if len(dets) > 1 else dets[0]


# ------------------------------------------------------------------------------------------------
# planning: channels and feature-map sizes of every block, checked before any weight is read
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Conv:
    index: int
    block: Block
    c_in: int
    filters: int
    size: int
    stride: int
    padding: int
    bn: bool
    leaky: bool

    def tensors(self) -> dict[str, tuple[int, ...]]:
        i, f = self.index, self.filters
        conv = {f"{i}.conv_{i}.bias": (f,)} if not self.bn else {}
        bn = {f"{i}.batch_norm_{i}.{k}": (f,) for k in ("bias", "weight", "running_mean", "running_var")}
        return {**conv, **(bn if self.bn else {}), f"{i}.conv_{i}.weight": (f, self.c_in, self.size, self.size)}

    def build(self, vb: Any) -> DarknetConv:
        i, vb = self.index, vb.pp(str(self.index))
        cfg = Conv2dConfig(padding=self.padding, stride=self.stride)
        make = conv2d_no_bias if self.bn else conv2d
        conv = make(self.c_in, self.filters, self.size, cfg, vb.pp(f"conv_{i}"))
        bn = batch_norm(self.filters, 1e-5, vb.pp(f"batch_norm_{i}")) if self.bn else None
        return DarknetConv(conv, bn, self.leaky)


@dataclass(frozen=True)
class _Other:
    layer: Module


def _source(index: int, i: int, block: Block, key: str) -> int:
    j = index + i if i < 0 else i
    if not 0 <= j < index:
        raise DarknetConfigError(
            f"{block.where(key)}: {key} = {i} refers to block {j}, "
            f"but block {index} can only read blocks 0..{index - 1}"
        )
    return j


def _plan(net: Darknet) -> list[_Conv | _Other]:
    """Walks the blocks with (channels, height, width), checking every join; raises naming the line."""
    c, h, w = net.channels(), net.height(), net.width()
    sizes: list[tuple[int, int, int]] = []
    plan: list[_Conv | _Other] = []
    for index, b in enumerate(net.blocks):
        spec: _Conv | _Other
        if b.block_type == "convolutional":
            act, size, stride = b.get("activation"), b.get_int("size"), b.get_int("stride")
            if act not in ("leaky", "linear"):
                raise DarknetConfigError(f"{b.where('activation')}: unsupported activation {act!r} (leaky, linear)")
            if b.get_int("groups", 1) != 1 or b.get_int("dilation", 1) != 1:
                raise DarknetConfigError(f"{b.where()}: grouped or dilated convolutions are not supported")
            padding = (size - 1) // 2 if b.get_int("pad") != 0 else 0
            spec = _Conv(index, b, c, b.get_int("filters"), size, stride, padding,
                         b.get_int("batch_normalize", 0) != 0, act == "leaky")  # fmt: skip
            c, h, w = spec.filters, (h + 2 * padding - size) // stride + 1, (w + 2 * padding - size) // stride + 1
            if min(size, stride, spec.filters, h, w) <= 0:
                raise DarknetConfigError(f"{b.where()}: size/stride/filters give an empty output ({c}x{h}x{w})")
        elif b.block_type == "upsample":
            scale = b.get_int("stride", 2)
            spec, h, w = _Other(Upsample(scale)), h * scale, w * scale
        elif b.block_type == "route":
            layers = tuple(_source(index, i, b, "layers") for i in b.get_ints("layers"))
            hw = {sizes[j][1:] for j in layers}
            if len(hw) != 1:
                joined = ", ".join(f"block {j}: {sizes[j][1]}x{sizes[j][2]}" for j in layers)
                raise DarknetConfigError(f"{b.where('layers')}: cannot concatenate feature maps of different sizes "
                                         f"({joined}); the [net] width/height must be multiples of the network's "
                                         f"stride (32 for yolo-v3)")  # fmt: skip
            spec, c, (h, w) = _Other(Route(layers)), sum(sizes[j][0] for j in layers), hw.pop()
        elif b.block_type == "shortcut":
            src = _source(index, b.get_int("from"), b, "from")
            if b.parameters.get("activation", "linear") != "linear":
                raise DarknetConfigError(f"{b.where('activation')}: only linear shortcuts are supported")
            if sizes[src] != (c, h, w):
                raise DarknetConfigError(
                    f"{b.where('from')}: cannot add block {src}'s output {sizes[src]} to the previous one {(c, h, w)}"
                )
            spec = _Other(Shortcut(src))
        elif b.block_type == "yolo":
            classes, flat, mask = b.get_int("classes"), b.get_ints("anchors"), b.get_ints("mask")
            if len(flat) % 2:
                raise DarknetConfigError(f"{b.where('anchors')}: an odd number of anchor values ({len(flat)})")
            pairs = [(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]
            if any(not 0 <= m < len(pairs) for m in mask):
                raise DarknetConfigError(f"{b.where('mask')}: mask {mask} indexes {len(pairs)} anchors")
            if c != len(mask) * (5 + classes):
                raise DarknetConfigError(f"{b.where()}: the previous block gives {c} channels, but {len(mask)} anchors "
                                         f"x (5 + {classes} classes) need {len(mask) * (5 + classes)}")  # fmt: skip
            spec = _Other(YoloHead(classes, tuple(pairs[m] for m in mask), (net.height(), net.width())))
        else:
            known = ", ".join(_LAYERS)
            raise DarknetConfigError(f"{b.where()}: unsupported block type {b.block_type!r} (known: {known})")
        sizes.append((c, h, w))
        plan.append(spec)
    return plan


# ------------------------------------------------------------------------------------------------
# darknet's .weights
# ------------------------------------------------------------------------------------------------
def load_darknet_weights(path: str | os.PathLike, darknet: Darknet) -> dict[str, Tensor]:
    """Reads darknet's binary ``.weights`` into the tensors ``darknet.build_model`` reads.

    Layout (little-endian): ``major, minor, revision`` (i32), ``seen`` (i64 when ``major * 10 +
    minor >= 2``, else i32), then for each ``[convolutional]`` block in order: ``biases``, with
    ``batch_normalize`` also ``scales, rolling_mean, rolling_variance`` (``filters`` f32 each), then
    the kernel (``filters x c_in x size x size`` f32). The size is checked against the cfg before
    anything is allocated; errors name the block, its cfg line and the byte offset.
    """
    path = os.fspath(path)
    total = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise DarknetWeightsError(f"{path}: {total} bytes, too short for darknet's header (12 + 4 or 8 bytes)")
        major, minor, _revision = np.frombuffer(head, "<i4")
    if major > 1000 or minor > 1000:
        raise DarknetWeightsError(f"{path}: version {major}.{minor} stores transposed weights, which are not supported")
    offset = 12 + (8 if major * 10 + minor >= 2 else 4)
    pieces: list[tuple[str, tuple[int, ...], int]] = []  # (name, shape, byte offset)
    pos = offset
    for spec in _plan(darknet):
        if not isinstance(spec, _Conv):
            continue
        for name, shape in spec.tensors().items():
            n = 4 * int(np.prod(shape))
            if pos + n > total:
                what = name.rsplit(".", 1)[1]
                raise DarknetWeightsError(
                    f"{path}: the file ends at byte {total}, inside block {spec.index} ([convolutional] at "
                    f"{spec.block.source}:{spec.block.line}): its {what} {shape} needs bytes {pos}..{pos + n}; "
                    f"the weights are truncated or belong to another cfg"
                )
            pieces.append((name, shape, pos))
            pos += n
    if pos != total:
        raise DarknetWeightsError(f"{path}: {total - pos} bytes left after the last convolutional block (which ends "
                                  f"at byte {pos}): the weights belong to another cfg")  # fmt: skip
    data = np.fromfile(path, dtype="<f4", offset=offset, count=(total - offset) // 4)
    out: dict[str, Tensor] = {}
    for name, shape, at in pieces:
        start = (at - offset) // 4
        out[name] = Tensor.new(data[start : start + int(np.prod(shape))].reshape(shape).astype(np.float32))
    return out
