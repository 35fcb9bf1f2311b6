"""Tensor names of YOLOv8 weight files: Ultralytics' and those of Candle's ``yolo-v8`` example.

requires: candlejax.errors; provides: ``ultralytics_to_candle``, ``candle_to_ultralytics``,
``holds_candle_names``, ``ultralytics_view``

The network (:mod:`~candlejax.models.yolo.model`) asks for Ultralytics' names
(``model.4.m.1.cv2.conv.weight``). The files of Candle's example (hub: ``lmz/candle-yolo-v8``) name
the same tensors after Candle's modules: ``net`` (``DarkNet``: ``b1.0`` ... ``b5.0``), ``fpn``
(``YoloV8Neck``: ``n1`` ... ``n6``) and ``head`` (``DetectionHead`` / ``PoseHead``: the same
``cv2``, ``cv3``, ``cv4``, ``dfl``), and call a ``C2f``'s blocks ``bottleneck.i`` where Ultralytics
says ``m.i``. Shapes and everything below a block (``cv1.conv.weight``, ``bn.running_var``) are the
same. Such a VarBuilder is read through ``vb.rename_f``, so the model's Vars keep Ultralytics' names
and ``vb.check_all_used()`` reports the file's unread tensors under Candle's names.
"""

from __future__ import annotations

from typing import Any

from candlejax import errors

__all__ = ["CANDLE_V8_CHILDREN", "CANDLE_V8_LAYERS", "candle_to_ultralytics", "holds_candle_names",
           "ultralytics_to_candle", "ultralytics_view"]  # fmt: skip

#: Ultralytics' YOLOv8 layer (``model.N``) -> Candle's module path. Layers 10, 11, 13, 14, 17 and 20
#: (upsampling, concatenation) hold no tensors.
CANDLE_V8_LAYERS = {
    0: "net.b1.0", 1: "net.b1.1", 2: "net.b2.0", 3: "net.b2.1", 4: "net.b2.2", 5: "net.b3.0", 6: "net.b3.1",
    7: "net.b4.0", 8: "net.b4.1", 9: "net.b5.0", 12: "fpn.n1", 15: "fpn.n2", 16: "fpn.n3", 18: "fpn.n4",
    19: "fpn.n5", 21: "fpn.n6", 22: "head",
}  # fmt: skip
#: the first name below a layer, Ultralytics' -> Candle's (a ``C2f``'s blocks)
CANDLE_V8_CHILDREN = {"m": "bottleneck"}

_LAYER_OF = {v: f"model.{k}" for k, v in CANDLE_V8_LAYERS.items()}
_CHILD_OF = {v: k for k, v in CANDLE_V8_CHILDREN.items()}
#: the first convolution, which every file of each scheme holds
ULTRALYTICS_FIRST, CANDLE_FIRST = "model.0.conv.weight", "net.b1.0.conv.weight"


def _rewrite(layer: str | None, rest: list[str], children: dict[str, str]) -> str | None:
    if layer is None:
        return None
    if rest:
        rest = [children.get(rest[0], rest[0]), *rest[1:]]
    return ".".join([layer, *rest])


def ultralytics_to_candle(name: str) -> str:
    """Candle's name of a YOLOv8 tensor: ``model.2.m.0.cv1.conv.weight`` -> ``net.b2.0.bottleneck.0.cv1.conv.weight``,
    ``model.22.cv4.0.2.bias`` -> ``head.cv4.0.2.bias``; other names are returned as they are."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "model" or not parts[1].isdigit():
        return name
    return _rewrite(CANDLE_V8_LAYERS.get(int(parts[1])), parts[2:], CANDLE_V8_CHILDREN) or name


def candle_to_ultralytics(name: str) -> str:
    """The inverse of :func:`ultralytics_to_candle`: ``fpn.n6.bottleneck.0.cv2.bn.bias`` ->
    ``model.21.m.0.cv2.bn.bias``; other names are returned as they are."""
    parts = name.split(".")
    for k in (3, 2, 1):  # net.bX.Y, fpn.nX, head
        if (new := _rewrite(_LAYER_OF.get(".".join(parts[:k])), parts[k:], _CHILD_OF)) is not None:
            return new
    return name


def holds_candle_names(vb: Any) -> bool:
    """Whether ``vb`` holds Candle's names: its first convolution as ``net.b1.0``, not ``model.0``."""
    return not vb.contains_tensor(ULTRALYTICS_FIRST) and vb.contains_tensor(CANDLE_FIRST)


def ultralytics_view(vb: Any, version: str = "v8") -> Any:
    """``vb`` when it holds Ultralytics' names, else ``vb`` looking Ultralytics' names up as Candle's
    (relative to ``vb``'s prefix)."""
    if not holds_candle_names(vb):
        return vb
    if version != "v8":
        raise errors.Msg(f"YoloV8.load: the weights have the names of Candle's yolo-v8 example ({CANDLE_FIRST}), "
                         f"which exist for YOLOv8 only, not version {version!r}")  # fmt: skip
    n = len(vb.prefix()) + 1 if vb.prefix() else 0
    return vb.rename_f(lambda path: path[:n] + ultralytics_to_candle(path[n:]))
