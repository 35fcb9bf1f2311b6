"""The public API surface: ``__all__`` lists, star imports, module paths as Candle spells them, the version."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STAR_MODULES = ["candlejax", "candlejax.nn", "candlejax.quantized", "candlejax.errors", "candlejax.tokenizer",
                "candlejax.nn.var_builder", "candlejax.io", "candlejax.generation", "candlejax.optional",
                "candlejax.shape", "candlejax.dtype", "candlejax.device", "candlejax.random"]  # fmt: skip

# Python's own builtins (read in a fresh interpreter: a test that imported IPython adds names to this
# process's builtins) and the ones a notebook adds: a star import in a notebook must not hide `display`.
PRISTINE_BUILTINS = set(
    subprocess.run([sys.executable, "-I", "-S", "-c", "import builtins; print(*dir(builtins))"],
                   capture_output=True, text=True, check=True).stdout.split()
)  # fmt: skip
NOTEBOOK_BUILTINS = {"display", "get_ipython"}


@pytest.mark.parametrize("name", STAR_MODULES)
def test_star_import_defines_every_name_and_shadows_no_builtin(name: str) -> None:
    ns: dict = {}
    exec(f"from {name} import *", ns)
    names = set(ns) - {"__builtins__"}
    assert names == set(importlib.import_module(name).__all__)
    assert not [n for n in names if n in PRISTINE_BUILTINS | NOTEBOOK_BUILTINS]


@pytest.mark.parametrize("name", ["candlejax.shape", "candlejax.dtype", "candlejax.device", "candlejax.random"])
def test_star_import_of_core_modules_binds_no_private_or_imported_name(name: str) -> None:
    ns: dict = {}
    exec(f"from {name} import *", ns)
    ns.pop("__builtins__")
    assert not [n for n in ns if n.startswith("_")]
    assert not [n for n, v in ns.items() if isinstance(v, types.ModuleType)], sorted(ns)
    assert not {"jax", "np", "errors", "random", "enum", "functools", "operator", "Any"} & set(ns)


def test_core_modules_all_lists_the_names_docs_and_tests_import() -> None:
    import candlejax.device
    import candlejax.dtype
    import candlejax.random
    import candlejax.shape

    for mod, names in [(candlejax.dtype, ("DType", "to_dtype", "check_width", "x64_enabled", "enable_x64",
                                          "from_array_dtype", "NUMPY_TO_DTYPE")),
                       (candlejax.device, ("Device", "DeviceLocation", "single_device", "refresh_device_count")),
                       (candlejax.shape, ("D", "Dim", "Dims", "Shape", "Layout", "Rank", "as_shape", "resolve_dim",
                                          "resolve_dims", "broadcast_shapes", "check_elem_count", "shape_with_hole",
                                          "MAX_ELEM_COUNT", "CallableInt", "PLAIN_SHAPE_TYPES")),
                       (candlejax.random, ("key", "key_scope", "set_seed", "get_seed", "split",
                                           "DEFAULT_SEED"))]:  # fmt: skip
        for n in names:
            assert n in mod.__all__, (mod.__name__, n)


def test_image_file_errors_are_in_candlejax_errors() -> None:
    # as errors.AudioNoSuchFile / AudioIsADirectory; the vision module's path keeps working
    from candlejax import errors, vision
    from candlejax.vision import _image

    assert errors.ImageNoSuchFile is _image.ImageNoSuchFile and errors.ImageIsADirectory is _image.ImageIsADirectory
    assert errors.ImageError is vision.ImageError is _image.ImageError
    for n in ("ImageError", "ImageNoSuchFile", "ImageIsADirectory"):
        assert n in errors.__all__, n
    assert issubclass(errors.ImageNoSuchFile, FileNotFoundError)
    assert issubclass(errors.ImageNoSuchFile, errors.NoSuchFile)
    assert issubclass(errors.ImageIsADirectory, IsADirectoryError)


def test_star_import_of_models_binds_no_helper() -> None:
    ns: dict = {}
    exec("from candlejax.models import *", ns)
    ns.pop("__builtins__")
    # only the model modules already imported (as any package without __all__), never importlib & co
    assert all(getattr(v, "__name__", "") == f"candlejax.models.{k}" for k, v in ns.items()), sorted(ns)


def test_star_imports_keep_each_name_on_one_object() -> None:
    # candle::quantized has no VarBuilder (the GGUF one is candle_transformers::quantized_var_builder's), and
    # candle_nn::optim holds four of cj.optim's names: star imports of nn / quantized rebind neither
    import candlejax
    import candlejax.nn

    ns: dict = {}
    exec("from candlejax import *\nfrom candlejax.nn import *\nfrom candlejax.quantized import *", ns)
    assert ns["VarBuilder"] is candlejax.nn.VarBuilder
    assert ns["optim"] is candlejax.optim
    from candlejax.quantized import VarBuilder as QVarBuilder  # still importable by name

    assert QVarBuilder is not candlejax.nn.VarBuilder


def test_errors_all_lists_the_warnings_and_os_error() -> None:
    # documented in docs/differences/nn.md (ConstantVarWarning) beside RecompileWarning, which is listed
    import candlejax.errors as errors

    for n in ("ConstantVarWarning", "RecompileWarning", "os_error"):
        assert n in errors.__all__, n


def test_tokenizer_all_lists_the_documented_padding_types() -> None:
    # docs/differences/generation.md: "PaddingStrategy.Fixed(n), PaddingDirection, TruncationParams are in
    # candlejax.tokenizer"; Tokenizer.encode returns an Encoding
    import candlejax.tokenizer as tok

    for n in ("PaddingStrategy", "PaddingDirection", "PaddingParams", "TruncationParams", "Encoding"):
        assert n in tok.__all__, n


def test_var_builder_all_lists_sharded_safetensors() -> None:
    # candle-nn/src/var_builder.rs: pub struct ShardedSafeTensors, pub struct Shard; PthBackend is NpzBackend's sibling
    import candlejax.nn.var_builder as vb

    for n in ("ShardedSafeTensors", "Shard", "PthBackend", "NpzBackend"):
        assert n in vb.__all__, n


# Candle's module paths (candle_nn::optim::AdamW, candle::quantized::ggml_file, candle::pickle) and the
# README's `cj.generation`, `cj.audio`, `cj.io.gguf` reached as attributes after `import candlejax` alone
ATTRIBUTE_PATHS = {  # (candle_transformers::models::whisper first: nothing before it imports it)
    "cj.models.whisper.Config": "candlejax.models.whisper",
    "cj.nn.optim.AdamW": "candlejax.optim",
    "cj.quantized.ggml_file.Content": "candlejax.quantized.ggml_file",
    "cj.quantized.gguf_file.Content": "candlejax.io.gguf",
    "cj.io.gguf.Content": "candlejax.io.gguf",
    "cj.pickle.read_all": "candlejax.io.pth",
    "cj.test_utils.to_vec2_round": "candlejax.testing",
    "cj.generation.LogitsProcessor": "candlejax.generation",
    "cj.audio": "candlejax.audio",
    "cj.vision": "candlejax.vision",
    "cj.tokenizer.Tokenizer": "candlejax.tokenizer",
    "cj.examples": "candlejax.examples",
    "cj.pipelines": "candlejax.pipelines",
    "cj.models.with_tracing.Linear": "candlejax.models.with_tracing",
    "cj.models.object_detection.Bbox": "candlejax.models.object_detection",
}


def test_candle_module_paths_are_attributes_after_import_candlejax() -> None:
    code = ["import candlejax as cj"]
    for path in ATTRIBUTE_PATHS:
        code.append(f"o = {path}; print(getattr(o, '__module__', None) or o.__name__)")
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    got = out.stdout.split()
    assert len(got) == len(ATTRIBUTE_PATHS)
    for path, module, where in zip(ATTRIBUTE_PATHS, ATTRIBUTE_PATHS.values(), got, strict=True):
        assert where == module or where.startswith(module + "."), (path, where)


def test_unknown_attribute_is_an_attribute_error() -> None:
    import candlejax as cj

    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        cj.no_such_thing  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        cj.io.no_such_thing  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        cj.models.no_such_thing  # noqa: B018
    assert not hasattr(cj, "no_such_thing")


def test_version_matches_the_packaging_metadata() -> None:
    import candlejax

    with open(ROOT / "pyproject.toml", "rb") as f:
        assert candlejax.__version__ == tomllib.load(f)["project"]["version"]
    try:
        installed = importlib.metadata.version("candlejax")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("candlejax is not installed (run from a checkout)")
    assert candlejax.__version__ == installed


def test_cli_version_prints_the_version() -> None:
    import candlejax

    out = subprocess.run([sys.executable, "-m", "candlejax", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"candlejax {candlejax.__version__}"



def test_every_candle_error_variant_defined_in_errors_is_an_error_attribute() -> None:
    # candle-core/src/error.rs: `Error::UnwrapNone`, `Error::WrappedContext { .. }` beside `Error::Msg`, ...
    import candlejax.errors as errors
    from candlejax import Error

    for name in ("UnwrapNone", "WrappedContext", "Context", "Wrapped", "WithPath", "Msg", "DimOutOfRange"):
        assert getattr(Error, name) is getattr(errors, name), name
    with pytest.raises(Error.Context) as info:  # Candle: Error::UnwrapNone.context(context())
        errors.with_context(None, lambda: "no value")
    assert isinstance(info.value.inner, Error.UnwrapNone)
