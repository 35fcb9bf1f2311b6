"""``candlejax.audio``: sound files in (``soundfile``), mono, resampled with ``soxr``.

    from candlejax import audio
    pcm = audio.read_audio("speech.wav", 16000)        # float32 (n,), any rate / channels in
    with audio.AudioStream("two_hours.wav") as s:      # forward-only, block by block
        window = s.read(0, 480000)
"""

from candlejax.audio._io import AudioStream, PcmSource, read_audio, resample

__all__ = ["AudioStream", "PcmSource", "read_audio", "resample"]
