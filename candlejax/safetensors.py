"""``cj.safetensors``: Candle's ``candle::safetensors`` for Python.

>>> import candlejax as cj
>>> w = cj.Tensor.new([[1.0, 2.0], [3.0, 4.0]])
>>> cj.safetensors.save({"lm_head.weight": w}, "model.safetensors")          # atomic
>>> tensors = cj.safetensors.load("model.safetensors", cj.Device.Cpu)
>>> st = cj.safetensors.MmapedSafetensors("model.safetensors")  # or a sharded *.index.json, lazily
>>> st.load("lm_head.weight", cj.Device.Cpu).to_vec2()
[[1.0, 2.0], [3.0, 4.0]]

See ``candlejax.io.safetensors`` for the details.
"""

from candlejax.io.safetensors import (
    BufferedSafetensors,
    MmapedFile,
    MmapedSafetensors,
    SafeTensorDtypeError,
    SafeTensors,
    SafeTensorX64Error,
    SliceIterator,
    SliceSafetensors,
    TensorView,
    load,
    load_buffer,
    save,
    save_tensor,
)

__all__ = [
    "BufferedSafetensors",
    "MmapedFile",
    "MmapedSafetensors",
    "SafeTensorDtypeError",
    "SafeTensorX64Error",
    "SafeTensors",
    "SliceIterator",
    "SliceSafetensors",
    "TensorView",
    "load",
    "load_buffer",
    "save",
    "save_tensor",
]
