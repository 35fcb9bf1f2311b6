"""``cj.npy``: Candle's ``candle::npy`` for Python (``read_npy``, ``read_npz``, ``read_npz_by_name``,
``write_npy``, ``write_npz``, ``NpzTensors``). See ``candlejax.io.npy``."""

from candlejax.io.npy import NpyX64Error, NpzTensors, read_npy, read_npz, read_npz_by_name, write_npy, write_npz

__all__ = ["NpyX64Error", "NpzTensors", "read_npy", "read_npz", "read_npz_by_name", "write_npy", "write_npz"]
