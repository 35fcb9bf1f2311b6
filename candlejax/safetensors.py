"""``cj.safetensors``: Candle's ``candle::safetensors`` for Python.

>>> import candlejax as cj
>>> cj.safetensors.save({"w": w}, "model.safetensors")          # atomic
>>> tensors = cj.safetensors.load("model.safetensors", cj.Device.Cpu)
>>> st = cj.safetensors.MmapedSafetensors("model.safetensors.index.json")  # shards, lazily
>>> st.load("lm_head.weight", cj.Device.Cpu)

See ``candlejax.io.safetensors`` for the details.
"""

from candlejax.io.safetensors import (
    BufferedSafetensors,
    MmapedSafetensors,
    SafeTensorDtypeError,
    SafeTensorX64Error,
    SliceSafetensors,
    TensorView,
    load,
    load_buffer,
    save,
    save_tensor,
)

__all__ = [
    "BufferedSafetensors",
    "MmapedSafetensors",
    "SafeTensorDtypeError",
    "SafeTensorX64Error",
    "SliceSafetensors",
    "TensorView",
    "load",
    "load_buffer",
    "save",
    "save_tensor",
]
