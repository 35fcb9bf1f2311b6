"""Bad input gets a candlejax error: crafted npy/GGUF files (tests/fuzz_corpus.py), out-of-range
class targets, NaN logits and temperatures, killed saves, out-of-memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch

import candlejax as cj
from candlejax import DType, Tensor, errors, npy
from candlejax.generation import LogitsProcessor, Sampling, normalize_sampling, sampling_from_args
from candlejax.io import gguf
from candlejax.nn import loss

import fuzz_corpus  # isort: skip  (tests/fuzz_corpus.py: an error importing it fails the file, never skips it)


# --- item 5: npy headers are capped before parsing -------------------------------------------------
@pytest.mark.parametrize("case", fuzz_corpus.npy_cases(), ids=lambda c: c[0])
def test_crafted_npy_files_raise_npy_errors(tmp_path, case):
    name, data, expected = case
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(errors.Npy, match=expected):
        npy.read_npy(p)


def test_huge_npy_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 30 MB header used to go through ast.literal_eval (minutes, GiBs); now only its length is read."""
    import ast

    p = tmp_path / "big.npy"
    p.write_bytes(fuzz_corpus.npy_bytes("{'shape': (" + "1, " * 10_000_000 + ")}", version=2))
    monkeypatch.setattr(ast, "literal_eval", lambda *_: pytest.fail("the header was parsed"))
    with pytest.raises(errors.Npy, match="10000-byte limit"):
        npy.read_npy(p)
    with pytest.raises(ValueError):  # numpy refuses it too
        np.load(p)


def test_npy_rank_64_still_reads(tmp_path):
    a = np.zeros((1,) * 64, np.float32)
    np.save(tmp_path / "r64.npy", a)
    assert npy.read_npy(tmp_path / "r64.npy").shape == a.shape


def test_npy_mutations_raise_only_candlejax_errors(tmp_path):
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    data = (tmp_path / "ok.npy").read_bytes()
    for i, m in enumerate(fuzz_corpus.mutations(data, seed=0, n=200)):
        p = tmp_path / f"m{i}.npy"
        p.write_bytes(m)
        try:
            npy.read_npy(p)
        except errors.Error:
            pass


# --- item 4 (container part) and 7: GGUF metadata ------------------------------------------------------
@pytest.mark.parametrize("case", fuzz_corpus.gguf_cases(), ids=lambda c: c[0])
def test_crafted_gguf_files_raise_gguf_errors(case):
    _name, data, expected = case
    with pytest.raises(errors.Gguf, match=expected):
        gguf.Content.read(data)


def test_duplicate_gguf_metadata_key_is_refused():
    """The second llama.block_count (10^9) used to silently override the first."""
    entries = fuzz_corpus.llama_entries()
    dup = fuzz_corpus.kv("llama.block_count", fuzz_corpus.U32, 10**9)
    with pytest.raises(errors.Gguf, match=r"duplicate metadata key 'llama\.block_count'"):
        gguf.Content.read(fuzz_corpus.gguf_bytes([*entries, dup]))
    assert gguf.Content.read(fuzz_corpus.gguf_bytes(entries)).get_int("llama.block_count") == 1


def _llama_caps(ct: gguf.Content) -> None:
    """The checks a loader makes with the typed getters before allocating anything."""
    ct.get_str("general.architecture", choices=["llama"])
    hidden = ct.get_int("llama.embedding_length", min=1, max=1 << 16)
    heads = ct.get_int("llama.attention.head_count", min=1, max=hidden)
    ct.get_int("llama.block_count", min=1, max=1024)
    ct.get_int("llama.rope.dimension_count", min=1, max=hidden // heads)
    ct.get_float("llama.rope.freq_base", positive=True)


@pytest.mark.parametrize("case", fuzz_corpus.gguf_metadata_cases(), ids=lambda c: c[0])
def test_gguf_metadata_getters_name_the_key(case):
    _name, data, key, expected = case
    ct = gguf.Content.read(data)
    with pytest.raises(errors.Gguf, match=expected) as e:
        _llama_caps(ct)
    assert repr(key) in str(e.value) and "<bytes>" in str(e.value)


def test_gguf_getters_accept_a_valid_file_and_defaults():
    ct = gguf.Content.read(fuzz_corpus.gguf_bytes(fuzz_corpus.llama_entries(), [("w", (2, 8), 0)]))
    _llama_caps(ct)
    assert ct.get_float("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert ct.get_int("llama.missing", 7) == 7 and ct.get_str("x.y", None) is None
    assert ct.expect_shape("w", (2, 8)).shape == (2, 8)
    with pytest.raises(errors.Gguf, match=r"tensor 'w' has shape \[2, 8\], the metadata implies \[8, 2\]"):
        ct.expect_shape("w", (8, 2))
    with pytest.raises(errors.Gguf, match="missing tensor 'v'"):
        ct.expect_shape("v", (1,))
    with pytest.raises(errors.Gguf, match=r"'general\.architecture' is 'llama'; supported: phi3, qwen2"):
        ct.get_str("general.architecture", choices=["qwen2", "phi3"])
    with pytest.raises(errors.Gguf, match="must be a string"):
        ct.get_str("llama.block_count")


def test_gguf_mutations_raise_only_candlejax_errors():
    data = fuzz_corpus.gguf_bytes(fuzz_corpus.llama_entries(), [("w", (2, 8), 0)])
    for m in fuzz_corpus.mutations(data, seed=1, n=300):
        try:
            gguf.Content.read(m)
        except errors.Error:
            pass


def test_fuzz_corpus_script_writes_files(tmp_path):
    paths = fuzz_corpus.write_corpus(tmp_path)
    assert len(paths) == len(fuzz_corpus.npy_cases()) + len(fuzz_corpus.gguf_cases()) + len(
        fuzz_corpus.gguf_metadata_cases()
    )


# --- item 6: out-of-range class targets ---------------------------------------------------------------
@pytest.mark.parametrize("fn", ["cross_entropy", "nll"])
@pytest.mark.parametrize("bad", [5, 2, -1])
def test_out_of_range_targets_raise_like_torch(fn, bad):
    logits = np.array([[0.1, 0.2], [0.3, -0.4]], np.float32)
    tgt = np.array([0, bad], np.int32)
    with pytest.raises((IndexError, RuntimeError)):  # torch refuses it too
        getattr(torch.nn.functional, "cross_entropy" if fn == "cross_entropy" else "nll_loss")(
            torch.tensor(logits), torch.tensor(tgt, dtype=torch.long)
        )
    with pytest.raises(errors.Error, match=f"target {bad} at batch index 1 is out of bounds for 2 classes"):
        getattr(loss, fn)(Tensor.new(logits), Tensor.new(tgt))


def test_in_range_targets_match_torch():
    logits = np.array([[0.1, 0.2], [0.3, -0.4]], np.float32)
    tgt = np.array([1, 0], np.int32)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(tgt, dtype=torch.long))
    got = loss.cross_entropy(Tensor.new(logits), Tensor.new(tgt).to_dtype(DType.U32))
    np.testing.assert_allclose(got.to_scalar(), ref.item(), rtol=1e-6)


def test_check_finite_under_jit():
    logits = Tensor.new(np.array([[0.1, 0.2]], np.float32))
    step = jax.jit(lambda l, t: loss.check_finite(loss.cross_entropy(l, t)))
    assert np.isfinite(step(logits, Tensor.new(np.array([1], np.int32))).to_scalar())
    unchecked = jax.jit(lambda l, t: loss.cross_entropy(l, t))(logits, Tensor.new(np.array([5], np.int32)))
    assert np.isnan(unchecked.to_scalar())  # what happens under jit without the check (documented)
    with pytest.raises(Exception, match="check_finite: loss contains NaN or inf"):
        step(logits, Tensor.new(np.array([5], np.int32))).to_scalar()
    with pytest.raises(errors.Msg, match="check_finite: x contains NaN"):
        loss.check_finite(Tensor.new([1.0, float("nan")]), "x")


# --- item 7: NaN logits, NaN temperature, empty logits ------------------------------------------------
@pytest.mark.parametrize("temperature", [None, 0.8])
def test_all_nan_logits_raise(temperature):
    nan = Tensor.new(np.full(5, np.nan, np.float32))
    lp = LogitsProcessor(0, temperature)
    with pytest.raises(errors.Msg, match="all logits are NaN"):
        lp.sample(nan)
    with pytest.raises(errors.Msg, match="1 of 3 logits are NaN"):
        lp.sample_f(Tensor.new([0.0, float("nan"), 1.0]), lambda p: p)
    with pytest.raises(errors.Msg, match="logits are empty"):
        lp.sample(Tensor.new(np.zeros(0, np.float32)))


def test_nan_temperature_raises():
    with pytest.raises(errors.Msg, match="temperature is NaN"):
        LogitsProcessor(0, float("nan"))
    with pytest.raises(errors.Msg, match="temperature is NaN"):
        normalize_sampling(Sampling.All(float("nan")))
    with pytest.raises(errors.Msg, match="temperature is NaN"):
        sampling_from_args(float("nan"), top_k=3)
    assert LogitsProcessor(0, 0.0).sample(Tensor.new([0.0, 2.0, 1.0])) == 1  # greedy stays greedy


# --- item 7: killed saves leave no temporary files behind --------------------------------------------
def test_next_save_removes_a_killed_saves_temporary_file(tmp_path):
    target = tmp_path / "m.safetensors"
    cj.safetensors.save({"a": Tensor.new([1.0])}, str(target))
    code = textwrap.dedent(f"""
        import os, signal
        from candlejax.io.safetensors import atomic_file
        with atomic_file({str(target)!r}) as f:
            f.write(b"partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert r.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".m.safetensors.")
    np.testing.assert_array_equal(np.asarray(cj.safetensors.load(str(target))["a"]), [1.0])  # old file intact

    # a live writer's temporary file of the same target is left alone
    from candlejax.io.safetensors import atomic_file

    with atomic_file(target) as f:
        f.write(b"x")
        cj.safetensors.save({"a": Tensor.new([2.0])}, str(target))
        live = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(live) == 1 and live[0] != stale[0]  # the killed one is gone, the open one stays
        f.seek(0)
        f.write(open(target, "rb").read())
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    np.testing.assert_array_equal(np.asarray(cj.safetensors.load(str(target))["a"]), [2.0])


def test_a_failed_write_is_a_candlejax_error_naming_the_target(tmp_path):
    """A write that fails (here past ``RLIMIT_FSIZE``: ``EFBIG``, as a full disk gives ``ENOSPC``) raises
    a candlejax ``FileAccess`` naming the target, keeping the ``OSError`` and its errno; the
    temporary file is removed and the previous file is intact (``open(path, "wb").write`` raises a
    bare ``OSError``)."""
    target = tmp_path / "m.npy"
    npy.write_npy(Tensor.new([1.0, 2.0]), str(target))
    code = textwrap.dedent(f"""
        import errno, os, resource, signal
        import numpy as np
        from candlejax import Tensor, errors, npy
        from candlejax.io import atomic_file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        def save_big():
            npy.write_npy(Tensor.new(np.zeros(10_000, np.float32)), {str(target)!r})
        def write_big():
            with atomic_file({str(target)!r}) as f:
                f.write(b"x" * 10_000)
        def write_small_big():  # buffered: the error comes when the buffer is flushed at the end
            with atomic_file({str(target)!r}) as f:
                for _ in range(100):
                    f.write(b"x" * 100)
        for fn in (save_big, write_big, write_small_big):
            try:
                fn()
            except errors.FileAccess as e:
                assert isinstance(e, OSError) and e.errno == errno.EFBIG, (e, e.errno)
                assert {str(target)!r} in str(e), str(e)
                print("ok", e)
            else:
                raise SystemExit("no error")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ok ") == 3 and "File too large" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]  # no temporary file left
    np.testing.assert_array_equal(np.load(target), [1.0, 2.0])


# --- item 7: out of memory -----------------------------------------------------------------------------
def test_out_of_memory_is_a_candlejax_error():
    with pytest.raises(errors.OutOfMemory, match="out of memory in zeros") as e:
        Tensor.zeros((2**40,), DType.F32)
    assert isinstance(e.value, MemoryError)


# --- shapes whose element count overflows int64 (XLA aborted the whole process) --------------------
_B = 2**32
_X1, _X2 = np.zeros((1, 2, 8), np.float32), np.zeros((1, 2, 8, 8), np.float32)
_K1T, _K2T = np.zeros((2, 4, 3), np.float32), np.zeros((2, 4, 3, 3), np.float32)


@pytest.mark.parametrize(
    "make, op",
    [
        (lambda: Tensor.zeros((_B, _B), DType.F32), ""),
        (lambda: Tensor.zeros((2**62, 2**62, 0), DType.F32), ""),
        (lambda: Tensor.zeros((2**63,), DType.F32), ""),
        (lambda: Tensor.ones((_B, _B), DType.F32), ""),
        (lambda: Tensor.rand(0.0, 1.0, (_B, _B)), ""),
        (lambda: cj.zeros(_B, _B), "zeros"),
        (lambda: Tensor.new([1.0, 2.0]).broadcast_as((_B, _B, 2)), ""),
        (lambda: Tensor.new([1.0, 2.0]).broadcast_left((2**29, 2**30)), "broadcast_left"),
        (lambda: Tensor.new([1.0, 2.0]).repeat((2**29, 2**30)), "repeat"),
        (lambda: Tensor.zeros((0, 3), DType.F32).reshape(2**40, 2**40, 0), "reshape"),
        (lambda: Tensor.zeros((0, 3), DType.F32).reshape(2**40, 2**40, -1), "reshape"),
        (lambda: Tensor.new([1.0, 2.0]).pad_with_zeros(0, 2**63, 0), "pad_with_zeros"),
        (lambda: Tensor.new(_X2).conv2d(Tensor.zeros((4, 2, 3, 3), DType.F32), 2**40), "conv2d"),
        (lambda: Tensor.new(_X2).conv_transpose2d(Tensor.new(_K2T), 0, 0, 2**40), "conv_transpose2d"),
        (lambda: Tensor.new(_X1).conv_transpose1d(Tensor.new(_K1T), 0, 0, 2**62), "conv_transpose1d"),
        (lambda: Tensor.new(_X2).upsample_nearest2d(2**40, 2**40), "interpolate2d"),
        (lambda: Tensor.new(_X2).upsample_bilinear2d_with_scale(1e15, 1e15), "upsample_bilinear2d_with_scale"),
        (lambda: Tensor.eye(_B, DType.F32), "eye"),
        (lambda: Tensor.arange_step(0.0, 1e30, 1e-10), "arange"),
        (lambda: cj.nn.one_hot(Tensor.new([0, 1], dtype=DType.U32), 2**63), "one_hot"),
    ],
)
def test_shapes_beyond_int64_elements_raise(make, op):
    with pytest.raises(errors.InvalidShape, match=f"^{op}: the shape" if op else "^the shape") as e:
        make()
    assert "more than a tensor can hold" in str(e.value)


def test_empty_shapes_with_large_dims_still_work():
    assert Tensor.zeros((0, 2**40, 2**20), DType.F32).shape == (0, 2**40, 2**20)
    assert Tensor.zeros((0, 3), DType.F32).reshape(2**40, 0).shape == (2**40, 0)


# --- arguments of the wrong type or value get candlejax errors, not jax/numpy/Python ones -------------
_A = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: Tensor.new(None), errors.ArgumentType, "incorrect type <class 'NoneType'> for tensor"),
        (lambda: Tensor.new("abc"), errors.ArgumentType, "incorrect type <class 'str'> for tensor"),
        (lambda: Tensor.new([1.0, None]), errors.ArgumentType, "incorrect type <class 'NoneType'>"),
        (lambda: Tensor.full(None, (2,), DType.F32), errors.ArgumentType, "incorrect type"),
        (lambda: Tensor.from_jax("a"), errors.ArgumentType, "from_jax expects a jax.Array, got str"),
        (lambda: Tensor.from_torch("a"), errors.ArgumentType, "from_torch expects a torch.Tensor, got str"),
        (lambda: Tensor.new(_A).reshape(None), errors.InvalidShape, "reshape: cannot use None as a shape"),
        (lambda: Tensor.new(_A).reshape(-1, -2), errors.NegativeDim, r"reshape: negative dimension in shape \[-1, -2"),
        (lambda: Tensor.from_vec([1.0, 2.0], (-1, -2)), errors.NegativeDim, "from_vec: negative dimension"),
        (lambda: Tensor.new(_A).broadcast_left(-1), errors.NegativeDim, r"negative dimension in shape \[-1\]"),
        (lambda: Tensor.zeros(-1, DType.F32), errors.NegativeDim, r"negative dimension in shape \[-1\]"),
        (lambda: Tensor.cat(None, 0), errors.ArgumentType, "cat expects a list of tensors, got NoneType"),
        (lambda: Tensor.new(_A).affine("a", 1.0), errors.ArgumentType, r"affine: expected a real number, got 'a'"),
        (lambda: Tensor.new(_A).affine(None, 1.0), errors.ArgumentType, "affine: expected a real number, got None"),
        (lambda: Tensor.new(_A).affine("2", 1.0), errors.ArgumentType, "affine: expected a real number"),
        (lambda: Tensor.new(_A).powf("a"), errors.ArgumentType, "powf: expected a real number"),
        (lambda: Tensor.new(_A).elu(1j), errors.ArgumentType, "elu: expected a real number, got 1j"),
        (lambda: Tensor.new(_A).round_to(1.5), errors.NotAnInteger, "round_to: decimals must be an int, got 1.5"),
        (lambda: Tensor.new(_A).round_to(10**6), errors.InvalidArgument, r"decimals must be in \[-308, 308\]"),
        (lambda: Tensor.new(_A).masked_fill(Tensor.new(_A).gt(1.0), "a"), errors.ArgumentType,
         "masked_fill: value must be a real number or a rank-0 tensor, got 'a'"),
        (lambda: Tensor.rand(float("nan"), 1.0, (2,)), errors.InvalidArgument, "rand: lo must be finite, got nan"),
        (lambda: Tensor.rand(0.0, float("inf"), (2,)), errors.InvalidArgument, "rand: up must be finite, got inf"),
        (lambda: Tensor.randn(float("inf"), 1.0, (2,)), errors.InvalidArgument, "randn: mean must be finite"),
        (lambda: Tensor.randn(0.0, float("inf"), (2,)), errors.InvalidArgument, "randn: std must be finite"),
        (lambda: Tensor.rand("a", 1.0, (2,)), errors.ArgumentType, "rand: lo must be a real number, got 'a'"),
        (lambda: Tensor.rand(None, 1.0, (2,)), errors.ArgumentType, "rand: lo must be a real number, got None"),
        (lambda: Tensor.rand(1j, 2.0, (2,)), errors.ArgumentType, "rand: lo must be a real number, got 1j"),
    ],
)
def test_bad_argument_types_and_values_raise_candlejax_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_argument_type_errors_are_also_type_errors():
    with pytest.raises(TypeError, match="incorrect type"):
        Tensor.new(object())
    assert issubclass(errors.ArgumentType, errors.Error) and issubclass(errors.ArgumentType, TypeError)


def test_valid_scalars_and_shapes_still_work():
    t = Tensor.new(_A)
    assert t.reshape(-1).shape == (6,) and t.reshape(cj.Shape((3, 2))).shape == (3, 2)
    assert t.affine(np.float32(2.0), 1).to_vec2()[0] == [1.0, 3.0, 5.0]
    assert t.round_to(np.int32(1)).shape == (2, 3)
    assert t.masked_fill(t.gt(1.0), np.array(7.0, np.float32)).to_vec2()[1] == [7.0, 7.0, 7.0]
    assert Tensor.rand(Tensor.new(0.0), 1.0, (2,)).shape == (2,)


# --- candlejax.nn: layers and builders given bad arguments or inputs ------------------------------------
def _vb():
    return cj.nn.VarBuilder.from_varmap(cj.nn.VarMap(), DType.F32, cj.Device.Cpu)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: cj.nn.linear(3, 4, _vb())(None), errors.ArgumentType, "got NoneType"),
        (lambda: cj.nn.embedding(10, 4, _vb())("ab"), errors.ArgumentType, "got str"),
        (lambda: cj.nn.gru(3, 5, cj.nn.GRUConfig(), _vb()).seq(None), errors.ArgumentType, "got NoneType"),
        (lambda: cj.nn.linear(0, 4, _vb()), errors.InvalidArgument, "linear: in_dim must be >= 1"),
        (lambda: cj.nn.linear(2**20, 2**20, _vb()), errors.OutOfMemory, r"VarMap.get\('weight', \[1048576, 1048576\]"),
        (lambda: cj.nn.Linear(None), errors.ArgumentType, "nn.Linear: weight must be a Tensor"),
        (lambda: cj.nn.conv1d(2, 4, 3, {"stride": 2}, _vb()), errors.ArgumentType,
         "Conv1d: config must be a Conv1dConfig"),
        (lambda: cj.nn.layer_norm(3, "a", _vb()), errors.ArgumentType, "layer_norm: config must be"),
        (lambda: cj.nn.lstm(3, 5, cj.nn.LSTMConfig(), _vb()).zero_state(-1), errors.InvalidArgument,
         "LSTM.zero_state: batch_dim must be >= 0, got -1"),
        (lambda: cj.nn.lstm(3, 5, cj.nn.LSTMConfig(), _vb()).zero_state(1.5), errors.NotAnInteger,
         "LSTM.zero_state: batch_dim must be an int"),
        (lambda: cj.nn.Dropout("a"), errors.ArgumentType, "dropout probability must be a float"),
        (lambda: cj.nn.LayerNorm.rms_norm(Tensor.ones((3,), DType.F32), None), errors.ArgumentType,
         "RmsNorm: eps must be a number, got None"),
        (lambda: cj.nn.LayerNorm(Tensor.ones((3,), DType.F32), None, float("nan")), errors.InvalidArgument,
         "LayerNorm: eps must be a finite number >= 0, got nan"),
        (lambda: cj.nn.seq().add(None), errors.ArgumentType, "Sequential.add: expected a Module"),
        (lambda: cj.nn.Embedding(Tensor.zeros((3,), DType.F32), 3), errors.UnexpectedNumberOfDims, "Embedding"),
        (lambda: cj.nn.Embedding(Tensor.zeros((3, 4), DType.F32), 5), errors.UnexpectedShape,
         r"hidden_size 5 does not match the embeddings, expected: \[3, 5\], got: \[3, 4\]"),
        (lambda: cj.nn.batch_norm(3, cj.nn.BatchNormConfig(), _vb())(Tensor.new(np.ones((2, 3, 5), np.int32))),
         errors.UnsupportedDTypeForOp, "unsupported dtype I32 for op BatchNorm"),
        (lambda: cj.nn.batch_norm(3, cj.nn.BatchNormConfig(), _vb()).forward_t(
            Tensor.new(np.ones((2, 3, 5), np.int32)), True), errors.UnsupportedDTypeForOp, "BatchNorm"),
    ],
)
def test_nn_bad_arguments_raise_candlejax_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_nn_valid_arguments_still_work():
    x = Tensor.new(np.ones((2, 3), np.float32))
    assert cj.nn.linear(3, 4, _vb())([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).shape == (2, 4)
    assert cj.nn.linear_no_bias(0, 4, _vb())(Tensor.zeros((2, 0), DType.F32)).shape == (2, 4)
    assert cj.nn.layer_norm(3, np.float32(1e-5), _vb())(x).shape == (2, 3)
    assert cj.nn.Dropout(np.float64(0.5)).p == 0.5
    assert cj.nn.seq().add(lambda t: t * 2)(x).to_vec2()[0] == [2.0, 2.0, 2.0]
    assert cj.nn.Embedding(Tensor.zeros((3, 4), DType.F32), 4)(Tensor.new([0, 2], dtype=DType.U32)).shape == (2, 4)
    assert cj.nn.lstm(3, 5, cj.nn.LSTMConfig(), _vb()).zero_state(np.int64(2)).h.shape == (2, 5)


# --- results too large for any device: OutOfMemory at once, not a compile of minutes or a numpy error ----
def test_conv_transpose_with_a_huge_stride_raises_before_compiling():
    """A stride of 2**40 compiled for minutes (XLA's time grows with the dilated input) before failing."""
    x = Tensor.new(_X1)
    with pytest.raises(errors.OutOfMemory, match=r"in conv_transpose1d: the result \[1, 4, 7696581394435\]"):
        x.conv_transpose1d(Tensor.new(_K1T), 0, 0, 2**40)
    with pytest.raises(errors.OutOfMemory, match="conv_transpose1d"):
        jax.jit(lambda t: t.conv_transpose1d(Tensor.new(_K1T), 0, 0, 2**40))(x)
    assert x.conv_transpose1d(Tensor.new(_K1T), 0, 0, 2).shape == (1, 4, 17)


@pytest.mark.parametrize("resize", ["upsample_nearest2d", "upsample_bilinear2d"])
def test_resize_to_a_huge_size_raises_out_of_memory(resize):
    with pytest.raises(errors.OutOfMemory, match="out of memory in upsample"):
        getattr(Tensor.new(_X2), resize)(2**40, 4)


def test_ragged_index_list_raises():
    t = Tensor.new(_A)
    with pytest.raises(errors.Msg, match=r"index: an index list must be a flat list of integers, got \[\[0\]"):
        t[[[0], [0, 1]]]
    with pytest.raises(errors.Msg, match="i: an index list must be a flat list"):
        t.i([[0], [0, 1]])


# --- generation arguments -------------------------------------------------------------------------------
def _toy_step(params, cache, tokens, pos):
    """Logits favouring token (pos + len) % 8."""
    t = cj.tensor.unwrap(tokens)
    nxt = (jax.numpy.asarray(pos) + t.shape[-1]) % 8
    return jax.nn.one_hot(nxt[None], 8) * 10.0, cache


def _gen(prompt=(1, 2), n=3, proc=None, **kw):
    from candlejax.generation import generate

    return list(generate(_toy_step, None, None, list(prompt) if isinstance(prompt, tuple) else prompt, n, proc, **kw))


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: _gen(n=-1), errors.InvalidArgument, "generate: max_new_tokens must be >= 0, got -1"),
        (lambda: _gen(n=1.5), errors.NotAnInteger, "generate: max_new_tokens must be an int, got 1.5"),
        (lambda: _gen(n="4"), errors.NotAnInteger, "generate: max_new_tokens must be an int"),
        (lambda: _gen(n=None), errors.NotAnInteger, "generate: max_new_tokens must be an int, got None"),
        (lambda: _gen(prompt=[[1], [1, 2]]), errors.Msg, "generate: prompt_tokens must be a list of ids"),
        (lambda: _gen(prompt="hello"), errors.InvalidArgument, r"prompt is text.*tokenizer\.encode"),
        (lambda: _gen(prompt=["hello"]), errors.InvalidArgument, r"prompt is text.*tokenizer\.encode"),
        (lambda: _gen(start_pos=1.5), errors.NotAnInteger, "generate: start_pos must be an int"),
        (lambda: _gen(repeat_penalty=1.1, repeat_last_n="a"), errors.NotAnInteger, "repeat_last_n must be an int"),
        (lambda: _gen(repeat_penalty=1.1, context_tokens="ab"), errors.NotAnInteger, "context_tokens id must be"),
        (lambda: _gen(token_dtype=np.float32), errors.InvalidArgument, "token_dtype must be an integer dtype"),
        (lambda: LogitsProcessor(0, "a"), errors.ArgumentType, "sampling: temperature must be a number, got 'a'"),
        (lambda: LogitsProcessor(0, 0.8, "a"), errors.ArgumentType, "LogitsProcessor: top_p must be a number"),
        (lambda: LogitsProcessor("a", 0.8), errors.NotAnInteger, "LogitsProcessor: seed must be an int, got 'a'"),
        (lambda: LogitsProcessor(1.5, 0.8), errors.NotAnInteger, "LogitsProcessor: seed must be an int, got 1.5"),
        (lambda: LogitsProcessor.from_sampling(0, Sampling.TopK(2.5, 0.8)), errors.NotAnInteger, "top-k k"),
        (lambda: sampling_from_args(0.8, "a"), errors.NotAnInteger, "sampling_from_args: top_k must be an int"),
        (lambda: LogitsProcessor(0, 0.8).sample(None), errors.ArgumentType, "got NoneType"),
    ],
)
def test_generation_arguments_raise_candlejax_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_generation_valid_arguments_still_work():
    assert _gen(n=0) == [] and len(_gen(n=np.int64(3))) == 3
    assert len(_gen(repeat_penalty=1.1, context_tokens=np.array([1, 2]))) == 3
    assert LogitsProcessor(np.uint64(3), np.float32(0.8), 0.9).seed == 3


def test_llama_step_refuses_float_token_ids():
    """Float ids were truncated to integer tokens (1.7 -> 1) without a word."""
    from candlejax.models import llama

    cfg = llama.Config.from_dict({"vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "max_position_embeddings": 64})  # fmt: skip
    m = llama.Llama.load(cj.nn.VarBuilder.from_varmap(cj.nn.VarMap(), DType.F32, cj.Device.Cpu), cfg)
    with pytest.raises(errors.UnexpectedDType, match="llama step: token ids must be integers, expected: U32, got: F32"):
        llama.step(m, m.new_cache(1, 8), Tensor.new([[1.7]]), 0)
    with pytest.raises(errors.NotAnInteger, match=r"StackedKvCache: max_seq_len must be an int, got 1\.5"):
        m.new_cache(1, 1.5)
    assert llama.step(m, m.new_cache(1, 8), Tensor.new(np.array([[1]], np.uint32)), 0)[0].shape == (1, 32)


# --- nn.ops settings, optimizer parameters, seeds, files --------------------------------------------------
_Q = np.zeros((1, 2, 3, 4), np.float32)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: cj.nn.ops.sdpa(*[Tensor.new(np.zeros((1, 2, 3, 0), np.float32))] * 3), errors.Msg,
         "head dims must be >= 1"),  # was a ZeroDivisionError
        (lambda: cj.nn.ops.sdpa(Tensor.new(_Q), *[Tensor.new(np.zeros((1, 2, 0, 4), np.float32))] * 2), errors.Msg,
         r"k and v have no positions"),
        (lambda: cj.nn.ops.sdpa(*[Tensor.new(_Q)] * 3, scale="a"), errors.ArgumentType, "sdpa: scale must be a number"),
        (lambda: cj.nn.ops.sdpa(*[Tensor.new(_Q)] * 3, scale=float("nan")), errors.InvalidArgument,
         "sdpa: scale must be finite, got nan"),
        (lambda: cj.nn.ops.sdpa(*[Tensor.new(_Q)] * 3, softcapping=0.0), errors.InvalidArgument,
         "sdpa: softcapping must be > 0"),
        (lambda: cj.nn.ops.sdpa(*[Tensor.new(_Q)] * 3, window="a"), errors.NotAnInteger, "sdpa: window must be an int"),
        (lambda: cj.nn.ops.activation(Tensor.new(_Q), "foo"), errors.InvalidArgument, "activation: unknown kind 'foo'"),
        (lambda: cj.nn.ops.leaky_relu(Tensor.new(_Q), "a"), errors.ArgumentType, "leaky_relu: parameter must be"),
        (lambda: cj.nn.ops.dropout(Tensor.new(_Q), "a"), errors.ArgumentType, "dropout: probability must be"),
        (lambda: cj.nn.ops.rms_norm(Tensor.new(_Q), Tensor.ones((4,), DType.F32), "a"), errors.ArgumentType,
         "rms-norm: eps must be a number"),
        (lambda: cj.nn.ops.rms_norm(Tensor.new(_Q), Tensor.ones((4,), DType.F32), -1.0), errors.InvalidArgument,
         "rms-norm: eps must be >= 0"),  # gave NaN
        (lambda: cj.nn.ParamsAdamW(eps="a"), errors.ArgumentType, "ParamsAdamW: eps must be a number"),
        (lambda: cj.Device.Cpu.set_seed("a"), errors.NotAnInteger, "set_seed: seed must be an int"),
        (lambda: cj.Device.Cpu.set_seed(1.5), errors.NotAnInteger, "set_seed: seed must be an int"),
    ],
)
def test_nn_ops_and_settings_raise_candlejax_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_missing_files_and_folders_raise_candlejax_errors_that_are_oserrors(tmp_path):
    t = Tensor.new([1.0, 2.0])
    for read in (cj.safetensors.load, Tensor.read_npy, Tensor.read_npz):
        with pytest.raises(errors.NoSuchFile) as e:
            read(tmp_path / "missing")
        assert isinstance(e.value, FileNotFoundError)
        with pytest.raises(errors.IsADirectory):
            read(tmp_path)
    with pytest.raises(errors.NoSuchFile, match=r"cannot write .*nope/x\.safetensors: its folder .* does not exist"):
        cj.safetensors.save({"t": t}, tmp_path / "nope" / "x.safetensors")
    with pytest.raises(errors.IsADirectory, match="it is a folder") as e:
        t.write_npy(tmp_path)
    assert isinstance(e.value, IsADirectoryError)


@pytest.mark.parametrize("bad", [None, 3, 1.5])
def test_io_paths_of_the_wrong_type_raise_argument_type_errors(bad):
    """A path that is not a str / os.PathLike: an ``ArgumentType`` (also a ``TypeError``, as
    candle-pyo3's ``argument 'path': 'NoneType' object cannot be converted``), never os.fspath's bare
    TypeError or ``'NoneType' object is not iterable`` from inside the reader."""
    from candlejax import pickle
    from candlejax.nn import VarBuilder, VarMap

    t = Tensor.new([1.0, 2.0])
    calls = {
        "safetensors.load": cj.safetensors.load, "MmapedSafetensors": cj.safetensors.MmapedSafetensors,
        "MmapedFile": cj.safetensors.MmapedFile, "utils.load_safetensors": cj.utils.load_safetensors,
        "read_npy": Tensor.read_npy, "read_npz": Tensor.read_npz,
        "read_npz_by_name": lambda p: Tensor.read_npz_by_name(p, ["a"]),
        "NpzTensors": npy.NpzTensors, "read_all": pickle.read_all, "PthTensors": pickle.PthTensors,
        "read_pth_tensor_info": pickle.read_pth_tensor_info, "load_pickle": pickle.load_pickle,
        "save_safetensors": lambda p: t.save_safetensors("t", p),
        "safetensors.save": lambda p: cj.safetensors.save({"t": t}, p),
        "write_npy": t.write_npy, "write_npz": lambda p: Tensor.write_npz([("t", t)], p),
        "gguf.write": lambda p: gguf.write(p, {}, {}),
        "VarMap.save": lambda p: VarMap().save(p), "VarMap.load": lambda p: VarMap().load(p),
        "from_mmaped_safetensors": lambda p: VarBuilder.from_mmaped_safetensors([p], DType.F32),
        "from_npz": lambda p: VarBuilder.from_npz(p, DType.F32),
        "from_pth": lambda p: VarBuilder.from_pth(p, DType.F32),
        "from_pth_with_state": lambda p: VarBuilder.from_pth_with_state(p, DType.F32, "state_dict"),
    }  # fmt: skip
    for name, call in calls.items():
        with pytest.raises(errors.ArgumentType, match=r"must be a str or os\.PathLike") as e:
            call(bad)
        assert isinstance(e.value, TypeError), name


def test_missing_torch_checkpoint_is_a_no_such_file_error(tmp_path):
    """``read_all`` / ``PthTensors`` of a missing file raised zipfile's bare FileNotFoundError."""
    from candlejax import pickle

    for read in (pickle.read_all, pickle.PthTensors, pickle.load_pickle):
        with pytest.raises(errors.NoSuchFile, match=r"missing\.pth"):
            read(tmp_path / "missing.pth")
        with pytest.raises(errors.IsADirectory):
            read(tmp_path)


@pytest.mark.parametrize("bad", [None, 3])
def test_more_readers_refuse_paths_of_the_wrong_type(bad):
    """The CTranslate2, imatrix, ggml and audio readers and ``Module.load_safetensors`` raised os.fspath's bare
    TypeError (or ``'NoneType' object has no attribute 'seek'``) for a path that is not one."""
    from candlejax import audio
    from candlejax.io import ct2
    from candlejax.quantized import ggml_file, imatrix_file

    lin = cj.nn.Linear(Tensor.ones((2, 2), DType.F32, cj.Device.Cpu), None)
    calls = {"ct2": ct2.Ct2Model.read, "load_imatrix": imatrix_file.load_imatrix,
             "ggml_file": ggml_file.Content.read, "load_safetensors": lin.load_safetensors,
             "read_audio": audio.read_audio, "AudioStream": audio.AudioStream}  # fmt: skip
    for name, call in calls.items():
        with pytest.raises(errors.ArgumentType, match=r"must be a str or os\.PathLike") as e:
            call(bad)
        assert isinstance(e.value, TypeError), name
