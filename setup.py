"""Packaging glue: the top-level ``models/`` folder installs as ``candlejax.models``, and the native
CPU kernels (``csrc/``: GGML block weights, f32 products and convolutions) are compiled when the
machine can.

The kernel is optional: without an x86-64 CPU, a C++17 compiler or jaxlib's XLA FFI headers the
build skips it with a warning and candlejax uses its pure-JAX path (``candlejax.quantized.native``).
"""

import os
import platform
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

core = find_packages(include=["candlejax", "candlejax.*"])
models = ["candlejax." + p for p in find_packages(include=["models", "models.*"])]


class OptionalNative(build_ext):
    """Adds jaxlib's FFI include folder; a failed compile leaves the package without the kernel."""

    def build_extensions(self) -> None:
        try:
            import jaxlib

            include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
        except ImportError:
            include = None
        if include is None or not os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")):
            print("candlejax: jaxlib's XLA FFI headers not found; the native kernel is not built", file=sys.stderr)
            self.extensions = []
            return
        for ext in self.extensions:
            ext.include_dirs.append(include)
        super().build_extensions()


native = []
if platform.machine().lower() in ("x86_64", "amd64") and sys.platform in ("linux", "darwin"):
    native.append(
        Extension(
            "candlejax.quantized._native",
            sources=[
                "csrc/native_common.cc",
                "csrc/quantized_matmul.cc",
                "csrc/f32_matmul.cc",
                "csrc/candle_sampling.cc",
            ],
            include_dirs=["csrc"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-Wno-return-type", "-Wno-attributes"],
            optional=True,
        )
    )

setup(
    packages=core + models,
    package_dir={"candlejax.models": "models"},
    ext_modules=native,
    cmdclass={"build_ext": OptionalNative},
)
