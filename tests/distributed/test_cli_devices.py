"""``--devices N`` on the digits demo: the data-parallel run reaches the one-device result."""

from __future__ import annotations

import re

from dist_helpers import run_child  # isort: skip


def test_demo_devices_matches_one_device(tmp_path):
    accs = []
    for n in (1, 2):
        r = run_child(["-m", "candlejax.demo", "--quick", "--epochs", "1", "--models", "mlp", "--no-progress",
                       "--devices", str(n), "--out", str(tmp_path / str(n))], timeout=300, devices=None)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        accs.append(re.search(r"mlp: .* test accuracy ([\d.]+)%", r.stdout).group(1))
    assert accs[0] == accs[1]
