"""Reproducibility: the same seed gives the same numbers in every process (whatever PYTHONHASHSEED),
and a run stopped, checkpointed and resumed in a fresh process ends bit-identical to a straight one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from candlejax import data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str, hash_seed: int, *args: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}


SEEDED = """
import hashlib, json
import numpy as np
from candlejax import Device, DType, Tensor, nn
from candlejax.data import Batcher
from candlejax.generation import LogitsProcessor, Sampling

def h(t):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(t.to_dtype(DType.F32).flatten_all().to_vec1(),
                                                           np.float32)).tobytes()).hexdigest()
cpu = Device.Cpu
cpu.set_seed(42)
out = {"rand": h(Tensor.rand(0.0, 1.0, (3, 4), cpu)), "randn": h(Tensor.randn(0.0, 1.0, (3, 4), cpu))}
vm = nn.VarMap(seed=3)
vb = nn.VarBuilder.from_varmap(vm, DType.F32, cpu)
nn.linear(4, 3, vb.pp("z")), nn.embedding(10, 4, vb.pp("a")), nn.conv2d(3, 4, 3, nn.Conv2dConfig(), vb.pp("m"))
out["vars"] = [[v.name, h(v)] for v in vm.all_vars()]
out["dropout"] = h(nn.Dropout(0.5).forward_t(Tensor.ones((4, 6)), True))
b = Batcher((np.arange(20, dtype=np.float32)[:, None], np.arange(20, dtype=np.uint32)), 4, shuffle=True, seed=7)
out["batches"] = [yb.to_vec1() for _ in range(2) for _, yb in b]
logits = np.random.default_rng(0).normal(size=(20, 50)).astype(np.float32)
for name, s in (("topp", Sampling.TopP(0.9, 0.8)), ("gumbel", Sampling.GumbelSoftmax(1.0))):
    lp = LogitsProcessor.from_sampling(5, s)
    out[name] = [lp.sample(Tensor.new(r, cpu)) for r in logits]
seeded = out
"""


RESUME = """
import json, sys
import numpy as np
from candlejax import Device, DType, checkpoint, nn, optim
from candlejax.data import Batcher

path = sys.argv[1]
N, HALF = 12, 7  # 5 batches per epoch: the stop is mid-epoch, the run spans 3 epochs
r = np.random.default_rng(0)
x = r.standard_normal((40, 6)).astype(np.float32)
y = (x[:, :3].sum(1) > 0).astype(np.uint32)
aug = np.random.default_rng(5)

class Noisy:  # a Dataset whose examples are augmented with a numpy Generator saved in the checkpoint
    def __len__(self):
        return len(x)

    def __getitem__(self, i):
        return x[i] + aug.normal(0.0, 0.05, 6).astype(np.float32), y[i]

class Mlp(nn.Module):
    def __init__(self, vb):
        self.l1, self.l2, self.drop = nn.linear(6, 16, vb.pp("l1")), nn.linear(16, 2, vb.pp("l2")), nn.Dropout(0.3)

    def forward(self, xs):
        return self.l2.forward(self.drop.forward_t(self.l1.forward(xs).relu(), True))

def loss_fn(m, xs, ys):
    return nn.loss.cross_entropy(m.forward(xs), ys)

def train(kind, mode):
    Device.Cpu.set_seed(1234)
    aug.bit_generator.state = np.random.default_rng(5).bit_generator.state
    vm = nn.VarMap(seed=4)
    model = Mlp(nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu))
    lr = optim.linear_schedule(0.05, 0.01, N)
    opt = optim.AdamW(vm.all_vars(), optim.ParamsAdamW(lr=lr)) if kind == "adamw" else optim.SGD(vm.all_vars(), lr)
    b = Batcher(Noisy(), 8, shuffle=True, seed=3)
    ckpt, step, losses = f"{path}.{kind}", 0, []
    if mode == "second":
        Device.Cpu.set_seed(999)  # restore must bring back the saved generator
        ck = checkpoint.restore(ckpt, model, optimizer=opt, batcher=b, numpy_rngs={"aug": aug})
        step, losses = ck.step, ck.extra["losses"]
    while step < N:
        for xb, yb in b:
            losses.append(float(opt.backward_step(loss_fn, model, xb, yb)))
            step += 1
            if mode == "full" and step == HALF:  # saving does not disturb the run
                checkpoint.save(ckpt, model, step=step, batcher=b, optimizer=opt, numpy_rngs={"aug": aug},
                                extra={"losses": losses})
            if step == N:
                break
    return {"losses": [v.hex() for v in losses], "w": {v.name: v.flatten_all().to_vec1() for v in vm.all_vars()}}

out = {"seeded": seeded}
for kind in ("adamw", "sgd"):
    out[kind] = train(kind, sys.argv[2])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script in two processes with other hash seeds: the straight runs (checkpointed half way), then
    the second halves resumed from the checkpoints."""
    path = str(tmp_path_factory.mktemp("resume") / "ckpt")
    return _run(SEEDED + RESUME, 0, path, "full"), _run(SEEDED + RESUME, 1, path, "second")


def test_seeded_draws_do_not_depend_on_the_hash_seed(runs):
    a, b = (r["seeded"] for r in runs)
    assert a == b
    assert [n for n, _ in a["vars"]] == ["a.weight", "m.bias", "m.weight", "z.bias", "z.weight"]


def test_resume_in_a_fresh_process_is_bit_identical(runs):
    """AdamW and SGD bound to a VarMap, dropout from the device generator, a learning-rate schedule, a
    shuffled Batcher over a Dataset drawing from a saved numpy Generator: N steps straight equal N/2
    steps + save, then restore in another process (another hash seed) + the rest, bit for bit."""
    straight, resumed = runs
    for kind in ("adamw", "sgd"):
        assert len(straight[kind]["losses"]) == 12
        assert resumed[kind]["losses"] == straight[kind]["losses"], kind
        assert resumed[kind]["w"] == straight[kind]["w"], kind


def test_batcher_reads_a_dataset_object_only_as_its_batches_are_taken():
    """A Dataset's ``__getitem__`` may draw random numbers (augmentation): reading ahead on the prefetch
    thread would draw them in an order that depends on thread timing and leave a checkpointed
    generator ahead of the saved position."""
    reads: list[int] = []

    class Recorded:
        def __len__(self):
            return 12

        def __getitem__(self, i):
            reads.append(i)
            return np.float32(i)

    b = data.Batcher(Recorded(), 3, shuffle=True, seed=1)
    reads.clear()  # the constructor reads example 0 (its device)
    it = iter(b)
    first = next(it)
    time.sleep(0.2)  # what a prefetch thread would have read meanwhile
    assert sorted(reads) == sorted(np.asarray(first).astype(int).tolist()) and b.position == 1
    rest = [int(v) for batch in it for v in np.asarray(batch)]
    assert sorted(reads) == sorted(rest + np.asarray(first).astype(int).tolist()) == list(range(12))
    # in-memory arrays have no side effects: they are still gathered ahead
    assert data.Batcher((np.zeros((12, 2), np.float32),), 3).prefetch == 2
    assert data.Batcher(Recorded(), 3, prefetch=1).prefetch == 1  # asked for explicitly


def test_varmap_seeds_use_all_64_bits():
    """``VarMap(seed=2**63)`` drew the same weights as ``seed=0`` (the seed was taken modulo 2**63) and a
    negative seed was accepted as another's alias; seeds are u64 as ``Device.set_seed``'s."""
    import zlib

    import pytest

    from candlejax import DType, Tensor
    from candlejax.errors import Error
    from candlejax.nn import VarMap
    from candlejax.nn.init import Randn

    def weights(seed: int) -> np.ndarray:
        return np.asarray(VarMap(seed=seed).get((4, 3), "w", Randn(0.0, 1.0), DType.F32, None).to_vec2())

    assert not np.array_equal(weights(0), weights(2**63))
    assert not np.array_equal(weights(2**63 - 1), weights(2**64 - 1))
    for seed in (0, 7, 2**63 - 1):  # seeds below 2**63 keep their numbers: PCG64 from (seed, crc32(name))
        want = Randn(0.0, 1.0).sample((4, 3), DType.F32, None, np.random.default_rng([seed, zlib.crc32(b"w")]))
        np.testing.assert_array_equal(weights(seed), np.asarray(Tensor(want).to_vec2()))
    for bad in (-1, 2**64):
        with pytest.raises(Error, match=r"VarMap: seed must be in \[0, 2\*\*64\)"):
            VarMap(seed=bad)
