"""candle-pyo3's ``candle.utils`` (and ``candle::utils``): what this build can run on, and whole-file
safetensors / GGUF loading and saving as dictionaries.

Candle's ``cuda_is_available()`` reports a compile feature; here it reports whether JAX sees a
GPU (the one thing a CUDA build would tell a Candle user). ``get_num_threads()`` is the number of
CPUs this process may run on, as XLA:CPU's thread pool sizes itself.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from typing import Any

from candlejax import errors
from candlejax.device import Device

__all__ = [
    "cuda_is_available", "get_num_threads", "has_accelerate", "has_mkl", "load_ggml", "load_gguf",
    "load_safetensors", "metal_is_available", "save_gguf", "save_safetensors", "with_avx", "with_f16c",
    "with_neon", "with_simd128",
]  # fmt: skip


def cuda_is_available() -> bool:
    """Whether JAX sees a GPU (``candle::utils::cuda_is_available``)."""
    return Device.cuda_if_available(0).is_cuda()


def metal_is_available() -> bool:
    """Always False: JAX has no Metal backend here (``candle::utils::metal_is_available``)."""
    return False


def get_num_threads() -> int:
    """``candle::utils::get_num_threads``: ``RAYON_NUM_THREADS`` when it is a positive integer (as
    Candle; 0 or anything else is ignored), else the CPUs this process may run on."""
    v = os.environ.get("RAYON_NUM_THREADS", "")
    v = v[1:] if v.startswith("+") else v  # Rust's usize::from_str: ASCII digits, an optional "+"
    if v.isascii() and v.isdigit() and int(v) > 0:
        return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def has_accelerate() -> bool:
    """False: XLA, not Apple's Accelerate, runs the products (``candle::utils::has_accelerate``)."""
    return False


def has_mkl() -> bool:
    """False: XLA, not Intel MKL, runs the products (``candle::utils::has_mkl``)."""
    return False


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def with_avx() -> bool:
    """Whether this CPU has AVX (``candle::utils::with_avx``; XLA compiles for the CPU it runs on)."""
    return "avx" in _cpu_flags()


def with_f16c() -> bool:
    """Whether this CPU has F16C (``candle::utils::with_f16c``)."""
    return "f16c" in _cpu_flags()


def with_neon() -> bool:
    """Whether this is an ARM64 CPU (NEON) (``candle::utils::with_neon``)."""
    return platform.machine().lower() in ("arm64", "aarch64")


def with_simd128() -> bool:
    """False: no WebAssembly build (``candle::utils::with_simd128``)."""
    return False


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """``candle.utils.load_safetensors(path)``: every tensor of the file, on the CPU
    (:func:`candlejax.safetensors.load`)."""
    from candlejax import safetensors

    return safetensors.load(path, Device.Cpu)


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any]) -> None:
    """``candle.utils.save_safetensors(path, tensors)``: note the binding's argument order (path
    first); :func:`candlejax.safetensors.save` takes the tensors first, as Rust Candle does."""
    from candlejax import safetensors

    safetensors.save(tensors, path)


def load_gguf(path: str | os.PathLike, device: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``candle.utils.load_gguf(path, device=None)``: ``({name: QTensor}, {key: plain value})``
    (:class:`candlejax.io.gguf.Content` reads the same file lazily)."""
    from candlejax.io import gguf

    content = gguf.Content.read(errors.path_arg(path, "load_gguf"))
    dev = Device.coerce(device)
    tensors = {name: content.tensor(name, device=dev) for name in content.tensor_infos}
    metadata = {key: value.value for key, value in content.metadata.items()}
    return tensors, metadata


def save_gguf(
    path: str | os.PathLike,
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    metadata: Mapping[str, Any] | Iterable[tuple[str, Any]],
) -> None:
    """``candle.utils.save_gguf(path, tensors, metadata)``: ``{name: QTensor}`` and plain metadata
    values, written atomically (:func:`candlejax.io.gguf.write`). ``None`` for either raises
    ``ArgumentType`` (candle-pyo3: ``expected a dict``) and writes nothing."""
    from candlejax.io import gguf

    path = errors.path_arg(path, "save_gguf")
    for what, arg in (("tensors", tensors), ("metadata", metadata)):
        if arg is None:
            raise errors.ArgumentType(f"save_gguf: {what}: expected a dict, got None")
    gguf.write(path, metadata, tensors)


def load_ggml(path: str | os.PathLike, device: Any = None) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """``candle.utils.load_ggml(path, device=None)``: a legacy GGML / GGMF / GGJT file as
    ``({name: QTensor}, hparams, vocab)``: the seven hparams by name (``n_vocab``, ``n_embd``,
    ``n_mult``, ``n_head``, ``n_layer``, ``n_rot``, ``ftype``) and the vocabulary's tokens decoded as
    UTF-8 with U+FFFD for bad bytes (Rust's ``String::from_utf8_lossy``); read by
    :class:`candlejax.quantized.ggml_file.Content`."""
    from dataclasses import asdict

    from candlejax.quantized import ggml_file

    content = ggml_file.Content.read(errors.path_arg(path, "load_ggml"), Device.coerce(device))
    vocab = [word.decode("utf-8", errors="replace") for word, _ in content.vocab.token_score_pairs]
    return dict(content.tensors), asdict(content.hparams), vocab
