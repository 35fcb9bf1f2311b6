"""Which corrupt GGUF files do candlejax's reader and gguf-py's ``GGUFReader`` refuse, and how?

    python bench/gguf_strictness.py [--mutations 300]

The files are the crafted ones the robustness tests use (``tests/fuzz_corpus.py``), the header
patches of ``tests/unit/test_gguf.py::test_corrupt_headers_raise_gguf_errors``, and byte-level
mutations of a valid tiny file. Each reader opens every file (one child process per reader, 6 GiB
address space, so a giant allocation fails instead of swapping), then copies every tensor's bytes;
the table shows the exception type and the start of its message, or "accepted".
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
which, paths = sys.argv[1], json.load(open(sys.argv[2]))
if which == "candlejax":
    from candlejax.io import gguf
else:
    import numpy as np
    from gguf import GGUFReader
out = []
for path in paths:
    try:
        if which == "candlejax":
            ct = gguf.Content.read(path)
            for n in ct.tensor_infos:
                ct.tensor_bytes(n)
            ct.close()
        else:
            r = GGUFReader(path)
            for t in r.tensors:
                np.array(t.data)
        out.append(["accepted", ""])
    except BaseException as e:
        out.append([type(e).__name__, str(e).replace("\n", " ")[:110]])
print(json.dumps(out))
"""


def run(which: str, paths: list[Path], tmp: Path) -> list[tuple[str, str]]:
    """The outcome of reading each file (one child process for all)."""
    lst = tmp / f"{which}.json"
    lst.write_text(json.dumps([str(p) for p in paths]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p),
           "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", CHILD, which, str(lst)], capture_output=True, text=True, env=env,
                       timeout=600)
    if r.returncode:
        raise SystemExit(f"{which} child died: {r.stderr[-2000:]}")
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def header_patches(tmp: Path) -> list[tuple[str, bytes]]:
    """The patched headers of test_corrupt_headers_raise_gguf_errors (same offsets)."""
    import numpy as np

    from candlejax.io import gguf
    from candlejax.quantized import GgmlDType, QTensor

    q = QTensor.quantize(np.ones((2, 32), np.float32), GgmlDType.Q4_0)
    p = tmp / "base.gguf"
    gguf.write(p, {"a": gguf.Value.array([1, 2, 3])}, {"t": q})
    base = p.read_bytes()

    def patch(at: int, fmt: str, v: int) -> bytes:
        b = bytearray(base)
        struct.pack_into("<" + fmt, b, at, v)
        return bytes(b)

    data_start = gguf.Content.read(p).tensor_data_offset
    return [
        ("bad magic", b"GGML" + base[4:]), ("version 7", patch(4, "I", 7)),
        ("big-endian version", patch(4, "I", 3 << 24)),
        ("2^50 tensors", patch(8, "Q", 2**50)), ("2^62 metadata entries", patch(16, "Q", 2**62)),
        ("2^40-byte key", patch(24, "Q", 2**40)), ("value type 99", patch(33, "I", 99)),
        ("2^61-element array", patch(41, "Q", 2**61)), ("1000 dims", patch(70, "I", 1000)),
        ("ggml type 20 (IQ4_NL)", patch(90, "I", 20)), ("row 33 not a multiple of the Q4_0 block", patch(74, "Q", 33)),
        ("tensor offset 2^40", patch(94, "Q", 2**40)), ("dim 2^40", patch(82, "Q", 2**40)),
        ("data cut 1 byte short", base[: data_start + 35]), ("empty file", b""),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mutations", type=int, default=300)
    a = ap.parse_args()
    import fuzz_corpus as fc

    tmp = Path(tempfile.mkdtemp(prefix="cj-gguf-strict-"))
    cases = [(n, b) for n, b, _ in fc.gguf_cases()] + header_patches(tmp)
    meta = [(f"{n} ({key})", b) for n, b, key, _ in fc.gguf_metadata_cases()]
    valid = fc.gguf_bytes(fc.llama_entries(), [("w", (2, 8), 0)])
    muts = list(fc.mutations(valid, seed=1, n=a.mutations))
    paths = []
    for i, data in enumerate([b for _, b in cases + meta] + muts):
        paths.append(tmp / f"f{i}.gguf")
        paths[-1].write_bytes(data)
    res = {w: run(w, paths, tmp) for w in ("candlejax", "gguf-py")}

    def cell(r: tuple[str, str]) -> str:
        return r[0] if r[0] == "accepted" else f"`{r[0]}`: {r[1]}"

    print("| file | candlejax.io.gguf | gguf-py GGUFReader |\n|---|---|---|")
    for i, (name, _) in enumerate(cases):
        print(f"| {name} | {cell(res['candlejax'][i])} | {cell(res['gguf-py'][i])} |")
    print("\nFiles that parse but whose llama metadata a loader must refuse (gguf_metadata_cases):")
    for i, (name, _) in enumerate(meta, start=len(cases)):
        print(f"- {name}: candlejax {res['candlejax'][i][0]}, gguf-py {res['gguf-py'][i][0]}")
    k = len(cases) + len(meta)
    print(f"\n{a.mutations} byte mutations of a valid tiny llama GGUF (tests/fuzz_corpus.py, seed 1):")
    for w, rs in res.items():
        c = collections.Counter(r[0] for r in rs[k:])
        print(f"- {w}: " + ", ".join(f"{n} {v}" for n, v in c.most_common()))
    both = sum(1 for x, y in zip(res["candlejax"][k:], res["gguf-py"][k:]) if x[0] != "accepted" and y[0] == "accepted")
    rev = sum(1 for x, y in zip(res["candlejax"][k:], res["gguf-py"][k:]) if x[0] == "accepted" and y[0] != "accepted")
    print(f"- refused by candlejax only: {both}; refused by gguf-py only: {rev}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
