"""candlejax: Hugging Face Candle's Tensor and Module API for Python, on JAX and XLA.

>>> from candlejax import Tensor, DType, Device, D
>>> t = Tensor.new([[1.0, 2.0], [3.0, 4.0]], Device.Cpu)
>>> t.sum_keepdim(1).to_vec2()
[[3.0], [7.0]]
"""

from candlejax import _config

_config.apply()

from candlejax import errors  # noqa: E402
from candlejax.device import Device, DeviceLocation  # noqa: E402
from candlejax.dtype import DType, enable_x64, x64_enabled  # noqa: E402
from candlejax.errors import Error  # noqa: E402
from candlejax.shape import D, Shape  # noqa: E402
from candlejax.tensor import Tensor  # noqa: E402

__version__ = "0.1.0"

__all__ = ["D", "DType", "Device", "DeviceLocation", "Error", "Shape", "Tensor", "enable_x64", "errors", "x64_enabled"]
