"""Whisper speech recognition (~ candle-transformers' ``models::whisper`` and Candle's ``whisper`` example).

>>> from candlejax.models import whisper
>>> model = whisper.Whisper.from_pretrained("whisper-tiny.en", Device.Cpu)   # HF or CTranslate2 folder
>>> for seg in whisper.transcribe(model, "speech.wav", timestamps=True):
...     print(f"[{seg.start:.2f} -> {seg.end:.2f}] {seg.text}")
"""

from candlejax.models.whisper import audio, decoding
from candlejax.models.whisper.decoding import (
    Decoder,
    DecodingResult,
    Segment,
    WhisperTokenizer,
    compression_ratio,
    transcribe,
)
from candlejax.models.whisper.model import (
    AudioEncoder,
    Config,
    DecoderState,
    MultiHeadAttention,
    ResidualAttentionBlock,
    TextDecoder,
    Whisper,
    default_model_dir,
    new_state,
    prefill_jit,
    step,
    step_jit,
)

__all__ = [
    "AudioEncoder", "Config", "DecoderState", "MultiHeadAttention", "ResidualAttentionBlock", "TextDecoder", "Whisper",
    "Decoder", "DecodingResult", "Segment", "WhisperTokenizer", "audio", "compression_ratio", "decoding",
    "default_model_dir", "new_state", "prefill_jit", "step", "step_jit", "transcribe",
]  # fmt: skip
