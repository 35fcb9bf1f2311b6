"""The public API's annotations resolve at runtime (the package ships ``py.typed``).

Every public module, class, function, method and property of ``candlejax`` and ``candlejax.models``
(no leading underscore; in ``__all__`` where a module defines it) must pass
``typing.get_type_hints``, as IDEs and runtime checkers (typeguard, pydantic, beartype) call it.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import candlejax


def _modules() -> Iterator[Any]:
    yield candlejax
    for info in pkgutil.walk_packages(candlejax.__path__, "candlejax."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        try:
            yield importlib.import_module(info.name)
        except ModuleNotFoundError as e:  # an optional third-party dependency
            if (e.name or "").startswith("candlejax"):
                raise


def _public(mod: Any) -> Iterator[tuple[str, Any]]:
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n in vars(mod) if not n.startswith("_")]
    for name in names:
        obj = getattr(mod, name)
        if (getattr(obj, "__module__", None) or "").startswith("candlejax"):
            yield f"{mod.__name__}.{name}", obj


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    """Own and inherited (mixin) methods and properties of a candlejax class."""
    for klass in cls.__mro__:
        if not klass.__module__.startswith("candlejax"):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") and name not in ("__init__", "__call__"):
                continue
            if isinstance(attr, (staticmethod, classmethod)):
                attr = attr.__func__
            elif isinstance(attr, property):
                attr = attr.fget
            if inspect.isfunction(attr):
                yield name, attr


def _targets() -> Iterator[tuple[str, Any]]:
    seen: set[int] = set()
    for mod in _modules():
        for qual, obj in [(mod.__name__, mod), *_public(mod)]:
            if id(obj) in seen or isinstance(obj, enum.Enum):
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                yield qual, obj
                for name, fn in _members(obj):
                    if id(fn) not in seen:
                        seen.add(id(fn))
                        yield f"{qual}.{name}", fn
            elif inspect.ismodule(obj) or inspect.isfunction(obj):
                yield qual, obj


def test_public_annotations_resolve() -> None:
    failures = []
    count = 0
    for qual, obj in _targets():
        count += 1
        try:
            typing.get_type_hints(obj)
        except Exception as e:
            failures.append(f"{qual}: {type(e).__name__}: {e}")
    assert count > 1000, count
    assert not failures, "\n".join(failures)


def test_tensor_accessor_annotations() -> None:
    """The annotations of the accessors candle-pyo3's stub types (``candle/__init__.pyi``)."""
    hints = typing.get_type_hints(candlejax.Tensor.to_vec1)
    assert hints["return"] == list[Any]
    assert typing.get_type_hints(candlejax.Tensor.is_contiguous)["return"] is bool


def test_tensor_methods_return_tensor_hints() -> None:
    """Tensor methods say they return a ``Tensor`` (candle-pyo3's stub: ``-> Tensor``), so type checkers
    follow ``x.matmul(y).exp()``; the mixin modules resolve the name at runtime."""
    Tensor = candlejax.Tensor
    for name in ("matmul", "exp", "narrow", "to_dtype", "broadcast_add", "sum_keepdim", "__add__", "__getitem__"):
        assert typing.get_type_hints(getattr(Tensor, name))["return"] is Tensor, name
    assert typing.get_type_hints(Tensor.randn)["return"] is Tensor
    assert typing.get_type_hints(Tensor.chunk)["return"] == list[Tensor]
    assert typing.get_type_hints(Tensor.sort_last_dim)["return"] == tuple[Tensor, Tensor]
    assert typing.get_type_hints(Tensor.quantize)["return"] is candlejax.QTensor


def test_jitted_model_entry_points_resolve() -> None:
    """A compiled entry point (``candlejax.models.bert.forward_jit``) carries the annotations and
    signature of the function it compiles, as ``jax.jit``'s wrappers do."""
    from candlejax.models import bert

    fn = bert.forward_jit
    assert typing.get_type_hints(fn) == typing.get_type_hints(fn.__wrapped__)
    assert inspect.signature(fn) == inspect.signature(fn.__wrapped__)


def test_d_minus_constants_are_declared() -> None:
    """``D.Minus1`` / ``D.Minus2`` are set after the class body; the class declares them
    (``ClassVar[D]``) so type checkers see Candle's ``D::Minus1`` as an attribute of ``D``."""
    from candlejax.shape import D

    hints = typing.get_type_hints(D)
    assert hints["Minus1"] == typing.ClassVar[D] and hints["Minus2"] == typing.ClassVar[D]
    assert isinstance(D.Minus1, D) and int(D.Minus1) == -1 and int(D.Minus2) == -2


def test_module_aliases_declare_their_names() -> None:
    """``candlejax.pickle``, ``candlejax.quantized.gguf_file`` and ``candlejax.data.nlp.tinystories``
    replace themselves in ``sys.modules``; an ``if TYPE_CHECKING:`` import declares the names of the
    module each becomes, so type checkers see ``gguf_file.Content`` (as Candle's
    ``use candle_core::quantized::gguf_file::Content``). Each declared name exists at runtime."""
    import ast

    aliases = {
        "candlejax.pickle": "candlejax.io.pth",
        "candlejax.quantized.gguf_file": "candlejax.io.gguf",
        "candlejax.data.nlp.tinystories": "candlejax.data.tinystories",
    }
    for name, target in aliases.items():
        mod = importlib.import_module(name)
        assert mod is importlib.import_module(target), name
        parent, _, leaf = name.rpartition(".")
        path = Path(importlib.import_module(parent).__file__ or "").parent / f"{leaf}.py"  # the alias's own file
        tree = ast.parse(path.read_text())
        declared = [
            node
            for block in tree.body
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for node in block.body
            if isinstance(node, ast.ImportFrom) and node.module == target
        ]
        assert declared, f"{name}: no `if TYPE_CHECKING: from {target} import ...`"
        for node in declared:
            names = [a.name for a in node.names]
            if names == ["*"]:
                names = list(mod.__all__)
            for n in names:
                assert hasattr(mod, n), f"{name}.{n}"


def test_activation_variants_are_declared() -> None:
    """Every unit variant of ``Activation`` (set after the class body, one instance each) is declared
    ``ClassVar[Activation]``, so type checkers see Candle's ``Activation::Relu`` as ``Activation.Relu``."""
    from candlejax.nn.activation import _VARIANTS, Activation

    hints = typing.get_type_hints(Activation)
    units = [v for v in _VARIANTS if isinstance(getattr(Activation, v), Activation)]
    assert len(units) == 15, units
    for v in units:
        assert hints.get(v) == typing.ClassVar[Activation], v
        assert isinstance(getattr(Activation, v), Activation) and getattr(Activation, v).variant == v


def test_error_variants_are_declared() -> None:
    """``Error.Msg``, ``Error.DimOutOfRange``, ... (Candle's ``candle::Error::Msg``; set on the class after
    the subclasses exist) are declared ``ClassVar[type[...]]``, so type checkers accept
    ``raise Error.Msg("...")`` and ``except Error.DimOutOfRange``."""
    from candlejax import errors

    hints = typing.get_type_hints(errors.Error)
    for name in errors._CANDLE_VARIANTS:
        cls = getattr(errors, name)
        assert getattr(errors.Error, name) is cls, name
        assert hints.get(name) == typing.ClassVar[type[cls]], name


def test_variant_constants_set_after_the_class_are_declared() -> None:
    """Candle's unit variants set on a class after its body (``NonLinearity::ReLU``,
    ``ChatTemplateError::RenderError``) are declared as ``ClassVar`` there, so type checkers see them;
    the declarations are not dataclass fields."""
    import dataclasses

    from candlejax.examples import chat_template
    from candlejax.nn.init import NonLinearity

    hints = typing.get_type_hints(NonLinearity)
    for v in ("ReLU", "Linear", "Sigmoid", "Tanh", "SELU"):
        assert hints[v] == typing.ClassVar[NonLinearity] and isinstance(getattr(NonLinearity, v), NonLinearity), v
    assert [f.name for f in dataclasses.fields(NonLinearity)] == ["kind", "explicit"]
    err = chat_template.ChatTemplateError
    hints = typing.get_type_hints(err)
    for v in ("IoError", "ParseError", "TemplateError", "RenderError", "NoTemplate"):
        cls = getattr(chat_template, v)
        assert hints[v] == typing.ClassVar[type[cls]] and getattr(err, v) is cls, v


def test_var_constructors_are_declared_returning_var() -> None:
    """``Var.randn``, ``Var.from_vec``, ... (Candle's ``Var::randn``) are made at import from the Tensor
    constructors; ``Var`` declares each for type checkers (``if TYPE_CHECKING:``), returning ``Var``
    with the Tensor constructor's parameters, so ``w: Var = Var.randn(...)`` checks."""
    import ast

    from candlejax.nn import module

    Var, Tensor = module.Var, candlejax.Tensor
    made = {
        n for n, a in vars(Var).items()
        if isinstance(a, staticmethod) and (a.__doc__ or "").endswith("returning a trainable Var.")
    }  # fmt: skip
    cls = next(n for n in ast.parse(inspect.getsource(module)).body if isinstance(n, ast.ClassDef) and n.name == "Var")
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    stubs = {f.name: f for f in block.body if isinstance(f, ast.FunctionDef)}
    assert made and set(stubs) == made, sorted(set(stubs) ^ made)
    for name, f in stubs.items():
        assert ast.unparse(f.returns) == "Var", name
        declared = [a.arg for a in (*f.args.args, *f.args.kwonlyargs)]
        assert declared == list(inspect.signature(getattr(Tensor, name)).parameters), name
        assert isinstance(getattr(Var, name)(*_sample_args(name)), Var), name


def _sample_args(name: str) -> tuple[Any, ...]:
    import numpy as np

    from candlejax import DType

    return {
        "from_vec": ([1.0, 2.0], (2,)), "from_slice": ([1.0, 2.0], (2,)), "from_iter": ([1.0, 2.0],),
        "from_numpy": (np.zeros(2, np.float32),), "from_jax": (np.zeros(2, np.float32),), "full": (1.0, (2,)),
        "arange": (0, 3), "arange_step": (0.0, 1.0, 0.5), "eye": (2,), "rand": (0.0, 1.0, (2,)),
        "randn": (0.0, 1.0, (2,)), "rand_f64": (0.0, 1.0, (2,), DType.F32),
        "randn_f64": (0.0, 1.0, (2,), DType.F32), "empty": ((2,),),
    }[name]  # fmt: skip


def test_callable_tensor_package_is_declared() -> None:
    """``candlejax.tensor(data)`` (candle-pyo3's ``candle.tensor``) calls the package ``candlejax.tensor``;
    ``candlejax/__init__.py`` declares it for type checkers with the package's runtime type, whose
    ``__call__`` returns a Tensor."""
    import ast

    tree = ast.parse(Path(candlejax.__file__ or "").read_text())
    declared = [
        ast.unparse(node.annotation)
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
        for node in block.body
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "tensor"
    ]
    pkg = candlejax.tensor
    assert declared == [type(pkg).__name__], declared
    assert typing.get_type_hints(type(pkg).__call__)["return"] is candlejax.Tensor
    assert pkg([1.0, 2.0]).to_vec1() == [1.0, 2.0]


def test_tensor_attributes_are_declared_in_class_bodies() -> None:
    """Every public Tensor attribute is defined in the body of a candlejax class of its MRO (none is
    added afterwards), so type checkers see them all; ``Tensor.__getattr__`` (which only raises, with
    a pointer for PyTorch names) is hidden from them, so a misspelt method is flagged, not typed ``Any``."""
    import ast

    Tensor = candlejax.Tensor
    defined: set[str] = set()
    hidden = []
    for klass in Tensor.__mro__:
        if not klass.__module__.startswith("candlejax"):
            continue
        cls = ast.parse(inspect.getsource(klass)).body[0]
        assert isinstance(cls, ast.ClassDef)
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
            elif isinstance(node, ast.If) and ast.unparse(node.test) == "not TYPE_CHECKING":
                hidden += [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
    missing = [n for n in dir(Tensor) if not n.startswith("_") and n not in defined]
    assert not missing, missing
    assert "__getattr__" in hidden and hasattr(Tensor, "__getattr__")


def test_params_adamw_lr_hint_admits_a_schedule() -> None:
    """``ParamsAdamW(lr=cj.optim.cosine_decay_schedule(1e-3, 10_000))`` (docs/differences/optim-data.md)
    is accepted, and ``lr``'s annotation says so (``float | Schedule``), as ``SGD.new``'s does."""
    import collections.abc

    from candlejax import optim

    args = typing.get_args(typing.get_type_hints(optim.ParamsAdamW)["lr"])
    assert float in args and any(typing.get_origin(a) is collections.abc.Callable for a in args), args
    assert callable(optim.ParamsAdamW(lr=optim.cosine_decay_schedule(1e-3, 10_000)).lr)


def test_var_builder_prefix_hints_take_any_to_string() -> None:
    """Candle's ``pp`` / ``push_prefix`` / ``set_prefix`` take ``impl ToString`` (candle-nn/src/var_builder.rs):
    ``vb.set_prefix(3)`` works, and the annotations do not narrow it to ``str``."""
    from candlejax import Device, DType
    from candlejax.nn import VarBuilder, VarMap

    for name in ("pp", "push_prefix", "set_prefix"):
        assert typing.get_type_hints(getattr(VarBuilder, name))["s"] is Any, name
    vb = VarBuilder.from_varmap(VarMap(), DType.F32, Device.Cpu)
    assert vb.set_prefix(3).prefix() == "3" and vb.pp("layers").pp(0).prefix() == "layers.0"


def test_tensor_equality_operators_are_declared_returning_tensor() -> None:
    """``t == 1.0`` / ``t != u`` give a u8 Tensor (candle-pyo3's ``Tensor.__eq__``). Assigned in the class
    body (``__eq__ = _op_method("eq")``), type checkers would keep ``object.__eq__``'s ``-> bool``, so
    the class declares them (``if TYPE_CHECKING:``) returning ``Tensor``."""
    import ast

    from candlejax.tensor import elementwise

    Tensor = candlejax.Tensor
    cls = next(n for n in ast.parse(inspect.getsource(elementwise)).body
               if isinstance(n, ast.ClassDef) and n.name == "ElementwiseMixin")  # fmt: skip
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    declared = {f.name: ast.unparse(f.returns) for f in block.body if isinstance(f, ast.FunctionDef)}
    assert declared == {"__eq__": "Tensor", "__ne__": "Tensor"}, declared
    t = Tensor.new([1.0, 2.0])
    for name in ("__eq__", "__ne__"):
        assert typing.get_type_hints(getattr(Tensor, name))["return"] is Tensor, name
    assert isinstance(t == 1.0, Tensor) and (t == 1.0).to_vec1() == [1, 0] and (t != t).to_vec1() == [0, 0]
