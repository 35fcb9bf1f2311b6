"""candlejax.xla: compiler options chosen by input size and CPU, and SizeJit's choice of program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from candlejax import xla


def test_large_input_options_depend_on_the_cpu_vendor(monkeypatch):
    monkeypatch.setattr(xla, "_cpu_vendor", lambda: "GenuineIntel")
    assert xla.large_input_options() == {}
    monkeypatch.setattr(xla, "_cpu_vendor", lambda: "AuthenticAMD")
    assert xla.large_input_options() == xla.LARGE_INPUT_OPTIONS
    assert xla.large_input_options() is not xla.LARGE_INPUT_OPTIONS  # a copy: callers may not change the constant


def test_size_jit_picks_the_program_by_token_count():
    def f(scale, ids):
        return (ids * scale).sum()

    sj = xla.SizeJit(f, xla.LARGE_INPUT_OPTIONS, threshold=8)
    small, large = jnp.ones((2, 3)), jnp.ones((4, 4))
    assert sj._pick((2.0, small)) is sj._plain
    assert sj._pick((2.0, large)) is sj._large
    assert float(sj(2.0, small)) == 12.0 and float(sj(2.0, large)) == 32.0
    plain_only = xla.SizeJit(f, {}, threshold=8)
    assert plain_only._large is None and plain_only._pick((2.0, large)) is plain_only._plain
    np.testing.assert_allclose(float(plain_only(2.0, large)), 32.0)


def test_options_jit_compiles_with_the_options_and_falls_back_on_unknown_ones():
    from jax import lax

    def conv(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 12, 12, 8)), jnp.float32)
    k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 8, 64)), jnp.float32)
    want = np.asarray(jax.jit(conv)(x, k))
    oj = xla.OptionsJit(conv, xla.XLA_CONVOLUTION_OPTIONS)
    np.testing.assert_allclose(np.asarray(oj(x, k)), want, rtol=1e-5, atol=1e-5)
    assert oj._opts is not None
    if jax.default_backend() == "cpu":  # the options reach XLA:CPU: the convolution leaves YNNPACK
        assert "__ynn_fusion" in jax.jit(conv).lower(x, k).compile().as_text()
        assert "__ynn_fusion" not in oj.lower(x, k).compile().as_text()
    bad = xla.OptionsJit(conv, {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    np.testing.assert_allclose(np.asarray(bad(x, k)), want, rtol=1e-5, atol=1e-5)
    assert bad._opts is None  # rejected once, plain jit from then on
    unknown = xla.OptionsJit(conv, {"xla_cpu_not_a_flag": "1"})  # an option this jax does not know
    np.testing.assert_allclose(np.asarray(unknown(x, k)), want, rtol=1e-5, atol=1e-5)
    assert unknown._opts is None

    def fails(x):
        raise ValueError("an optional argument is missing")

    with pytest.raises(ValueError, match="optional argument"):  # other errors are not taken for refused options
        xla.OptionsJit(fails, xla.XLA_CONVOLUTION_OPTIONS)(x)
    assert xla.OptionsJit(conv, {})._opts is None


def test_compilation_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    for off in ("0", "off", "false", "no", ""):
        monkeypatch.setenv(xla.COMPILATION_CACHE_ENV, off)
        assert xla.compilation_cache_dir() is None
        assert xla.enable_compilation_cache() is None  # off: nothing configured
    monkeypatch.setenv(xla.COMPILATION_CACHE_ENV, str(tmp_path / "here"))
    assert xla.compilation_cache_dir() == str(tmp_path / "here")
    monkeypatch.delenv(xla.COMPILATION_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = xla.compilation_cache_dir()
    assert default is not None and default.startswith(str(tmp_path / "xdg" / "candlejax" / "xla"))
    assert default == xla.compilation_cache_dir()  # one folder per machine kind, stable


_CACHED_RUN = """
import hashlib, logging, sys
import jax, jax.numpy as jnp, numpy as np
from candlejax import xla
jax.config.update("jax_log_compiles", True)  # cache hits are logged at WARNING then
print("dir", xla.enable_compilation_cache())
from candlejax.quantized import GgmlDType, QMatMul, QTensor
w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
m = QMatMul.from_qtensor(QTensor.quantize(w, GgmlDType.Q4_1))  # the native kernel where it is built
x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32))
y = jax.jit(lambda m, x: jnp.tanh(m.forward(x)))(m, x)
print("out", hashlib.sha256(np.asarray(y).tobytes()).hexdigest())
"""


def test_compiled_programs_load_from_the_cache_in_a_new_process(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, CANDLEJAX_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")

    def run() -> tuple[str, str]:
        p = subprocess.run([sys.executable, "-c", _CACHED_RUN], env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout, p.stderr

    out1, err1 = run()
    assert f"dir {tmp_path / 'cache'}" in out1
    assert os.listdir(tmp_path / "cache"), "nothing was written to the cache"
    assert "cache hit" not in err1
    out2, err2 = run()
    assert "Persistent compilation cache hit for 'jit__lambda'" in err2
    assert out1.splitlines()[-1] == out2.splitlines()[-1]  # the same bits from the loaded program


def test_the_command_line_tools_turn_the_cache_on(monkeypatch):
    import pytest

    import candlejax.cli as cli

    calls = []
    monkeypatch.setattr(cli, "enable_compilation_cache", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli.main(["demo", "--", "--help"])
    assert calls == [True]


def test_compile_compact_keeps_results_and_donation():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from candlejax.xla import compile_compact

    f = jax.jit(lambda a, b: (a * 2 + jnp.sin(b), b.sum()), donate_argnums=0)
    a, b = jnp.arange(6.0), jnp.linspace(0, 1, 6)
    want = f.lower(a, b).compile()(jnp.arange(6.0), b)
    program = compile_compact(f.lower(a, b))
    got = program(a, b)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    b64 = np.linspace(0, 1, 6)
    np.testing.assert_allclose(np.asarray(got[0]), np.arange(6.0) * 2 + np.sin(b64), rtol=1e-6)
    np.testing.assert_allclose(float(got[1]), b64.sum(), rtol=1e-6)
    assert a.is_deleted()  # the donation survives the round trip
    try:
        program(jnp.ones(7), b)
    except TypeError as e:
        assert "Argument types differ" in str(e)
    else:
        raise AssertionError("a program for shape (6,) ran on shape (7,)")


def test_generation_options_are_known_to_this_xla():
    """The token-generation programs' options compile as given (``OptionsJit`` would otherwise fall
    back to the defaults without a word) and leave results unchanged."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from candlejax.xla import GENERATION_OPTIONS

    def f(x):
        return jnp.tanh(x) * jax.nn.softmax(x) + jnp.argmax(x)

    x = jnp.linspace(-3.0, 3.0, 64)
    got = jax.jit(f, compiler_options=GENERATION_OPTIONS).lower(x).compile()(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(x)), rtol=1e-6, atol=1e-7)


def test_serialized_program_loads_on_first_use_once(monkeypatch):
    """``compile_compact(load_on_first_use=True)`` keeps the program serialized (its ``out_info``
    readable) until it first runs and loads it once however many threads call it."""
    import threading

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import serialize_executable

    from candlejax.xla import SerializedProgram, compile_compact, load_programs

    f = jax.jit(lambda a, b: (a * 2 + jnp.sin(b), b.sum()))
    a, b = jnp.arange(6.0), jnp.linspace(0, 1, 6)
    program = compile_compact(f.lower(a, b), load_on_first_use=True)
    assert isinstance(program, SerializedProgram) and not program.loaded
    assert [o.shape for o in program.out_info] == [(6,), ()]
    assert not program.loaded

    loads = []
    real = serialize_executable.deserialize_and_load

    def counted(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(serialize_executable, "deserialize_and_load", counted)
    results: list = [None] * 4
    start = threading.Barrier(4)

    def run(i: int) -> None:
        start.wait()
        results[i] = program(a, b)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1] and program.loaded
    b64 = np.linspace(0, 1, 6)
    for got in results:
        np.testing.assert_allclose(np.asarray(got[0]), np.arange(6.0) * 2 + np.sin(b64), rtol=1e-6)
        np.testing.assert_allclose(float(got[1]), b64.sum(), rtol=1e-6)
    assert program.in_avals == program.load().in_avals  # other attributes come from the loaded program

    other = compile_compact(f.lower(jnp.arange(3.0), b[:3]), load_on_first_use=True)
    plain = f.lower(jnp.arange(4.0), b[:4]).compile()
    loaded = load_programs([other, plain], clear_caches=True)
    assert loads == [1, 1] and other.loaded and loaded[0] is other.load() and loaded[1] is plain
    np.testing.assert_allclose(np.asarray(other(jnp.arange(3.0), b[:3])[0]), np.arange(3.0) * 2 + np.sin(b64[:3]),
                               rtol=1e-6)  # fmt: skip
    third = compile_compact(f.lower(jnp.arange(2.0), b[:2]), load_on_first_use=True)
    f(jnp.arange(5.0), b[:5])  # a jitted call whose program must survive the dropped tracing caches
    traced = f._cache_size()
    (got,) = load_programs([third], drop_tracing=True)
    assert loads == [1, 1, 1] and got is third.load() and f._cache_size() == traced
    np.testing.assert_allclose(np.asarray(got(jnp.arange(2.0), b[:2])[0]), np.arange(2.0) * 2 + np.sin(b64[:2]),
                               rtol=1e-6)  # fmt: skip


_COMPACT_RUN = """
import jax, jax.numpy as jnp, numpy as np
from candlejax.xla import compile_compact, enable_compilation_cache
enable_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
hits = []
jax.monitoring.register_event_listener(lambda e, **_: hits.append(e) if e.endswith("cache_hits") else None)
f = lambda a: jnp.arange(a.shape[0], dtype=a.dtype) * a + jnp.sin(a)
x = jnp.linspace(0, 1, 8)
first = compile_compact(jax.jit(f).lower(x))       # compiled here (and written to the cache)
jax.clear_caches()
second = compile_compact(jax.jit(f).lower(x))      # loaded from the cache: kept as it is
assert len(hits) == 1, hits
want = np.arange(8) * np.linspace(0, 1, 8) + np.sin(np.linspace(0, 1, 8))
for p in (first, second):
    np.testing.assert_allclose(np.asarray(p(x)), want, rtol=1e-6)
print("ok")
"""


def test_compile_compact_runs_programs_from_the_persistent_cache(tmp_path):
    """A program loaded from the persistent cache is not serialized again: XLA:CPU's copy of a
    loaded program misses its functions when run (NOT_FOUND: Function ... not found)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CANDLEJAX_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", _COMPACT_RUN], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith("ok")


def test_limit_malloc_arenas_in_a_fresh_process():
    import subprocess
    import sys

    code = (
        "import candlejax as cj, candlejax.xla as x, jax.numpy as jnp\n"
        "assert x.limit_malloc_arenas(1) is True\n"
        "assert x.limit_malloc_arenas(0) is False\n"
        "print(float(jnp.ones(8).sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8.0"
