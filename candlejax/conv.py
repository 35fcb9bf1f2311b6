"""Candle's ``candle::conv`` names users write: ``CudnnFwdAlgo``, the cuDNN algorithm hint of
``conv1d_with_algo`` / ``conv2d_with_algo`` and of ``Conv1dConfig`` / ``Conv2dConfig``'s
``cudnn_fwd_algo``. candlejax accepts it and lets XLA pick the algorithm.

>>> from candlejax.nn import Conv2dConfig
>>> Conv2dConfig(padding=1, cudnn_fwd_algo=CudnnFwdAlgo.ImplicitGemm).padding
1
"""

from __future__ import annotations

import enum


class CudnnFwdAlgo(enum.Enum):
    """``candle::conv::CudnnFwdAlgo`` (cuDNN's forward algorithms); a hint, ignored by XLA."""

    ImplicitGemm = 0
    ImplicitPrecompGemm = 1
    Gemm = 2
    Direct = 3
    Fft = 4
    FftTiling = 5
    Winograd = 6
    WinogradNonFused = 7
    Count = 8


__all__ = ["CudnnFwdAlgo"]
