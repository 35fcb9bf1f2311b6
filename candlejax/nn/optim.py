"""``candle_nn::optim``: Candle's optimizers by their module path (``candle_nn::optim::AdamW``); they
are :mod:`candlejax.optim`'s.

requires: candlejax.optim
provides: ``AdamW``, ``ParamsAdamW``, ``SGD``, ``Optimizer``

>>> from candlejax.nn.optim import AdamW, ParamsAdamW
>>> ParamsAdamW().lr
0.001
"""

from candlejax.optim import SGD, AdamW, Optimizer, ParamsAdamW

__all__ = ["SGD", "AdamW", "Optimizer", "ParamsAdamW"]
