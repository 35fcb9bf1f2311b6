"""Every ```python block in README.md and docs/**/*.md runs as written, in a fresh process, from an
empty temporary directory. A block that cannot run here is marked, visibly, by the line
``<!-- no-run: reason -->`` right before it (used sparingly; the reason is shown in the docs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*no-run:\s*(?P<why>.*?)\s*-->\s*\n)?^```python[ \t]*\n(?P<code>.*?)^```", re.M | re.S)


def blocks() -> list:
    out = []
    for f in FILES:
        text = f.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text[: m.start("code")].count("\n")
            rel = f.relative_to(ROOT).as_posix()
            marks = [pytest.mark.skip(reason=f"no-run: {m['why']}")] if m["why"] else []
            out.append(pytest.param(m["code"], id=f"{rel}:{line}", marks=marks))
    return out


BLOCKS = blocks()


def test_readme_has_python_blocks():
    assert sum(p.id.startswith("README.md") for p in BLOCKS) >= 3
    assert all(not p.marks for p in BLOCKS if p.id.startswith("README.md")), "every README block runs"


def test_python_blocks_are_marked_python():
    # a block fenced ```py, ```python3 or ```pycon would not be run by test_code_block_runs
    langs = {m for f in FILES for m in re.findall(r"^```[ \t]*(\S*)", f.read_text(encoding="utf-8"), re.M)}
    assert not {lang for lang in langs if lang.lower().startswith("py") and lang != "python"}, langs


@pytest.mark.parametrize("code", BLOCKS)
def test_code_block_runs(code: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    # an example that compiles its step again every iteration (a lambda in the loop) teaches the slow way
    assert "RecompileWarning" not in r.stderr, r.stderr[-3000:]


def _resolve(dotted: str) -> object:
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(dotted)


def _table_names() -> list[str]:
    """The candlejax column of the README's "What is here" table, as dotted names: ``cj.`` is
    ``candlejax.``, a bare name belongs to ``candlejax``, ``.x`` is a sibling of the cell's first module."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## What is here", 1)[1].split("\n\n", 2)[1]
    out = []
    for row in table.splitlines()[2:]:
        cell = row.strip("|").split("|")[1]
        first = None
        for name in re.findall(r"`([^`]+)`", cell):
            m = re.fullmatch(r"from candlejax import (\w+) as \w+", name)
            name = f"candlejax.{m[1]}" if m else re.sub(r"^cj\.", "candlejax.", name)
            if name.startswith("."):
                name = first.rsplit(".", 1)[0] + name
            elif not name.startswith("candlejax."):
                name = f"candlejax.{name}"
            first = first or name
            out.append(name)
    return out


# names in the table's notes column and the model kit paragraph, module: names
_NOTED = {
    "candlejax.tensor.Tensor": ["add", "broadcast_add", "quantize", "nelement"],
    "candlejax.nn": ["VarBuilder", "VarMap", "KvCache", "RotatingKvCache", "ConcatKvCache", "StackedKvCache",
                     "RotaryEmbedding", "pack_linears", "PackedLinear"],
    "candlejax.nn.attention": ["flash_attn", "flash_attn_varlen_cpu"],
    "candlejax.nn.ops": ["sdpa"],
    "candlejax.nn.quantized": ["QLinear", "QEmbedding", "QRmsNorm"],
    "candlejax.optim": ["SGD", "AdamW"],
    "candlejax.data": ["Batcher"],
    "candlejax.examples": ["device", "load_image", "load_image_and_resize", "save_image", "save_image_resize",
                           "hub_load_local_safetensors", "hub_load_safetensors"],
    "candlejax.examples.audio": ["pcm_decode", "resample", "normalize_loudness"],
    "candlejax.examples.chat_template": ["ChatTemplate", "Conversation"],
    "candlejax.quantized.QTensor": ["quantize_imatrix"],
    "candlejax.quantized": ["QMatMul"],
    "candlejax.models.llama2_c.Cache": ["new"],
    "candlejax.models.quantized_llama2_c": ["QLlama"],
    "candlejax.models.quantized_nn": ["Linear", "QLinear", "Embedding", "RmsNorm", "layer_norm"],
    "candlejax.models.with_tracing": ["Linear", "Embedding", "LayerNorm", "RmsNorm", "Conv2d", "QMatMul"],
    "candlejax.models.yolo.darknet": ["Darknet", "load_darknet_weights"],
    "candlejax.pipelines": ["SentenceEmbedder", "TextGeneration", "ZeroShotClassifier", "ImageCaptioner",
                            "ObjectDetector"],
    "candlejax.distributed": ["llama_tp_rules", "bert_tp_rules", "initialize", "mesh", "shard"],
    "candlejax.models.llama": ["tp_rules"],
    "candlejax.models.bert": ["tp_rules"],
    "candlejax.vision": ["load_image", "resize", "resize_shortest", "center_crop", "normalize"],
    "candlejax.models.resnet": ["load", "forward_jit"],
    "candlejax.models.whisper.audio": ["pcm_to_mel"],
    "candlejax.io.ct2": ["convert_whisper"],
    "candlejax.xla": ["enable_compilation_cache", "load_programs", "limit_malloc_arenas", "GENERATION_OPTIONS"],
    "candlejax.generation": ["compile_generation"],
    "candlejax.quantized.native": ["available"],
    "candlejax.nn.module": ["as_array"],
    "candlejax.tensor": ["unwrap"],
    "candlejax": ["enable_x64", "value_and_grad"],
}


def test_readme_table_names_exist():
    names = _table_names()
    assert len(names) >= 40, names
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    for mod, attrs in _NOTED.items():
        obj = _resolve(mod)
        missing += [f"{mod}.{a}" for a in attrs if not hasattr(obj, a)]
    assert not missing, missing


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_and_anchors_resolve():
    broken = []
    for f in FILES:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)", f.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (f.parent / target) if target else f
            if not path.exists():
                broken.append(f"{f.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md":
                heads = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.M)}
                if anchor not in heads:
                    broken.append(f"{f.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, broken
