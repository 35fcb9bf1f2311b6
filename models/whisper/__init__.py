"""Whisper speech recognition (~ candle-transformers' ``models::whisper`` and Candle's ``whisper`` example).

>>> from candlejax.models import whisper
>>> model = whisper.Whisper.from_pretrained("whisper-tiny.en", Device.Cpu)   # HF or CTranslate2 folder
>>> for seg in whisper.transcribe(model, "speech.wav", timestamps=True):
...     print(f"[{seg.start:.2f} -> {seg.end:.2f}] {seg.text}")

GGUF weights (Candle's ``m::quantized_model::Whisper``): :mod:`.quantized_model`.
"""

from candlejax.dtype import DType
from candlejax.models.whisper import audio, decoding, quantized_model
from candlejax.models.whisper.audio import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE
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

# Candle's ``whisper::*`` constants (``m::SAMPLE_RATE``, ``m::SOT_TOKEN``, ``m::TEMPERATURES``, ...);
# ``transcribe`` and ``Decoder.decode_with_fallback`` take the thresholds as their defaults
DTYPE = DType.F32
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
SOT_TOKEN = "<|startoftranscript|>"
TRANSCRIBE_TOKEN = "<|transcribe|>"
TRANSLATE_TOKEN = "<|translate|>"
NO_TIMESTAMPS_TOKEN = "<|notimestamps|>"
EOT_TOKEN = "<|endoftext|>"
NO_SPEECH_TOKENS = ("<|nocaptions|>", "<|nospeech|>")

__all__ = [
    "CHUNK_LENGTH", "COMPRESSION_RATIO_THRESHOLD", "DTYPE", "EOT_TOKEN", "HOP_LENGTH", "LOGPROB_THRESHOLD",
    "NO_SPEECH_THRESHOLD", "NO_SPEECH_TOKENS", "NO_TIMESTAMPS_TOKEN", "N_FFT", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE",
    "SOT_TOKEN", "TEMPERATURES", "TRANSCRIBE_TOKEN", "TRANSLATE_TOKEN",
    "AudioEncoder", "Config", "DecoderState", "MultiHeadAttention", "ResidualAttentionBlock", "TextDecoder", "Whisper",
    "Decoder", "DecodingResult", "Segment", "WhisperTokenizer", "audio", "compression_ratio", "decoding",
    "default_model_dir", "new_state", "prefill_jit", "quantized_model", "step", "step_jit", "transcribe",
]  # fmt: skip
