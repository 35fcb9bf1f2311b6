"""bench/gpu.py --tiny runs end to end on the CPU (the GPU run is prepared here; timings not checked)."""

from __future__ import annotations

import json

from dist_helpers import ROOT, run_child  # isort: skip


def test_gpu_bench_tiny_runs(tmp_path):
    r = run_child([str(ROOT / "bench" / "gpu.py"), "--tiny", "--out", str(tmp_path)], timeout=600, devices=1)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    for sec in ("llama2_7b_decode", "bert_base", "mlp_train"):
        assert "error" not in res[sec] and "skipped" not in res[sec], res[sec]
    assert res["llama2_7b_decode"]["generate_tokens_repeatable"] is True
    assert res["mlp_train"]["matmul_rel_err_exact"] < 1e-5
    assert r.stdout.count("\n| ") >= 8 and "`Llama.generate`" in r.stdout
