"""llama.cpp's legacy GGJT file layout, written for tests (no reference writer is installed)."""

from __future__ import annotations

import struct


def ggjt_bytes(tensors, vocab=((b"a", 0.5), (b"bc", -1.0)), version: int = 3, hparams=(2, 32, 256, 4, 1, 8, 1)):
    """A GGJT file as llama.cpp's legacy writer lays it out: magic, version, 7 u32 hparams, vocab (u32 length,
    bytes, f32 score), then per tensor: n_dims, name length, ggml type, dims (reversed), name, 32-aligned data.
    ``tensors``: ``(name, ggml type id, shape, raw bytes)``; ``hparams``: n_vocab, n_embd, n_mult, n_head,
    n_layer, n_rot, ftype."""
    out = struct.pack("<II", 0x67676A74, version) + struct.pack("<7I", *hparams)
    for word, score in vocab:
        out += struct.pack("<I", len(word)) + word + struct.pack("<f", score)
    for name, type_id, shape, raw in tensors:
        out += struct.pack("<III", len(shape), len(name), type_id) + struct.pack(f"<{len(shape)}I", *shape[::-1])
        out += name.encode()
        out += b"\0" * ((32 - len(out) % 32) % 32) + raw
    return out
