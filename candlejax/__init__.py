"""candlejax: Hugging Face Candle's Tensor and Module API for Python, on JAX and XLA.

>>> from candlejax import Tensor, DType, Device, D
>>> t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)
>>> t.sum_keepdim(1).to_vec2()
[[3.0], [7.0]]
"""

# ruff: noqa: I001  (JAX settings must be applied before anything creates an array)
import typing as _typing

from candlejax import _sigint

_sigint.defer()  # a Ctrl-C during `import jax` is raised when the import ends, not lost in a GC callback

try:
    from candlejax import _config

    _config.apply()

    from candlejax import errors
    from candlejax.device import Device, DeviceLocation
    from candlejax.dtype import DType, enable_x64, x64_enabled
    from candlejax.errors import Error
    from candlejax.shape import D, Layout, Shape
    from candlejax.tensor import Tensor
    from candlejax.tensor.elementwise import CmpOp  # candle::op::CmpOp, for t.cmp(rhs, CmpOp.Lt)
    from candlejax import checkpoint, conv, data, io, nn, npy, optim, random, safetensors
    # cj.display (Candle's print options) stays out of __all__: a star import in a notebook keeps IPython's display
    from candlejax import display as display
    from candlejax import distributed
    from candlejax._precision import gemm_reduced_precision_f32, set_gemm_reduced_precision_f32
    from candlejax.transforms import grad, jit, value_and_grad
    from candlejax import functional, testing, utils
    from candlejax.factories import cat, ones, rand, randn, stack, zeros
    from candlejax.nn import Module, ModuleT, Var  # candle::{Module, ModuleT, Var} sit beside Tensor in candle-core
    from candlejax.quantized import QTensor  # candle-pyo3's candle.QTensor
    from candlejax.tensor import convert as _tensor_convert

    _tensor_convert.QTensor = QTensor  # Tensor.quantize's return hint (as candlejax.tensor sets Tensor there)
    del _tensor_convert
    from candlejax import streaming
    from candlejax.streaming import StreamingBinOp, StreamingModule, StreamTensor  # candle::StreamTensor, ...
finally:
    _sigint.restore()

if _typing.TYPE_CHECKING:  # the package candlejax.tensor is callable (candle-pyo3's candle.tensor(data)); say so
    from candlejax.tensor import _CallableModule

    tensor: _CallableModule
    from candlejax import audio as audio, examples as examples, generation as generation, models as models
    from candlejax import pickle as pickle, pipelines as pipelines, test_utils as test_utils
    from candlejax import tokenizer as tokenizer, vision as vision

#: Subpackages imported on first use (``cj.generation``; ``cj.pickle`` and ``cj.test_utils`` as Rust's
#: ``candle::pickle`` and ``candle::test_utils``, ...)
_LAZY_SUBMODULES = frozenset(
    {"audio", "examples", "generation", "models", "pickle", "pipelines", "test_utils", "tokenizer", "vision"}
)

if not _typing.TYPE_CHECKING:  # (type checkers see the imports above, and a misspelt name stays an error)

    def __getattr__(name: str) -> _typing.Any:
        """``cj.generation`` and the other lazily imported subpackages (PEP 562)."""
        if name in _LAZY_SUBMODULES:
            import importlib

            return importlib.import_module(f"candlejax.{name}")
        raise AttributeError(f"module 'candlejax' has no attribute {name!r}")

# candle-pyo3's dtype names (``candle.f32``); the same DType members
u8, u32, i16, i32, i64 = DType.U8, DType.U32, DType.I16, DType.I32, DType.I64
bf16, f16, f32, f64 = DType.BF16, DType.F16, DType.F32, DType.F64

__version__ = "0.1.0"

__all__ = [
    "CmpOp", "D", "DType", "Device", "DeviceLocation", "Error", "Layout", "Module", "ModuleT", "QTensor", "Shape",
    "Tensor", "Var",
    "StreamTensor", "StreamingBinOp", "StreamingModule", "streaming",
    "checkpoint", "conv", "data", "enable_x64",
    "errors", "grad", "io", "jit", "nn", "npy", "optim", "random", "safetensors", "value_and_grad", "x64_enabled",
    "distributed", "gemm_reduced_precision_f32", "set_gemm_reduced_precision_f32",
    "functional", "testing", "utils", "cat", "ones", "rand", "randn", "stack", "tensor", "zeros",
    "u8", "u32", "i16", "i32", "i64", "bf16", "f16", "f32", "f64",
]  # fmt: skip
