"""Packaging: the wheel holds candlejax (with models as candlejax.models) and nothing top-level else."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("candlejax-*.whl")
    return whl


def test_wheel_has_only_candlejax_top_level(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"candlejax", next(t for t in tops if t.endswith(".dist-info"))}
    assert "candlejax/models/__init__.py" in names
    assert "candlejax/py.typed" in names
    assert not any(n.startswith("models/") for n in names)
    if sys.platform == "linux" and platform.machine() == "x86_64":  # the native 4-bit kernel is compiled in
        assert any(n.startswith("candlejax/quantized/_native") and n.endswith(".so") for n in names), names


def test_models_importable_as_subpackage(tmp_path: Path) -> None:
    code = (
        "import importlib.util, candlejax.models as m; print(m.__file__);"
        " print(importlib.util.find_spec('models') is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    file, no_top_level = out.stdout.split()
    assert Path(file).resolve().parent == ROOT / "models"
    assert no_top_level == "True"


def test_lower_bounds_are_versions_that_run() -> None:
    """jax/jaxlib 0.6.0 have neither ``jax.extend.core.get_opaque_trace_state`` nor
    ``jax._src.core.trace_state_clean`` (nor ``jax._src.lib._jax``): ``Tensor.new`` raises there. optax
    before 0.2.4 has no ``warmup_constant_schedule``: ``import candlejax`` raises. jax 0.6.1 with optax
    0.2.4 and numpy 1.26 is the oldest set checked to run (Tensor, nn, optim, safetensors, quantized)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    oldest = {"jax": (0, 6, 1), "jaxlib": (0, 6, 1), "optax": (0, 2, 4)}
    pins = {d.split(">=")[0].strip(): tuple(int(p) for p in d.split(">=")[1].split(",")[0].split(".")) for d in deps
            if d.split(">=")[0].strip() in oldest}  # fmt: skip
    assert pins.keys() == oldest.keys() and all(pins[k] >= oldest[k] for k in oldest), pins


_FOREIGN_FFI_HANDLER = r"""
import ctypes, types
import candlejax
from candlejax.quantized import native

# an XLA FFI handler that reports an FFI API version the running jaxlib does not speak (a kernel built
# against a newer jaxlib): XLA queries it through the call frame's metadata extension and refuses it
class Version(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("ext", ctypes.c_void_p), ("major", ctypes.c_int),
                ("minor", ctypes.c_int)]
class Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("version", Version)]
class Extension(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.c_void_p),
                ("metadata", ctypes.POINTER(Metadata))]
class Frame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("ext", ctypes.POINTER(Extension))]

@ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(Frame))
def handler(frame):
    ext = frame.contents.ext
    if ext and ext.contents.type == 1:  # XLA_FFI_Extension_Metadata
        ext.contents.metadata.contents.version.major = 99
        ext.contents.metadata.contents.version.minor = 0
    return None

class Library:
    CandlejaxQMatmul = handler
    candlejax_native_isa = candlejax_native_set_isa = types.SimpleNamespace()

native._library_path = lambda: "_native.so"
native.ctypes.CDLL = lambda path: Library()
print(native.available())
print(candlejax.Tensor.new([1.0, 2.0]).sqr().to_vec1())
"""


def test_kernel_for_another_ffi_api_leaves_jax_working(tmp_path: Path) -> None:
    """A native kernel XLA refuses (built against a jaxlib whose FFI API the running one does not speak:
    a wheel compiled with jaxlib 0.10, run with jaxlib 0.6.1) is reported unavailable; it must not
    fail the CPU backend's start, which would break every computation in the process."""
    out = subprocess.run([sys.executable, "-c", _FOREIGN_FFI_HANDLER], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:2] == ["False", "[1.0, 4.0]"], out.stdout
