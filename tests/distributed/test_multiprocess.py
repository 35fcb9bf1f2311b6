"""Two real processes on localhost (jax.distributed + CPU collectives) against one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dist_helpers import HERE, ROOT, run_child  # isort: skip

SCRIPT = str(HERE / "mp_train.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, extra: list[str]) -> list[subprocess.Popen]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("XLA_FLAGS", None)
    port = str(_port())
    return [
        subprocess.Popen([sys.executable, SCRIPT, "--num-processes", str(n), "--process-id", str(i), "--port", port,
                          *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]  # fmt: skip


def _result(out: str) -> dict:
    line = [ln for ln in out.splitlines() if ln.startswith("LOSSES ")]
    assert line, out[-3000:]
    return json.loads(line[-1][len("LOSSES ") :])


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a process of the distributed run hung (no error within the timeout)")
        out.append((p.returncode, o, e))
    return out


def test_two_processes_match_one_process():
    procs = _launch(2, ["--steps", "6"])
    single = run_child([SCRIPT, "--steps", "6"], timeout=120, devices=1)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = _result(single.stdout)
    (rc0, out0, err0), (rc1, _, err1) = _wait(procs, 120)
    assert rc0 == 0 and rc1 == 0, (err0[-3000:], err1[-3000:])
    got = _result(out0)
    assert ref["devices"] == 1 and got["devices"] == 2
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["wsum"], ref["wsum"], rtol=1e-5, atol=1e-5)


def test_a_dying_process_makes_the_other_fail_not_hang():
    t0 = time.monotonic()
    procs = _launch(2, ["--steps", "8", "--die-at", "3"])
    (rc0, out0, err0), (rc1, _, _) = _wait(procs, 90)
    assert rc1 == 3
    assert rc0 != 0, out0
    assert "LOSSES" not in out0
    assert any(s in err0 for s in ("Connection closed by peer", "heartbeat", "another task died", "Gloo")), err0[-3000:]
    assert time.monotonic() - t0 < 90


def test_initialize_with_bad_arguments_raises_a_candlejax_error():
    """JAX's ValueError / IndexError / TypeError for arguments that cannot start a run come back as
    candlejax errors naming the call (a child process: initialize changes global JAX settings)."""
    code = """
import candlejax as cj
for kw in (dict(num_processes=2, process_id=0), dict(coordinator_address="localhost:1", num_processes=2, process_id=5),
           dict(coordinator_address="localhost", num_processes=1, process_id=0),
           dict(coordinator_address="localhost:1", num_processes=1, process_id=0, no_such_option=1)):
    try:
        cj.distributed.initialize(**kw)
    except cj.errors.Error as e:
        print("CANDLEJAX", str(e).splitlines()[0][:100])
    except Exception as e:
        print("RAW", type(e).__name__, e)
"""
    r = run_child(["-c", code], timeout=120, devices=None)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("CANDLEJAX", "RAW"))]
    assert len(lines) == 4 and all(ln.startswith("CANDLEJAX cj.distributed.initialize failed") for ln in lines), lines
