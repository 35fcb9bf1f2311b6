"""Deterministic YOLO test weights from a seed, shared by make_yolo_golden.py (which builds the
Ultralytics reference models with them) and the tests (which rebuild the same safetensors file).

Only numpy is needed, so the golden files hold outputs, names and shapes but no weights.
"""

from __future__ import annotations

import zlib

import numpy as np


def make_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """f32 weights with Ultralytics' names: He-scaled convs, non-trivial BatchNorm statistics."""
    out = {}
    for name, shape in sorted(shapes.items()):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("dfl.conv.weight"):
            a = np.arange(shape[1], dtype=np.float32).reshape(shape)
        elif leaf == "num_batches_tracked":
            continue
        elif leaf == "running_mean":
            a = rng.uniform(-0.2, 0.2, shape)
        elif leaf == "running_var":
            a = rng.uniform(0.5, 1.5, shape)
        elif leaf == "weight" and len(shape) == 1:  # BatchNorm gamma
            a = rng.uniform(0.6, 1.2, shape)
        elif leaf == "bias":
            a = rng.uniform(-0.3, 0.3, shape)
        else:  # conv weight (c_out, c_in/g, k, k)
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) * np.sqrt(1.5 / fan_in)
        out[name] = np.asarray(a, np.float32)
    return out
