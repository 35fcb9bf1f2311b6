"""Reading and writing tensors: safetensors (``candlejax.io.safetensors``) and npy/npz
(``candlejax.io.npy``), as Candle's ``candle::safetensors`` and ``candle::npy``; PyTorch
checkpoints (``candlejax.io.pth``, read only, as ``candle::pickle``)."""

import importlib
from typing import TYPE_CHECKING, Any

from candlejax.io import ct2, npy, pth, safetensors
from candlejax.io.npy import NpzTensors, read_npy, read_npz, read_npz_by_name, write_npy, write_npz
from candlejax.io.safetensors import (
    BufferedSafetensors,
    MmapedSafetensors,
    SliceSafetensors,
    TensorView,
    atomic_file,
    load,
    load_buffer,
    save,
    save_tensor,
)

if TYPE_CHECKING:  # type checkers see the module, and a misspelt name stays an error
    from candlejax.io import gguf as gguf
else:

    def __getattr__(name: str) -> Any:  # gguf is imported lazily: it imports candlejax.quantized, which imports this
        if name == "gguf":  # cj.io.gguf (candle::quantized::gguf_file)
            return importlib.import_module("candlejax.io.gguf")
        raise AttributeError(f"module 'candlejax.io' has no attribute {name!r}")


__all__ = [
    "BufferedSafetensors",
    "MmapedSafetensors",
    "NpzTensors",
    "SliceSafetensors",
    "TensorView",
    "atomic_file",
    "ct2",
    "load",
    "load_buffer",
    "npy",
    "pth",
    "read_npy",
    "read_npz",
    "read_npz_by_name",
    "safetensors",
    "save",
    "save_tensor",
    "write_npy",
    "write_npz",
]
