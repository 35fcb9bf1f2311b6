"""Optional packages: ``import candlejax`` (every module) works with only the core dependencies, and a
feature whose package is missing raises ``MissingDependency`` (a candlejax error and an ``ImportError``)
naming the package and the ``pip install`` line. Each check runs in a subprocess where the package is
hidden (``sys.modules[name] = None`` makes its import raise ImportError)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ["tokenizers", "gguf", "tqdm", "jinja2", "soundfile", "soxr", "torch", "transformers", "PIL", "sklearn"]


def _run(code: str, hide: list[str], tmp_path: Path) -> dict:
    prelude = f"import sys\nfor _n in {hide!r}:\n    sys.modules[_n] = None\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_optional_packages(tmp_path: Path) -> None:
    code = """
        import importlib, json, pkgutil, candlejax
        bad = {}
        for m in pkgutil.walk_packages(candlejax.__path__, "candlejax."):
            if m.name.endswith("__main__") or m.name == "candlejax.quantized._native":
                continue
            try:
                importlib.import_module(m.name)
            except Exception as e:
                bad[m.name] = f"{type(e).__name__}: {e}"
        print(json.dumps(bad))
    """
    assert _run(code, OPTIONAL, tmp_path) == {}


_FEATURES = """
    import json, numpy as np
    import candlejax as cj
    import candlejax.audio, candlejax.data, candlejax.tokenizer, candlejax.vision
    from candlejax import errors
    out = {}
    def check(name, f):
        try:
            f()
            out[name] = "ok"
        except getattr(errors, "MissingDependency", ()) as e:
            assert isinstance(e, ImportError) and isinstance(e, errors.Error)
            out[name] = str(e)
        except Exception as e:
            out[name] = "RAW " + type(e).__name__ + ": " + str(e)
    open("t.json", "w").write("{}")
    open("a.wav", "wb").write(b"RIFF")
    check("load_tokenizer", lambda: cj.tokenizer.load_tokenizer("t.json"))
    check("gguf_tokenizer", lambda: cj.tokenizer.tokenizer_from_gguf_metadata({}))
    check("chat_template", lambda: cj.tokenizer.ChatTemplate("{{ messages }}"))
    check("read_audio", lambda: cj.audio.read_audio("a.wav"))
    check("resample", lambda: cj.audio.resample(np.zeros(8, np.float32), 8000, 16000))
    check("resample_same_rate", lambda: cj.audio.resample(np.zeros(8, np.float32), 16000, 16000))
    check("to_torch", lambda: cj.Tensor.new([1.0, 2.0]).to_torch())
    check("load_digits", lambda: cj.data.load_digits())
    check("load_image", lambda: cj.vision.load_image("a.wav"))
    check("image_to_tensor_array", lambda: cj.vision.image_to_tensor(np.zeros((2, 2, 3), np.uint8)))
    print(json.dumps(out))
"""


def test_missing_optional_package_names_the_install_line(tmp_path: Path) -> None:
    out = _run(_FEATURES, OPTIONAL, tmp_path)
    models = 'pip install "candlejax[models]"'
    for name, pkg in [("load_tokenizer", "tokenizers"), ("gguf_tokenizer", "tokenizers"),
                      ("chat_template", "jinja2"), ("read_audio", "soundfile"), ("resample", "soxr")]:  # fmt: skip
        assert pkg in out[name] and models in out[name], (name, out[name])
    assert "torch" in out["to_torch"] and "pip install torch" in out["to_torch"], out["to_torch"]
    assert "scikit-learn" in out["load_digits"] and 'pip install "candlejax[demo]"' in out["load_digits"]
    assert "pillow" in out["load_image"] and models in out["load_image"], out["load_image"]
    # no package needed: nothing to resample, pixels given as an array
    assert out["resample_same_rate"] == "ok" and out["image_to_tensor_array"] == "ok", out


def test_transcribe_progress_without_tqdm(tmp_path: Path) -> None:
    code = """
        import json
        from candlejax.optional import available
        print(json.dumps({"tqdm": available("tqdm"), "json": available("json")}))
    """
    assert _run(code, ["tqdm"], tmp_path) == {"tqdm": False, "json": True}
