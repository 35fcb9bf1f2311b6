"""Candle's ``Device``: ``Device.Cpu``, ``Device.new_cuda(i)``, ``Device.cuda_if_available(i)``.

A Device names one JAX device. Ops across devices raise ``DeviceMismatchBinaryOp`` as in Candle
instead of moving data behind the user's back. Each device owns a seedable random generator
(``device.set_seed(42)``), which, unlike Candle's, also works on the CPU.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from candlejax import errors, random
from candlejax.dtype import DType

__all__ = ["Device", "DeviceLocation", "refresh_device_count", "single_device"]


@functools.cache
def _gpus() -> tuple[Any, ...]:
    try:
        return tuple(jax.devices("gpu"))
    except RuntimeError:
        return ()


_single: list[bool] = []


def single_device() -> bool:
    """Whether JAX sees exactly one device (one CPU, no GPU), so cross-device checks can be skipped.
    Cached; :func:`refresh_device_count` forgets it."""
    if not _single:
        _single.append(len(jax.devices()) == 1 and len(jax.devices("cpu")) == 1)
    return _single[0]


def refresh_device_count() -> None:
    """Forget the cached :func:`single_device` answer (``cj.distributed.initialize`` calls this once
    more devices are visible)."""
    _single.clear()


def _local_cpus() -> list[Any]:
    """This process's CPU devices (all of them in a single-process run; see cj.distributed.initialize)."""
    return jax.local_devices(backend="cpu")


def _cpu_device(ordinal: int) -> Device:
    """The CPU device ``ordinal`` (``"cpu:1"``), checked against the CPU devices JAX sees (Candle has
    one, ``Device::Cpu``)."""
    n = len(_local_cpus())
    if not 0 <= ordinal < n:
        raise errors.InvalidDevice(f"cpu device {ordinal} not found, {n} visible")
    return _CPU if ordinal == 0 else Device("cpu", ordinal)


class DeviceLocation:
    """``DeviceLocation::Cpu`` / ``Cuda { gpu_id }`` / ``Metal { gpu_id }``: ``DeviceLocation.Cpu``,
    ``DeviceLocation.Cuda(gpu_id)``, ``DeviceLocation.Metal(gpu_id)``, compared with ``dev.location()``."""

    __slots__ = ("gpu_id", "kind")

    Cpu: DeviceLocation  # set below, Candle's unit variant

    def __init__(self, kind: str, gpu_id: int = 0):
        self.kind, self.gpu_id = kind, gpu_id

    @staticmethod
    def Cuda(gpu_id: int = 0) -> DeviceLocation:  # noqa: N802 - Candle's variant name
        """``DeviceLocation::Cuda { gpu_id }``."""
        return DeviceLocation("cuda", int(gpu_id))

    @staticmethod
    def Metal(gpu_id: int = 0) -> DeviceLocation:  # noqa: N802 - Candle's variant name
        """``DeviceLocation::Metal { gpu_id }`` (never a Device's location here: no Metal backend)."""
        return DeviceLocation("metal", int(gpu_id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceLocation) and (self.kind, self.gpu_id) == (other.kind, other.gpu_id)

    def __hash__(self) -> int:
        return hash((self.kind, self.gpu_id))

    def __repr__(self) -> str:
        return "Cpu" if self.kind == "cpu" else f"{self.kind.capitalize()} {{ gpu_id: {self.gpu_id} }}"


DeviceLocation.Cpu = DeviceLocation("cpu")


class _DeviceMeta(type):
    @property
    def Cpu(cls) -> Device:  # noqa: N802 - Candle's variant name
        """``Device::Cpu``."""
        return _CPU


class Device(metaclass=_DeviceMeta):
    """A compute device. Use ``Device.Cpu``, ``Device.new_cuda(0)`` or ``Device.cuda_if_available(0)``."""

    __slots__ = ("kind", "ordinal")

    def __init__(self, kind: str = "cpu", ordinal: int = 0):
        if kind not in ("cpu", "cuda"):
            if kind == "metal":
                raise errors.NotCompiledWithMetalSupport()
            raise errors.InvalidDevice(f"unknown device kind {kind!r}, expected 'cpu' or 'cuda'")
        try:
            ordinal = int(ordinal)
        except (TypeError, ValueError):
            raise errors.InvalidDevice(f"invalid {kind} device ordinal {ordinal!r}: expected an integer") from None
        self.kind, self.ordinal = kind, ordinal

    # --- constructors ----------------------------------------------------------------------
    @staticmethod
    def new_cuda(ordinal: int = 0) -> Device:
        """``Device::new_cuda(ordinal)``: raises when JAX sees no such GPU."""
        gpus = _gpus()
        if not gpus:
            raise errors.NotCompiledWithCudaSupport()
        if not 0 <= ordinal < len(gpus):
            raise errors.InvalidDevice(f"cuda device {ordinal} not found, {len(gpus)} visible")
        return Device("cuda", ordinal)

    @staticmethod
    def new_cuda_with_stream(ordinal: int = 0) -> Device:
        """Candle's ``Device::new_cuda_with_stream``: the same as ``new_cuda`` (XLA manages streams)."""
        return Device.new_cuda(ordinal)

    @staticmethod
    def cuda_if_available(ordinal: int = 0) -> Device:
        """The GPU ``ordinal`` when JAX sees one, else ``Device.Cpu``."""
        return Device("cuda", ordinal) if ordinal < len(_gpus()) else _CPU

    @staticmethod
    def new_metal(ordinal: int = 0) -> Device:
        """Candle's ``Device::new_metal``: always raises ``NotCompiledWithMetalSupport``."""
        raise errors.NotCompiledWithMetalSupport()

    @staticmethod
    def metal_if_available(ordinal: int = 0) -> Device:
        """Candle's ``Device::metal_if_available``: always ``Device.Cpu`` (no Metal backend)."""
        return _CPU

    @staticmethod
    def from_jax(d: Any) -> Device:
        """The Device of a ``jax.Device``."""
        if d.platform == "cpu":
            cpus = _local_cpus()
            i = cpus.index(d) if d in cpus else d.id
            return _CPU if i == 0 else Device("cpu", i)
        return Device("cuda", _gpus().index(d) if d in _gpus() else d.id)

    @staticmethod
    def coerce(d: Any) -> Device:
        """Accept a Device, ``None`` (cpu), a string (``"cpu"``, ``"cpu:1"``, ``"cuda"``, ``"cuda:1"``) or a
        jax.Device; a string ordinal must be an integer naming a visible device."""
        if d is None:
            return _CPU
        if isinstance(d, Device):
            return d
        if isinstance(d, str):
            kind, sep, idx = d.lower().partition(":")
            if kind in ("cpu", "cuda", "gpu"):
                if sep and not idx.strip().isdigit():
                    raise errors.InvalidDevice(f"invalid device {d!r}: the ordinal after ':' must be an integer")
                i = int(idx) if sep else 0
            if kind == "cpu":
                return _cpu_device(i)
            if kind in ("cuda", "gpu"):
                return Device.new_cuda(i)
            if kind == "metal":
                raise errors.NotCompiledWithMetalSupport()
            raise errors.InvalidDevice(f"unknown device {d!r}")
        if isinstance(d, jax.Device):
            return Device.from_jax(d)
        raise errors.InvalidDevice(f"cannot use {d!r} as a device")

    # --- queries ---------------------------------------------------------------------------
    @property
    def jax_device(self) -> Any:
        """The ``jax.Device`` this names."""
        devs = _local_cpus() if self.kind == "cpu" else _gpus()
        if not 0 <= self.ordinal < len(devs):
            raise errors.InvalidDevice(f"{self.kind} device {self.ordinal} not found, {len(devs)} visible")
        return devs[self.ordinal]

    def location(self) -> DeviceLocation:
        """``Device::location()``: ``DeviceLocation.Cpu`` for every CPU device (Candle's unit variant,
        which its repr already shows), ``DeviceLocation.Cuda(ordinal)`` for a GPU."""
        return DeviceLocation.Cpu if self.kind == "cpu" else DeviceLocation(self.kind, self.ordinal)

    def same_device(self, other: Device) -> bool:
        """Candle's ``Device::same_device``: whether ``other`` is the same device."""
        return self == other

    def is_cpu(self) -> bool:
        """Candle's ``Device::is_cpu``."""
        return self.kind == "cpu"

    def is_cuda(self) -> bool:
        """Candle's ``Device::is_cuda``."""
        return self.kind == "cuda"

    def is_metal(self) -> bool:
        """Candle's ``Device::is_metal``: always False."""
        return False

    def supports_bf16(self) -> bool:
        """Candle's ``Device::supports_bf16``: True on CUDA, False on the CPU."""
        return self.kind == "cuda"

    def bf16_default_to_f32(self) -> Any:
        """Candle's ``Device::bf16_default_to_f32``: BF16 where supported, else F32."""
        return DType.BF16 if self.kind == "cuda" else DType.F32

    def as_cuda_device(self) -> Any:
        """``Device::as_cuda_device``: the ``jax.Device`` of a CUDA device (Candle's ``CudaDevice``
        handle); ``expected a cuda device, got cpu`` otherwise."""
        if self.kind != "cuda":
            raise errors.Msg(f"expected a cuda device, got {self.kind}")
        return self.jax_device

    def as_metal_device(self) -> Any:
        """``Device::as_metal_device``: always ``expected a metal device, got cpu`` (or ``cuda``); there
        is no Metal backend."""
        raise errors.Msg(f"expected a metal device, got {self.kind}")

    def with_context(self, f: Any) -> Any:
        """``Device::with_context(f)``: ``f()`` (Candle runs it in its CPU thread pool; XLA has its own)."""
        return f()

    def synchronize(self) -> None:
        """Wait for all work queued on this device."""
        for a in jax.live_arrays():
            if self.jax_device in a.devices():
                a.block_until_ready()

    # --- randomness --------------------------------------------------------------------------
    def set_seed(self, seed: int) -> None:
        """Seed this device's generator (``device.set_seed(42)``); works on the CPU too."""
        random.set_seed(self, seed)

    def get_current_seed(self) -> int:
        """Candle's ``Device::get_current_seed``: the seed last set with ``set_seed``."""
        return random.get_seed(self)

    # --- dunder ------------------------------------------------------------------------------
    def clone(self) -> Device:
        """Rust Candle's ``device.clone()`` (``t.device().clone()``): this device (a Device is immutable)."""
        return self

    def __call__(self) -> Device:
        """Rust Candle's accessor call ``t.device()``: the device itself (``t.device`` is the property)."""
        return self

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = Device.coerce(other)
            except errors.Error:
                return False
        return isinstance(other, Device) and (self.kind, self.ordinal) == (other.kind, other.ordinal)

    def __hash__(self) -> int:
        """The hash of candle-pyo3's device string (``"cpu"``, ``"cuda"`` for GPU 0; ``"cpu:1"``,
        ``"cuda:1"`` for the others), which compares equal, so dicts and sets keyed by those strings
        find the Device."""
        if self.ordinal == 0:
            return hash(self.kind)
        return hash(f"{self.kind}:{self.ordinal}")

    def __repr__(self) -> str:
        return "Cpu" if self.kind == "cpu" and self.ordinal == 0 else (
            f"Cpu({self.ordinal})" if self.kind == "cpu" else f"Cuda({self.ordinal})"
        )

    def __str__(self) -> str:
        """``"cpu"`` (candle-pyo3's name), ``"cpu:1"`` for another host device, ``"cuda:N"``:
        ``Device.coerce(str(d)) == d``."""
        if self.kind == "cpu":
            return "cpu" if self.ordinal == 0 else f"cpu:{self.ordinal}"
        return f"cuda:{self.ordinal}"


_CPU = Device("cpu", 0)
