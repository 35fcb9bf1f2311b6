"""Whisper decoding and long-form transcription (~ Candle's ``whisper`` example and OpenAI's
``whisper/decoding.py`` + ``whisper/transcribe.py``).

* one window: :meth:`Decoder.decode` runs the compiled decoder step (:func:`~.model.step_jit`)
  once per token on a pre-allocated KV cache, the cross-attention keys/values computed once per
  window; greedy at temperature 0, sampling above; suppressed tokens (``suppress_tokens``, blank
  at the start), timestamp rules (pairs, monotonic, initial timestamp <= 1 s, timestamps win when
  their total probability beats any text token), no-speech probability, average log-probability;
* :meth:`Decoder.decode_with_fallback`: retries at the next temperature when the text is too
  repetitive (gzip compression ratio > 2.4) or too unlikely (average log-prob < -1), unless the
  window is silence (no-speech probability > 0.6);
* :func:`transcribe`: 30 s windows with Whisper's seek logic, the previous text as prompt, one
  :class:`Segment` yielded at a time. Audio is read block by block (:class:`candlejax.audio.AudioStream`).

Past the end of the audio, ``mel_padding="audio"`` (default) uses the spectrogram of zero samples,
as transformers' ``WhisperFeatureExtractor`` pads; ``mel_padding="mel"`` sets those mel frames to
0.0, as OpenAI's ``transcribe`` and faster-whisper do. The two can decode a clip differently.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from candlejax import errors
from candlejax.audio import AudioStream, PcmSource, resample
from candlejax.generation.candle_rng import StdRng, weighted_index
from candlejax.generation.sampling import candle_softmax
from candlejax.models.whisper import audio as wa
from candlejax.models.whisper.model import AudioEncoder, Whisper, new_state, prefill_jit, step_jit
from candlejax.optional import require
from candlejax.tensor import Tensor

__all__ = ["DecodingResult", "Decoder", "Segment", "WhisperTokenizer", "compression_ratio", "transcribe"]

DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
TIME_PRECISION = 0.02  # seconds per timestamp token
INPUT_STRIDE = 2  # mel frames per audio position
_PROMPT_CHUNK = 32  # prompt tokens per compiled prefill call (one program for every prompt)


class WhisperTokenizer:
    """A ``tokenizers`` BPE tokenizer with Whisper's special token ids."""

    def __init__(self, path: str | os.PathLike, config: Any = None):
        Tokenizer = require("tokenizers", "WhisperTokenizer").Tokenizer

        self.tk = Tokenizer.from_file(os.fspath(path))
        t = self.tk.token_to_id
        self.eot = t("<|endoftext|>")
        self.sot = t("<|startoftranscript|>")
        if self.eot is None or self.sot is None:
            raise errors.Msg(f"whisper: {path} is not a Whisper tokenizer (no <|startoftranscript|>)")
        self.translate, self.transcribe = t("<|translate|>"), t("<|transcribe|>")
        self.sot_prev, self.sot_lm = t("<|startofprev|>"), t("<|startoflm|>")
        self.no_speech = t("<|nospeech|>") if t("<|nospeech|>") is not None else t("<|nocaptions|>")
        self.no_timestamps = t("<|notimestamps|>")
        ts = t("<|0.00|>")
        self.timestamp_begin = ts if ts is not None else self.no_timestamps + 1
        ids = range(self.sot + 1, self.translate) if self.translate else range(0)
        self.language_tokens = [i for i in ids if self.tk.id_to_token(i) is not None]

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, no special tokens (OpenAI's ``Tokenizer.encode``)."""
        return list(self.tk.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens (ids from ``<|endoftext|>`` on) dropped."""
        return self.tk.decode([int(i) for i in ids if i < self.eot])

    def language_code(self, token: int) -> str:
        """The language code of a language token (``<|en|>`` -> ``en``)."""
        return str(self.tk.id_to_token(token)).strip("<|>")


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length of ``text`` (Whisper's repetition check); 0.0 for empty text."""
    b = text.encode("utf-8")
    return len(b) / len(zlib.compress(b)) if b else 0.0


@dataclass
class DecodingResult:
    """One window's decoding (OpenAI's ``DecodingResult``): ``text`` is stripped and
    ``compression_ratio`` is that text's."""

    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float
    language: str = "en"


@dataclass
class Segment:
    """A transcribed span: times in seconds, its text and token ids (timestamps included); ``seek`` is
    the first mel frame (10 ms each) of the 30 s window it was decoded in (OpenAI's, faster-whisper's)."""

    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    seek: int = 0
    id: int = field(default=0)


def _encode_fn(encoder: AudioEncoder, mel: Any) -> Any:
    return encoder.forward(mel)


_encode_jit = jax.jit(_encode_fn)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - m - np.log(np.sum(np.exp(x - m)))


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m)))) if np.isfinite(m) else m


@functools.lru_cache(maxsize=4)
def _tokenizer_of(path: str, mtime_ns: int) -> WhisperTokenizer:
    """A model folder's tokenizer, read once per file version (reading tiny.en's took ~65 ms of every
    transcription)."""
    return WhisperTokenizer(path)


class Decoder:
    """Decodes 30 s windows of one model (Candle's example ``Decoder``). The first timestamp is at
    most ``max_initial_timestamp`` seconds (``None``: any, as OpenAI's and Candle's option)."""

    def __init__(self, model: Whisper, tokenizer: WhisperTokenizer | None = None, *, timestamps: bool = True,
                 language: str | None = None, task: str = "transcribe", max_initial_timestamp: float | None = 1.0,
                 seed: int = 299792458):  # fmt: skip
        self.model, self.cfg = model, model.config
        if tokenizer is None:
            path = os.path.join(model.path, "tokenizer.json")
            if not os.path.isfile(path):
                raise errors.Msg(f"whisper: no tokenizer.json in {model.path!r}; pass tokenizer=WhisperTokenizer(path)")
            tokenizer = _tokenizer_of(path, os.stat(path).st_mtime_ns)
        self.tok = tok = tokenizer
        self.timestamps = timestamps
        self.multilingual = self.cfg.is_multilingual
        if task not in ("transcribe", "translate"):
            raise errors.Msg(f"whisper: task must be 'transcribe' or 'translate', got {task!r}")
        if task == "translate" and not self.multilingual:
            raise errors.Msg("whisper: this model is English-only; task 'translate' needs a multilingual model")
        self.task = task
        self.language = None
        if language is not None:
            if not self.multilingual:
                if language != "en":
                    raise errors.Msg(f"whisper: this model is English-only; language {language!r} not supported")
            else:
                lt = tok.tk.token_to_id(f"<|{language}|>")
                if lt is None or lt not in tok.language_tokens:
                    raise errors.Msg(f"whisper: unknown language {language!r}")
                self.language = language
        self.n_ctx = self.cfg.max_target_positions
        self.sample_len = self.n_ctx // 2
        self.max_initial_timestamp_index = (None if max_initial_timestamp is None
                                            else round(max_initial_timestamp / TIME_PRECISION))  # fmt: skip
        v = self.cfg.vocab_size
        sup = {int(t) for t in self.cfg.suppress_tokens}
        sup |= {t for t in (tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech)
                if t is not None}  # fmt: skip
        self.suppress = np.array(sorted(t for t in sup if 0 <= t < v), np.int64)
        self.begin_suppress = np.array([t for t in self.cfg.begin_suppress_tokens if 0 <= t < v], np.int64)
        #: Candle's example: one ``StdRng::seed_from_u64(seed)`` for every window and temperature
        self.rng = StdRng.seed_from_u64(seed)

    # --- one window ------------------------------------------------------------------------------
    def encode(self, mel: Any) -> Tensor:
        """Mel ``(n_mels, 3000)`` or ``(1, n_mels, 3000)`` -> audio features ``(1, 1500, d_model)`` (compiled)."""
        m = np.asarray(mel, np.float32)
        if m.ndim == 2:
            m = m[None]
        # the weights' dtype (a model loaded in F16 / BF16): convolutions never promote
        return _encode_jit(self.model.encoder, Tensor.from_numpy(m).to_dtype(self.model.encoder.conv1.weight.dtype))

    def detect_language(self, audio: Tensor) -> str:
        """The most likely language code (multilingual models), from the logits after ``<|startoftranscript|>``."""
        if not self.multilingual:
            return "en"
        state = new_state(self.model.decoder, audio)
        logits, _ = step_jit(self.model.decoder, state, jnp.asarray([[self.tok.sot]], jnp.int32))
        lg = np.asarray(logits)[0, -1]
        langs = np.asarray(self.tok.language_tokens)
        return self.tok.language_code(int(langs[np.argmax(lg[langs])]))

    def _language_of(self, audio: Tensor, language: str | None) -> str:
        """``language``, else the constructor's, else (multilingual models) the one detected in
        ``audio``, as OpenAI's ``decode`` does; ``"en"`` for English-only models."""
        if language is not None:
            return language
        if self.language is not None:
            return self.language
        return self.detect_language(audio) if self.multilingual else "en"

    def sot_sequence(self, language: str) -> list[int]:
        """The start tokens: ``<|startoftranscript|>``, then (multilingual models) ``language``'s token
        and the task's, then ``<|notimestamps|>`` without timestamps."""
        seq = [self.tok.sot]
        if self.multilingual:
            lt = self.tok.tk.token_to_id(f"<|{language}|>")
            if lt is None or lt not in self.tok.language_tokens:
                raise errors.Msg(f"whisper: unknown language {language!r} (no <|{language}|> language token)")
            seq += [lt, self.tok.translate if self.task == "translate" else self.tok.transcribe]
        if not self.timestamps:
            seq.append(self.tok.no_timestamps)
        return seq

    def _filter(self, logits: np.ndarray, tokens: list[int], sample_begin: int) -> tuple[np.ndarray, float]:
        """The logits with the suppression and timestamp rules applied, and their log-sum-exp
        (float64: ``x[i] - lse`` is token i's log-probability)."""
        tok = self.tok
        x = logits.copy()
        if len(tokens) == sample_begin:
            x[self.begin_suppress] = -np.inf
        x[self.suppress] = -np.inf
        if not self.timestamps:
            return x, _logsumexp(x.astype(np.float64))
        tb = tok.timestamp_begin
        if tok.no_timestamps is not None:
            x[tok.no_timestamps] = -np.inf
        seq = tokens[sample_begin:]
        last_ts = len(seq) >= 1 and seq[-1] >= tb
        penult_ts = len(seq) < 2 or seq[-2] >= tb
        if last_ts:
            if penult_ts:
                x[tb:] = -np.inf
            else:
                x[: tok.eot] = -np.inf
        stamps = [t for t in seq if t >= tb]
        if stamps:
            last = stamps[-1] if (last_ts and not penult_ts) else stamps[-1] + 1
            x[tb:last] = -np.inf
        if len(tokens) == sample_begin:
            x[:tb] = -np.inf
            if self.max_initial_timestamp_index is not None:
                x[tb + self.max_initial_timestamp_index + 1 :] = -np.inf
        # timestamps win when their total probability beats every text token's: one exp pass
        x64 = x.astype(np.float64)
        m = float(np.max(x64))
        e = np.exp(x64 - m)
        with np.errstate(divide="ignore"):  # log(0) = -inf where a side is all masked
            lse_text, lse_ts = m + np.log(np.sum(e[:tb])), m + np.log(np.sum(e[tb:]))
        if lse_ts > np.max(x64[:tb]):  # log-probabilities share the normaliser: compare logits
            x[:tb] = -np.inf
            return x, float(lse_ts)
        return x, float(np.logaddexp(lse_text, lse_ts))

    def decode(self, audio: Tensor, temperature: float = 0.0, prompt: Sequence[int] | str = (),
               language: str | None = None) -> DecodingResult:  # fmt: skip
        """Decode one window's audio features at ``temperature`` with ``prompt`` (previous text tokens,
        or a text: the tokens of ``" " + prompt.strip()``, as OpenAI's ``DecodingOptions.prompt``).
        ``language`` defaults to the constructor's, else (multilingual models) the detected one.

        Samples up to ``max_target_positions // 2`` tokens, and stops once the sequence (prompt and
        start tokens included) holds ``max_target_positions + 1`` tokens, as OpenAI's and Candle's loops."""
        try:
            ok = math.isfinite(temperature) and temperature >= 0
        except TypeError:
            ok = False
        if not ok:
            raise errors.Msg(f"whisper Decoder.decode: temperature must be a finite number >= 0, got {temperature!r}")
        tok = self.tok
        if isinstance(prompt, str):
            prompt = tok.encode(" " + prompt.strip()) if prompt.strip() else []
        else:  # token ids: a list, numpy array or Tensor
            prompt = [int(t) for t in np.asarray(prompt).reshape(-1)]
        language = self._language_of(audio, language)
        sot_seq = self.sot_sequence(language)
        initial = ([tok.sot_prev, *list(prompt)[-(self.n_ctx // 2 - 1) :]] if prompt else []) + sot_seq
        sample_begin, sot_index = len(initial), initial.index(tok.sot)
        dec = self.model.decoder
        state = new_state(dec, audio)
        chunk = min(_PROMPT_CHUNK, self.n_ctx)
        n_pad = -(-sample_begin // chunk) * chunk
        ids = np.full((1, n_pad), tok.eot, np.int32)
        ids[0, :sample_begin] = initial
        rows = {}  # hidden states of the two positions whose logits are used
        for c in range(0, n_pad, chunk):
            c0 = min(c, self.n_ctx - chunk)  # a last chunk past the cache ends where the cache ends
            if c0 != c:
                state = state.with_position(c0)
            h, state = prefill_jit(dec, state, ids[:, c0 : c0 + chunk])
            for i in (sot_index, sample_begin - 1):
                if c0 <= i < c0 + chunk:  # on the host: no eager slice / stack programs
                    rows[i] = np.asarray(h.jax)[:, i - c0]
        state = state.with_position(sample_begin)  # the padding slots are masked out and overwritten
        two = np.stack([rows[sot_index], rows[sample_begin - 1]], 1)
        lg = np.asarray(dec.final_linear(Tensor.from_jax(jax.device_put(two))))[0]
        probs = np.exp(_log_softmax(lg[0].astype(np.float64)))
        no_speech = float(probs[tok.no_speech]) if tok.no_speech is not None else 0.0
        cur = lg[1]
        tokens = list(initial)
        sum_lp = 0.0
        limit = min(self.sample_len, self.n_ctx + 1 - sample_begin)  # the last from position n_ctx - 1
        for _ in range(limit):
            x, lse = self._filter(cur.astype(np.float32), tokens, sample_begin)
            if temperature == 0.0:
                nxt = int(np.argmax(x))
            else:  # Candle: softmax(logits / t) in f32, WeightedIndex::new(&prs).sample(&mut self.rng)
                prs = candle_softmax(x * np.float32(1.0 / temperature))
                nxt = weighted_index(prs, self.rng.next_u32())
            sum_lp += float(x[nxt]) - lse
            tokens.append(nxt)
            if nxt == tok.eot or len(tokens) > self.n_ctx:
                break
            logits, state = step_jit(dec, state, np.array([[nxt]], np.int32))
            cur = np.asarray(logits)[0, -1]
        out = tokens[sample_begin:]
        if out and out[-1] == tok.eot:
            out = out[:-1]
        text = tok.decode(out).strip()
        return DecodingResult(out, text, sum_lp / (len(out) + 1), no_speech, float(temperature),
                              compression_ratio(text), language)  # fmt: skip

    def decode_with_fallback(self, audio: Tensor, temperatures: float | Sequence[float] = DEFAULT_TEMPERATURES,
                             prompt: Sequence[int] | str = (), language: str | None = None,
                             compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
                             no_speech_threshold: float | None = 0.6) -> DecodingResult:  # fmt: skip
        """Decode at each temperature in turn (one number: that one) until the result passes the
        thresholds (OpenAI's fallback)."""
        temperatures = (temperatures,) if isinstance(temperatures, numbers.Real) else tuple(temperatures)
        if not temperatures:
            raise errors.Msg("whisper Decoder.decode_with_fallback: no temperatures (give at least one, e.g. (0.0,))")
        language = self._language_of(audio, language)
        res = None
        for t in temperatures:
            res = self.decode(audio, t, prompt, language)
            bad = compression_ratio_threshold is not None and res.compression_ratio > compression_ratio_threshold
            low = logprob_threshold is not None and res.avg_logprob < logprob_threshold
            if no_speech_threshold is not None and res.no_speech_prob > no_speech_threshold and low:
                break  # silence: no fallback
            if not bad and not low:
                break
        assert res is not None
        return res


def _source(path_or_pcm: Any) -> Any:
    if isinstance(path_or_pcm, (str, os.PathLike)):
        return AudioStream(path_or_pcm, wa.SAMPLE_RATE)
    if isinstance(path_or_pcm, Tensor):
        path_or_pcm = np.asarray(path_or_pcm)
    return PcmSource(path_or_pcm, wa.SAMPLE_RATE)


def _at_whisper_rate(path_or_pcm: Any, sample_rate: float | None) -> Any:
    """A path unchanged, or the samples as mono float32 at 16 kHz (resampled from ``sample_rate``)."""
    if isinstance(path_or_pcm, (str, os.PathLike)):
        if sample_rate is not None:
            raise errors.Audio(f"whisper: sample_rate={sample_rate!r} is the rate of an array of samples; a"
                               " sound file's rate is read from its header")  # fmt: skip
        return path_or_pcm
    if sample_rate is None:
        return path_or_pcm
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real) or not 0 < sample_rate < math.inf:
        raise errors.Audio(f"whisper: sample_rate must be a positive number (Hz), got {sample_rate!r}")
    if sample_rate == wa.SAMPLE_RATE:
        return path_or_pcm
    if isinstance(path_or_pcm, Tensor):
        path_or_pcm = np.asarray(path_or_pcm)
    mono = PcmSource(path_or_pcm, wa.SAMPLE_RATE).pcm  # (validated, channels averaged)
    return resample(mono, sample_rate, wa.SAMPLE_RATE)


def _log_mel_floor(path_or_pcm: Any, n_mels: int) -> float | None:
    """The whole file's largest log-mel value minus 8, from a first pass over it: OpenAI floors every
    window at it (a window of silence after speech stays at the silence level, and is skipped).
    ``None`` for audio within one window, whose own maximum is the file's."""
    src = _source(path_or_pcm)
    try:
        if src.n_samples + 2 * wa.N_FFT <= wa.N_SAMPLES:
            return None
        return wa.log_mel_max(src, n_mels) - 8.0
    finally:
        src.close()


def transcribe(model: Whisper, path_or_pcm: Any, *, timestamps: bool = True,
               temperature: float | Sequence[float] = DEFAULT_TEMPERATURES, language: str | None = None,
               task: str = "transcribe", condition_on_previous_text: bool = True,
               compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
               no_speech_threshold: float | None = 0.6, tokenizer: WhisperTokenizer | None = None,
               progress: Callable[[float, float], None] | None = None,
               mel_padding: str = "audio", seed: int = 299792458, initial_prompt: str | None = None,
               max_initial_timestamp: float | None = 1.0, sample_rate: float | None = None,
               ) -> Iterator[Segment]:  # fmt: skip
    """Transcribe a sound file (any rate / channels) or mono float samples; yields :class:`Segment`s.

    ``sample_rate``: the rate of an array of samples (default 16 kHz), resampled to 16 kHz (soxr, as
    :func:`candlejax.audio.read_audio`); a file's rate is read from its header.

    ``temperature`` 0.0 is plain greedy; a sequence falls back through its values (OpenAI's
    default ``(0.0, 0.2, ..., 1.0)``). ``progress(done_seconds, total_seconds)`` is called per window.
    ``mel_padding``: ``"audio"`` (transformers) or ``"mel"`` (OpenAI, faster-whisper), see the module doc.
    ``seed``: the sampling seed of the temperatures above 0 (Candle's whisper example: ``--seed``).
    ``initial_prompt``: a text whose tokens (of ``" " + initial_prompt.strip()``) prompt the first
    window, and the later ones while the previous text is (OpenAI's ``transcribe(initial_prompt=...)``).
    ``max_initial_timestamp``: the latest first timestamp of a window in seconds (``None``: any), as
    OpenAI's decoding option and Candle's ``--max-initial-timestamp-index`` (in 20 ms tokens).
    A process that transcribes a lot gains ~15% from :func:`candlejax.xla.tune_malloc` (process-wide;
    ``candlejax transcribe`` calls it).
    """
    if not hasattr(model, "config") or not hasattr(model, "encoder"):
        raise errors.ArgumentType(
            f"whisper: transcribe(model, path_or_pcm) takes a Whisper model first, got {type(model).__name__}"
            " (whisper.Whisper.from_pretrained(folder, device))"
        )
    if mel_padding not in ("audio", "mel"):
        raise errors.Msg(f"whisper: mel_padding must be 'audio' or 'mel', got {mel_padding!r}")
    temps = (float(temperature),) if isinstance(temperature, numbers.Real) else tuple(float(t) for t in temperature)
    if not temps or not all(math.isfinite(t) and t >= 0 for t in temps):  # (NaN passed `t < 0`)
        raise errors.Msg(f"whisper: temperatures must be finite numbers >= 0, got {temperature!r}")
    if initial_prompt is not None and not isinstance(initial_prompt, str):
        raise errors.Msg(f"whisper: initial_prompt must be a str, got {type(initial_prompt).__name__}")
    dec = Decoder(model, tokenizer, timestamps=timestamps, language=language, task=task, seed=seed,
                  max_initial_timestamp=max_initial_timestamp)  # fmt: skip
    tok = dec.tok
    n_mels = model.config.num_mel_bins
    path_or_pcm = _at_whisper_rate(path_or_pcm, sample_rate)
    floor = _log_mel_floor(path_or_pcm, n_mels)
    src = _source(path_or_pcm)
    try:
        seek, all_tokens, prompt_since, seg_id = 0, [], 0, 0
        if initial_prompt is not None and initial_prompt.strip():
            all_tokens = tok.encode(" " + initial_prompt.strip())
        lang = language or "en"
        while True:
            content_frames = src.n_samples // wa.HOP_LENGTH
            if seek >= content_frames:
                break
            mel = wa.log_mel_window(src, seek * wa.HOP_LENGTH, n_mels, floor=floor)
            content_frames = src.n_samples // wa.HOP_LENGTH  # exact once the stream reached the end
            segment_size = min(wa.N_FRAMES, content_frames - seek)
            if segment_size <= 0:
                break
            if mel_padding == "mel" and segment_size < wa.N_FRAMES:
                mel[:, segment_size:] = 0.0
            time_offset = seek * wa.HOP_LENGTH / wa.SAMPLE_RATE
            audio = dec.encode(mel)
            if dec.multilingual and language is None and seek == 0:
                lang = dec.detect_language(audio)
            prompt = all_tokens[prompt_since:]  # (reset after every window without condition_on_previous_text)
            res = dec.decode_with_fallback(audio, temps, prompt, lang, compression_ratio_threshold,
                                           logprob_threshold, no_speech_threshold)  # fmt: skip
            if no_speech_threshold is not None and res.no_speech_prob > no_speech_threshold and not (
                logprob_threshold is not None and res.avg_logprob > logprob_threshold
            ):
                seek += segment_size
                if progress is not None:
                    progress(min(seek, content_frames) * wa.HOP_LENGTH / wa.SAMPLE_RATE,
                             content_frames * wa.HOP_LENGTH / wa.SAMPLE_RATE)  # fmt: skip
                continue
            tokens, previous_seek = res.tokens, seek
            segs: list[tuple[float, float, list[int]]] = []
            tb = tok.timestamp_begin
            is_ts = [t >= tb for t in tokens]
            single_end = is_ts[-2:] == [False, True]
            consecutive = [i + 1 for i in range(len(is_ts) - 1) if is_ts[i] and is_ts[i + 1]]
            if timestamps and consecutive:
                slices = consecutive + ([len(tokens)] if single_end else [])
                last = 0
                for cur in slices:
                    part = tokens[last:cur]
                    segs.append((time_offset + (part[0] - tb) * TIME_PRECISION,
                                 time_offset + (part[-1] - tb) * TIME_PRECISION, part))  # fmt: skip
                    last = cur
                if single_end:
                    seek += segment_size
                else:
                    seek += (tokens[last - 1] - tb) * INPUT_STRIDE
                    if seek <= previous_seek:  # never loop on one window
                        seek = previous_seek + segment_size
            else:
                duration = segment_size * wa.HOP_LENGTH / wa.SAMPLE_RATE
                stamps = [t for t in tokens if t >= tb]
                if timestamps and stamps and stamps[-1] != tb:
                    duration = (stamps[-1] - tb) * TIME_PRECISION
                segs.append((time_offset, time_offset + duration, tokens))
                seek += segment_size
            for start, end, part in segs:
                text = tok.decode(part)
                if start == end or not text.strip():
                    text, part = "", []
                all_tokens.extend(part)
                if text:
                    yield Segment(start, end, text, list(part), res.temperature, res.avg_logprob,
                                  res.compression_ratio, res.no_speech_prob, previous_seek, seg_id)  # fmt: skip
                    seg_id += 1
            if not condition_on_previous_text or res.temperature > 0.5:
                prompt_since = len(all_tokens)
            if progress is not None:
                progress(min(seek, content_frames) * wa.HOP_LENGTH / wa.SAMPLE_RATE,
                         content_frames * wa.HOP_LENGTH / wa.SAMPLE_RATE)  # fmt: skip
    finally:
        src.close()
