"""Batches stay on the dataset's device (Candle's semantics); a model and a batch on two devices raise
``DeviceMismatch`` naming both devices and ``.to_device(...)``. Two host devices are simulated with
``--xla_force_host_platform_device_count`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import candlejax as cj
    from candlejax import Device, DType, Tensor, errors
    from candlejax.nn import Module, VarBuilder, VarMap, linear

    dev1 = Device("cpu", 1)
    xs = Tensor.new(np.ones((8, 4), np.float32)).to_device(dev1)
    ys = Tensor.new(np.zeros(8, np.uint32)).to_device(dev1)
    # Batcher: batches on the dataset's device, unless told otherwise
    (x, y), *_ = list(cj.data.Batcher((xs, ys), batch_size=4))
    assert x.device == dev1 and y.device == dev1, (x.device, y.device)
    (x0, _), *_ = list(cj.data.Batcher((xs, ys), batch_size=4, device=Device.Cpu))
    assert x0.device == Device.Cpu
    (h, _), *_ = list(cj.data.Batcher((np.ones((8, 4), np.float32), np.zeros(8, np.uint32)), batch_size=4))
    assert h.device == Device.Cpu
    (s,) = list(cj.data.Batcher.new1([xs[i] for i in range(4)], batch_size=4))
    assert s.device == dev1
    # a list of (x, y) examples (PyTorch's DataLoader(list(zip(xs, ys)))) and a Dataset object: the
    # examples' device, as Candle's Tensor::stack of the examples (both gave Cpu)
    pairs = [(xs[i], ys[i]) for i in range(8)]
    (x2, y2), *_ = list(cj.data.Batcher(pairs, batch_size=4))
    assert x2.device == dev1 and y2.device == dev1, (x2.device, y2.device)

    class Rows:
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return xs[i], ys[i]

    b = cj.data.Batcher(Rows(), batch_size=4)
    (x3, y3), *_ = list(b)
    assert b.device == dev1 and x3.device == dev1 and y3.device == dev1, (b.device, x3.device)
    (x4, _), *_ = list(cj.data.Batcher(Rows(), batch_size=4, device=Device.Cpu))
    assert x4.device == Device.Cpu
    (x5, _), *_ = list(cj.data.Batcher([(np.ones(4, np.float32), np.uint32(0))] * 4, batch_size=4))
    assert x5.device == Device.Cpu

    class M(Module):
        def __init__(self, vb):
            self.l = linear(4, 2, vb.pp("l"))
        def forward(self, x):
            return self.l(x)

    def loss_fn(m, x, y):
        return cj.nn.loss.cross_entropy(m.forward(x), y)

    varmap = VarMap()
    model = M(VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu))
    opt = cj.optim.SGD(varmap.all_vars(), 0.1)
    for step in (lambda: opt.backward_step(loss_fn, model, x, y),
                 lambda: cj.optim.SGD(0.1, donate=False).backward_step(
                     loss_fn, model, cj.optim.SGD(0.1).init(model), x, y)):
        try:
            step()
        except errors.DeviceMismatchBinaryOp as e:
            msg = str(e)
            assert "Cpu," in msg and "Cpu(1)" in msg and ".to_device(" in msg, msg
        else:
            raise AssertionError("no DeviceMismatch")
    try:
        model.forward(x)
    except errors.DeviceMismatchBinaryOp as e:
        assert ".to_device(" in str(e), str(e)
    else:
        raise AssertionError("no DeviceMismatch in forward")
    # moved to the model's device, the same step runs
    loss = opt.backward_step(loss_fn, model, x.to_device(Device.Cpu), y.to_device(Device.Cpu))
    assert np.isfinite(float(loss.to_scalar()))
    print("OK")
    """
)


def _run_on_cpu_devices(script: str, n: int) -> None:
    """Run ``script`` in a fresh process that sees ``n`` CPU devices; it prints OK when its checks pass."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-4000:]


def test_batcher_device_and_device_mismatch_in_steps():
    _run_on_cpu_devices(SCRIPT, 2)


PLACEMENT = textwrap.dedent(
    """
    import numpy as np
    from candlejax import Device, DeviceLocation, Tensor, errors

    dev1, dev0 = Device("cpu", 1), Device.Cpu
    # a string ordinal names that CPU device (as Device("cpu", 1)), checked against the devices present
    assert repr(Device.coerce("cpu:1")) == "Cpu(1)" and Device.coerce("cpu:1") == dev1
    assert Device.coerce("cpu:0") == dev0 and Device.coerce("cpu") == dev0
    # the string round-trips, and a dict keyed by it finds the Device (equal objects hash alike)
    assert str(dev1) == "cpu:1" and Device.coerce(str(dev1)) == dev1 and str(dev0) == "cpu"
    assert {"cpu:1": 1}[dev1] == 1 and {"cpu": 0}[dev0] == 0
    # Candle's DeviceLocation::Cpu is a unit variant: every CPU device is at it
    assert dev1.location() == DeviceLocation.Cpu == dev0.location() and repr(dev1.location()) == "Cpu"
    assert Tensor.zeros((2,), device="cpu:1").device == dev1
    assert Tensor.new([1.0, 2.0]).to_device("cpu:1").device == dev1
    # Tensor::new(data, &device) copies onto that device, Device.Cpu included
    t1 = Tensor.new([1.0, 2.0, 3.0, 4.0], dev1)
    for made in (Tensor.new(t1, dev0), Tensor.new(t1._a, device=dev0), Tensor(t1, device=dev0),
                 Tensor.from_vec(t1, (2, 2), dev0), Tensor.new(t1, "cpu")):
        assert made.device == dev0, made.device
    assert Tensor(t1).device == dev1 and Tensor.new(t1, dev1).device == dev1
    for bad, words in (("cpu:9", ("9", "4")), ("cpu:x", ("'cpu:x'", "integer")), ("cuda:x", ("'cuda:x'", "integer"))):
        try:
            Device.coerce(bad)
        except errors.InvalidDevice as e:
            assert all(w in str(e) for w in words), str(e)
        else:
            raise AssertionError(bad)
    try:
        Device("cpu", "x")
    except errors.InvalidDevice as e:
        assert "'x'" in str(e) and "integer" in str(e), str(e)
    else:
        raise AssertionError("Device('cpu', 'x')")
    try:
        Tensor.zeros((2,), device=Device("cpu", 9))
    except errors.InvalidDevice as e:
        assert "9" in str(e) and "4" in str(e), str(e)
    else:
        raise AssertionError("Device('cpu', 9)")
    # indexes on another device than the indexed tensor: Candle's same_device(indexes, op)
    a = Tensor.new(np.arange(6, dtype=np.float32).reshape(2, 3), dev1)
    ids0 = Tensor.new(np.zeros((2, 3), np.uint32), dev0)
    for op, f in (
        ("gather", lambda: a.gather(ids0[:, :1], 1)),
        ("scatter", lambda: a.scatter(ids0, a, 0)),
        ("scatter-add", lambda: a.scatter_add(ids0, a, 0)),
        ("index-select", lambda: a.index_select(ids0[0], 1)),
        ("index-add", lambda: a.index_add(ids0[0, :2], a[:, :2], 1)),
    ):
        try:
            f()
        except errors.DeviceMismatchBinaryOp as e:
            assert f"in {op}, lhs: Cpu(1), rhs: Cpu " in str(e), str(e)
        else:
            raise AssertionError(op)
    # a Device.Cpu operand of an nn op, a loss, a KV cache or a quantized matmul whose other operands
    # are on cpu:1: Candle's same_device raises; JAX moved the Cpu array over without a word
    import candlejax as cj
    from candlejax.nn import kv_cache

    def r(*shape, dev=dev1):
        return Tensor.randn(0.0, 1.0, shape, dev)

    ids = Tensor.new(np.array([0, 1], np.uint32), dev0)
    for op, f in (
        ("norm", lambda: cj.nn.RmsNorm(Tensor.ones((4,), device=dev0), 1e-5).forward(r(2, 4))),
        ("norm", lambda: cj.nn.ops.layer_norm(r(2, 4), Tensor.ones((4,), device=dev0), r(4), 1e-5)),
        ("nll", lambda: cj.nn.loss.nll(r(2, 3), ids)),
        ("cross_entropy", lambda: cj.nn.loss.cross_entropy(r(2, 3), ids)),
        ("index-select", lambda: cj.nn.Embedding(r(5, 3), 3).forward(ids)),
        ("mse", lambda: cj.nn.loss.mse(r(2, 3), r(2, 3, dev=dev0))),
        ("rope", lambda: cj.nn.rotary_emb.rope(r(1, 2, 3, 4), r(3, 2, dev=dev0), r(3, 2, dev=dev0))),
        ("sdpa", lambda: cj.nn.ops.sdpa(r(1, 2, 3, 4), r(1, 2, 3, 4, dev=dev0), r(1, 2, 3, 4), 0.5, False)),
        ("qmatmul", lambda: cj.quantized.QMatMul.from_qtensor(cj.QTensor.quantize(
            r(4, 32), cj.quantized.GgmlDType.Q8_0)).forward(r(2, 32, dev=dev0))),
        ("slice_write", lambda: kv_cache.KvCache(2, 8).append(r(1, 2, 3, 4), r(1, 2, 3, 4))[1].append(
            r(1, 2, 1, 4, dev=dev0), r(1, 2, 1, 4, dev=dev0))),
        ("cat", lambda: kv_cache.ConcatKvCache(2).append(r(1, 2, 3, 4), r(1, 2, 3, 4))[1].append(
            r(1, 2, 1, 4, dev=dev0), r(1, 2, 1, 4, dev=dev0))),
    ):
        try:
            f()
        except errors.DeviceMismatchBinaryOp as e:
            assert f"in {op}" in str(e) and "Cpu(1)" in str(e), str(e)
        else:
            raise AssertionError(op)
    # a KV cache's buffers are allocated on its source's device (Candle's Tensor::zeros(.., src.device()))
    k = r(1, 2, 3, 4)
    assert kv_cache.KvCache.preallocated(2, 8, k).k_buf.device == dev1
    assert kv_cache.Cache.preallocated(2, 8, k).all_data().device == dev1
    assert kv_cache.DecodeKvCache.preallocated(8, k).k_buf.device == dev1
    for cache in (kv_cache.KvCache(2, 8), kv_cache.RotatingKvCache(2, 8), kv_cache.ConcatKvCache(2)):
        (k_all, _), cache = cache.append(k, k)  # bookkeeping on the default device is no mismatch
        (k_all, _), cache = cache.append(k, k)
        assert k_all.device == dev1, type(cache)
    # pickle keeps the device (as torch's does)
    import pickle

    back = pickle.loads(pickle.dumps(k))
    assert back.device == dev1 and np.array_equal(back.numpy(), k.numpy()), back.device
    assert pickle.loads(pickle.dumps(Tensor.new([1.0]))).device == dev0
    print("OK")
    """
)


def test_device_strings_and_index_devices():
    _run_on_cpu_devices(PLACEMENT, 4)


BLOCKED_WEIGHT_DEVICE = textwrap.dedent(
    """
    import numpy as np
    import candlejax as cj
    from candlejax import Device, Tensor, errors

    dev1 = Device("cpu", 1)
    w = Tensor.randn(0.0, 1.0, (4, 32), dev1)
    for dt in (cj.quantized.GgmlDType.Q8_0, cj.quantized.GgmlDType.Q4_0):
        mm = cj.quantized.QMatMul.from_qtensor(cj.QTensor.quantize(w, dt))
        assert all(Device.from_jax(d) == dev1 for a in (mm.weight.q, mm.weight.scale) for d in a.devices())
        y = mm.forward(Tensor.ones((2, 32), device=dev1))
        assert y.device == dev1 and y.dims() == (2, 4), (y.device, y.dims())
        try:
            mm.forward(Tensor.ones((2, 32)))
        except errors.DeviceMismatchBinaryOp as e:
            assert "in qmatmul" in str(e) and "Cpu(1)" in str(e), str(e)
        else:
            raise AssertionError(dt)
    print("OK")
    """
)


def test_blocked_qmatmul_weight_stays_on_its_device(monkeypatch):
    """Without the native kernel (other CPUs, ``CANDLEJAX_NATIVE=0``) a QMatMul keeps Q4/Q8 weights as
    unpacked blocks; they stay on the QTensor's device, so an input elsewhere raises as in Candle."""
    monkeypatch.setenv("CANDLEJAX_NATIVE", "0")
    _run_on_cpu_devices(BLOCKED_WEIGHT_DEVICE, 2)
