"""candle-core/src/error.rs: ``Error::msg / wrap / debug`` and ``err.context(c) / err.with_path(p)``,
with the Display formats of their variants (``Msg``/``Wrapped``: ``{0}``; ``Context``:
``{context}\\n{inner}``; ``WithPath``: ``path: {path:?} {inner}``)."""

from __future__ import annotations

import pytest

import candlejax as cj
from candlejax import Tensor, errors


def test_error_constructors_follow_candle():
    e = cj.Error.msg("bad value 3")
    assert isinstance(e, errors.Msg) and isinstance(e, cj.Error) and str(e) == "bad value 3"
    assert str(cj.Error.msg(42)) == "42"
    assert str(cj.Error.debug("a b")) == "'a b'"  # Rust: format!("{err:?}") of a str quotes it
    io = FileNotFoundError(2, "No such file or directory")
    w = cj.Error.wrap(io)
    assert isinstance(w, errors.Wrapped) and w.inner is io and str(w) == str(io) and w.__cause__ is io
    with pytest.raises(cj.Error, match=r"^bad value 3$"):
        raise cj.Error.msg("bad value 3")


def test_context_and_with_path_wrap_the_error():
    with pytest.raises(cj.Error) as info:
        Tensor.new([1.0, 2.0]).add(Tensor.new([1.0, 2.0, 3.0]))
    inner = info.value
    ctx = inner.context("loading layer 3")
    assert isinstance(ctx, errors.Context) and ctx.inner is inner and ctx.__cause__ is inner
    assert str(ctx) == f"loading layer 3\n{inner}"
    assert str(ctx).splitlines()[1].startswith("shape mismatch in add, lhs: [2], rhs: [3]")
    wp = cj.Error.msg("unexpected eof").with_path("/tmp/m.safetensors")
    assert isinstance(wp, errors.WithPath) and str(wp) == 'path: "/tmp/m.safetensors" unexpected eof'
    assert str(errors.Msg("x").with_path('a"b\\c')) == 'path: "a\\"b\\\\c" x'
    # context of a context stacks lines, outermost first (Candle's Display recursion)
    assert str(ctx.context("model load")).splitlines()[:2] == ["model load", "loading layer 3"]


def test_variants_spelled_as_in_rust():
    # candle::Error::Msg(..), candle::Error::DimOutOfRange { .. }: the variant classes hang off Error
    assert cj.Error.Msg is errors.Msg and cj.Error.DimOutOfRange is errors.DimOutOfRange
    assert cj.Error.UnexpectedShape is errors.UnexpectedShape and cj.Error.Wrapped is errors.Wrapped
    with pytest.raises(cj.Error.DimOutOfRange, match="narrow: dimension index 2 out of range for shape"):
        Tensor.new([1.0, 2.0]).narrow(2, 0, 1)
    with pytest.raises(cj.Error, match=r"^custom$"):
        raise cj.Error.Msg("custom")
    assert str(cj.Error.UnsupportedDTypeForOp(cj.DType.U32, "matmul")) == "unsupported dtype U32 for op matmul"
