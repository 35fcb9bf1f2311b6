"""Generate the corpus of crafted npy and GGUF files the robustness tests read (nothing is downloaded).

    python tests/fuzz_corpus.py OUT_DIR          # writes the files and prints one line per file

Each case is ``(file name, bytes, substring of the expected candlejax error)``. The generator is
deterministic; ``mutations(seed, n)`` adds byte-level mutations of valid files for fuzzing.
"""

from __future__ import annotations

import io
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# GGUF value type ids
U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10


def npy_bytes(header: str | bytes, data: bytes = b"", version: int = 1) -> bytes:
    """A npy file with a raw header (no validation, no padding rules)."""
    h = header.encode("latin1") if isinstance(header, str) else header
    ll = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + ll + h + data


def npy_cases() -> list[tuple[str, bytes, str]]:
    big = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 400_000 + "), }"
    deep = "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 2000 + ")" * 2000 + ", }"
    rank = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 65 + "), }"
    return [
        ("npy_huge_header.npy", npy_bytes(big, version=2), "exceeds"),
        ("npy_nested_header.npy", npy_bytes(deep), "too many items or brackets"),
        ("npy_rank65.npy", npy_bytes(rank.ljust(1000)), "rank 65"),
        ("npy_not_a_dict.npy", npy_bytes("[1, 2, 3]"), "unable to parse header"),
        ("npy_bad_shape.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), "invalid shape"),
        ("npy_truncated.npy", npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000,), }", b"\0" * 8),
         "truncated data"),
        ("npy_empty.npy", b"", "truncated"),
    ]


# --- GGUF -------------------------------------------------------------------------------------------
def _s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key: str, vtype: int, value) -> bytes:
    """One metadata entry, GGUF v3."""
    fmt = {U32: "<I", I32: "<i", F32: "<f", U64: "<Q", BOOL: "<B"}
    if vtype == STRING:
        body = _s(value)
    elif vtype == ARRAY:
        et, items = value
        body = struct.pack("<IQ", et, len(items)) + b"".join(
            _s(x) if et == STRING else struct.pack(fmt[et], x) for x in items
        )
    else:
        body = struct.pack(fmt[vtype], value)
    return _s(key) + struct.pack("<I", vtype) + body


def gguf_bytes(entries: list[bytes], tensors: list[tuple[str, tuple[int, ...], int]] = ()) -> bytes:
    """A GGUF v3 file from raw metadata entries and F32 tensors ``(name, candle-order shape, ggml type)``."""
    out = io.BytesIO()
    out.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(entries)))
    for e in entries:
        out.write(e)
    off, sizes = 0, []
    for name, shape, gtype in tensors:
        out.write(_s(name) + struct.pack("<I", len(shape)))
        for d in reversed(shape):
            out.write(struct.pack("<Q", d))
        out.write(struct.pack("<IQ", gtype, off))
        n = 4 * int(np.prod(shape))
        sizes.append(n)
        off += (n + 31) // 32 * 32
    out.write(b"\0" * (-out.tell() % 32))
    for n in sizes:
        out.write(b"\0" * ((n + 31) // 32 * 32))
    return out.getvalue()


def llama_entries(**override) -> list[bytes]:
    """The metadata of a tiny llama GGUF; ``override`` replaces (value type, value) or drops (None) keys."""
    base = {
        "general.architecture": (STRING, "llama"),
        "llama.block_count": (U32, 1),
        "llama.embedding_length": (U32, 8),
        "llama.feed_forward_length": (U32, 16),
        "llama.attention.head_count": (U32, 2),
        "llama.attention.head_count_kv": (U32, 2),
        "llama.rope.dimension_count": (U32, 4),
        "llama.rope.freq_base": (F32, 10000.0),
        "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5),
        "llama.context_length": (U32, 64),
    }
    for k, v in override.items():
        k = k.replace("__", ".")
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return [kv(k, t, v) for k, (t, v) in base.items()]


def gguf_cases() -> list[tuple[str, bytes, str]]:
    ok = llama_entries()
    return [
        ("gguf_duplicate_key.gguf", gguf_bytes([*ok, kv("llama.block_count", U32, 10**9)]), "duplicate metadata key"),
        ("gguf_huge_count.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60), "more than the file can hold"),
        ("gguf_huge_array.gguf", gguf_bytes([_s("a") + struct.pack("<IIQ", ARRAY, U32, 2**40)]), "claims"),
        ("gguf_bad_type.gguf", gguf_bytes([_s("a") + struct.pack("<I", 99)]), "unrecognized value-type"),
        ("gguf_truncated.gguf", gguf_bytes(ok)[:200], "truncated"),
    ]


#: GGUF files that parse but whose metadata a loader must refuse: (name, bytes, key, expected error)
def gguf_metadata_cases() -> list[tuple[str, bytes, str, str]]:
    return [
        ("gguf_missing_heads.gguf", gguf_bytes(llama_entries(llama__attention__head_count=None)),
         "llama.attention.head_count", "missing metadata key"),
        ("gguf_string_blocks.gguf", gguf_bytes(llama_entries(llama__block_count=(STRING, "30"))),
         "llama.block_count", "must be an integer"),
        ("gguf_huge_blocks.gguf", gguf_bytes(llama_entries(llama__block_count=(U32, 10**9))),
         "llama.block_count", "outside the accepted range"),
        ("gguf_huge_rope_dim.gguf", gguf_bytes(llama_entries(llama__rope__dimension_count=(U32, 2**31))),
         "llama.rope.dimension_count", "outside the accepted range"),
        ("gguf_zero_freq_base.gguf", gguf_bytes(llama_entries(llama__rope__freq_base=(F32, 0.0))),
         "llama.rope.freq_base", "must be > 0"),
        ("gguf_nan_freq_base.gguf", gguf_bytes(llama_entries(llama__rope__freq_base=(F32, float("nan")))),
         "llama.rope.freq_base", "must be finite"),
    ]


def mutations(data: bytes, seed: int, n: int) -> Iterator[bytes]:
    """``n`` copies of ``data`` with 1-8 random bytes overwritten or the tail cut (deterministic)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        b = bytearray(data)
        if rng.random() < 0.2:
            yield bytes(b[: int(rng.integers(0, len(b)))])
            continue
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        yield bytes(b)


def write_corpus(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data, *_ in [*npy_cases(), *gguf_cases(), *gguf_metadata_cases()]:
        p = out / name
        p.write_bytes(data)
        paths.append(p)
    return paths


if __name__ == "__main__":
    for p in write_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz_corpus")):
        print(p, p.stat().st_size)
