"""cj.data: Batcher semantics, the Dataset protocol, the IDX / MNIST reader and the offline digits."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

import candlejax as cj
import candlejax.data as data
from candlejax import DType


def _xy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    y = np.arange(n, dtype=np.uint32)
    return x, y


def _labels(batcher):
    return [np.asarray(b[1]).tolist() for b in batcher]


# --- Batcher ---------------------------------------------------------------------------------------
def test_batches_in_order_and_drop_last_by_default():
    x, y = _xy(10)
    b = data.Batcher((x, y), batch_size=4)
    assert len(b) == 2
    out = list(b)
    assert [tuple(t.shape for t in o) for o in out] == [((4, 2), (4,)), ((4, 2), (4,))]
    assert isinstance(out[0][0], cj.Tensor) and out[0][0].dtype == DType.F32 and out[0][1].dtype == DType.U32
    np.testing.assert_array_equal(np.asarray(out[1][0]), x[4:8])
    assert b.state() == {"epoch": 1, "position": 0, "seed": 0}


def test_return_last_incomplete_batch():
    x, y = _xy(10)
    b = data.Batcher((x, y), batch_size=4, return_last_incomplete_batch=True)
    assert len(b) == 3
    assert _labels(b) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # a batch size above the dataset size is fine when the incomplete batch is kept
    assert _labels(data.Batcher((x, y), batch_size=64, return_last_incomplete_batch=True)) == [list(range(10))]


@pytest.mark.parametrize("drop_last", [False, True])
def test_drop_last_is_pytorchs_dataloader_option(drop_last):
    torch = pytest.importorskip("torch")
    x, y = _xy(10)
    ref = [b[1].tolist() for b in torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))),
        batch_size=4, drop_last=drop_last)]  # fmt: skip
    assert _labels(data.Batcher((x, y), 4, drop_last=drop_last)) == ref
    with pytest.raises(cj.errors.InvalidArgument, match="drop_last=True contradicts return_last_incomplete_batch=True"):
        data.Batcher((x, y), 4, drop_last=True, return_last_incomplete_batch=True)


def test_list_of_example_tuples_batches_as_pytorchs_dataloader():
    """A list of ``(x, y)`` tuples (``list(zip(xs, ys))``) is a dataset of examples, as for PyTorch's
    DataLoader; it was read as columns: 6 fields of 2 rows (silently, when x and y share shape and dtype)."""
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    t = x[:, ::-1] * 10
    ref = [[v.numpy() for v in b] for b in torch.utils.data.DataLoader(list(zip(x, t)), batch_size=4)]
    got = list(data.Batcher(list(zip(x, t)), 4, return_last_incomplete_batch=True))
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert len(g) == 2 and all(np.array_equal(np.asarray(a), b) for a, b in zip(g, r))
    y = np.arange(6, dtype=np.uint32)  # mixed dtypes: was an F64 error from np.asarray of each pair
    assert _labels(data.Batcher(list(zip(x, y)), 3, shuffle=False)) == [[0, 1, 2], [3, 4, 5]]


def test_list_of_example_arrays_or_lists_batches_as_pytorchs_dataloader():
    """A list of example arrays (``list(xs)``) or of ``[x, y]`` lists is a dataset of examples, as for
    PyTorch's DataLoader (and the Dataset protocol: ``ds[i]`` is one example). The first was read as
    columns (10 examples of 2 values gave 2-row batches of 10 fields), the second raised numpy's bare
    ValueError."""
    torch = pytest.importorskip("torch")
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.uint32)
    ref = [b.numpy() for b in torch.utils.data.DataLoader(list(x), batch_size=4)]
    for examples in (list(x), [cj.Tensor(r) for r in x]):
        got = list(data.Batcher(examples, 4, return_last_incomplete_batch=True))
        assert [g.shape for g in got] == [(4, 2), (4, 2), (2, 2)]
        assert all(np.array_equal(np.asarray(g), r) for g, r in zip(got, ref))
    pairs = [[a, b] for a, b in zip(x, y)]
    ref = [[v.numpy() for v in b] for b in torch.utils.data.DataLoader(pairs, batch_size=4, drop_last=True)]
    got = list(data.Batcher(pairs, 4))
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert len(g) == 2 and all(np.array_equal(np.asarray(a), b) for a, b in zip(g, r))
    scalars = list(np.arange(6, dtype=np.float32))  # numpy scalars: examples of shape ()
    ref = [b.numpy() for b in torch.utils.data.DataLoader(scalars, batch_size=3)]
    got = list(data.Batcher(scalars, 3))
    assert [g.dtype for g in got] == [DType.F32] * 2 and all(np.array_equal(np.asarray(g), r) for g, r in zip(got, ref))
    # columns stay columns: a tuple, or a list of arrays that cannot be examples (different shapes)
    assert _labels(data.Batcher([x, y], 5)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_python_int_and_float_fields_of_examples_take_tensors_dtypes():
    """``(image, label)`` pairs with a Python int label (torchvision's datasets) batch as PyTorch's
    DataLoader does; the label gets the dtype ``Tensor(label)`` has (U32; I32 with a negative value
    and x64 off) and a Python float F32, instead of the int64 / float64 x64 error."""
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    pairs = [(a, i, 0.5 * i) for i, a in enumerate(x)]
    ref = list(torch.utils.data.DataLoader(pairs, batch_size=3))
    got = list(data.Batcher(pairs, 3))
    for (gx, gy, gw), (rx, ry, rw) in zip(got, ref):
        assert gy.dtype == DType.U32 and gw.dtype == DType.F32
        assert np.asarray(gy).tolist() == ry.tolist() and np.allclose(np.asarray(gw), rw.numpy())
        assert np.array_equal(np.asarray(gx), rx.numpy())
    (_, neg), = data.Batcher([(x[0], -1), (x[1], 2)], 2)
    assert neg.dtype == (DType.I64 if cj.x64_enabled() else DType.I32) and np.asarray(neg).tolist() == [-1, 2]


def test_default_batch_size_is_candles():
    assert data.Batcher(_xy(40)).batch_size == 16


def test_shuffle_is_a_function_of_seed_and_epoch():
    x, y = _xy(20)
    a = data.Batcher((x, y), batch_size=5, shuffle=True, seed=3)
    b = data.Batcher((x, y), batch_size=5, shuffle=True, seed=3)
    c = data.Batcher((x, y), batch_size=5, shuffle=True, seed=4)
    ea0, ea1 = _labels(a), _labels(a)
    assert ea0 == _labels(b) and ea1 == _labels(b)  # same seed: same order, epoch by epoch
    assert ea0 != ea1  # a new order every epoch
    assert ea0 != _labels(c)
    for epoch in (ea0, ea1):  # each epoch is a permutation
        assert sorted(i for batch in epoch for i in batch) == list(range(20))
    np.testing.assert_array_equal(a.order(1), np.concatenate(ea1))
    # x and y stay paired
    for xb, yb in data.Batcher((x, y), batch_size=5, shuffle=True, seed=1):
        np.testing.assert_array_equal(np.asarray(xb)[:, 0], np.asarray(yb) * 2)


@pytest.mark.parametrize("seed", [-1, 1.7, True, "3"])
def test_shuffle_seed_must_be_a_non_negative_int(seed):
    """numpy's default_rng([seed, epoch]) refuses a negative seed only at the first iter(), with its own
    ValueError; a float was truncated silently (1.7 shuffled as 1)."""
    x, y = _xy(20)
    with pytest.raises(cj.errors.InvalidArgument, match="seed must be a non-negative int"):
        data.Batcher((x, y), batch_size=5, shuffle=True, seed=seed)
    b = data.Batcher((x, y), batch_size=5, shuffle=True)
    with pytest.raises(cj.errors.InvalidArgument, match="seed must be a non-negative int"):
        b.set_state({"epoch": 0, "position": 0, "seed": seed})
    assert data.Batcher((x, y), batch_size=5, shuffle=True, seed=np.int64(3)).seed == 3


def test_resume_from_state_mid_epoch():
    x, y = _xy(20)
    full = data.Batcher((x, y), batch_size=3, shuffle=True, seed=7)
    ref = _labels(full) + _labels(full)
    b = data.Batcher((x, y), batch_size=3, shuffle=True, seed=7)
    got = []
    for i, batch in enumerate(b):
        got.append(np.asarray(batch[1]).tolist())
        if i == 2:
            break
    st = b.state()
    assert st == {"epoch": 0, "position": 3, "seed": 7}
    b2 = data.Batcher((x, y), batch_size=3, shuffle=True, seed=0)
    b2.set_state(st)
    got += _labels(b2) + _labels(b2)
    assert got == ref


@pytest.mark.parametrize(
    "bad",
    [3, {"position": 0}, {"epoch": "x", "position": 0}, {"epoch": 0, "position": -1}, {"epoch": 1.5, "position": 0}],
)
def test_set_state_checks_what_it_restores(bad):
    b = data.Batcher(_xy(8), batch_size=2)
    with pytest.raises(cj.errors.InvalidArgument, match=r"Batcher\.set_state: expected"):
        b.set_state(bad)
    assert b.state() == {"epoch": 0, "position": 0, "seed": 0}  # left as it was


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_gives_the_same_batches(prefetch):
    x, y = _xy(50)
    ref = _labels(data.Batcher((x, y), 7, shuffle=True, seed=2, prefetch=0))
    assert _labels(data.Batcher((x, y), 7, shuffle=True, seed=2, prefetch=prefetch)) == ref


def test_breaking_out_of_a_prefetching_loop_is_clean():
    x, y = _xy(100)
    b = data.Batcher((x, y), 2, prefetch=4)
    for i, _ in enumerate(b):
        if i == 5:
            break
    assert b.position == 6
    assert _labels(b)[0] == [12, 13]


def test_single_array_yields_tensors_and_tensors_are_accepted():
    x, _ = _xy(6)
    out = list(data.Batcher(x, 3))
    assert all(isinstance(t, cj.Tensor) and t.shape == (3, 2) for t in out)
    t = cj.Tensor.new(x)
    np.testing.assert_array_equal(np.asarray(next(iter(data.Batcher((t,), 6)))[0]), x)


class _Squares:
    """A Dataset-protocol object without get_batch."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return np.float32(i) * np.ones(2, np.float32), np.uint32(i * i)


def test_dataset_protocol_object_is_stacked():
    ds = _Squares()
    assert isinstance(ds, data.Dataset)
    out = list(data.Batcher(ds, 3, return_last_incomplete_batch=True))
    assert [np.asarray(o[1]).tolist() for o in out] == [[0, 1, 4], [9, 16, 25], [36]]
    assert out[0][0].shape == (3, 2)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_get_batch_returning_one_array_is_one_field(as_tensor):
    """A dataset whose get_batch returns one array (not a tuple of fields) batches as its __getitem__
    path does, one Tensor per batch; tuple() split the batch into its rows."""
    x, _ = _xy(6)

    class Single:
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return x[i]

        def get_batch(self, idx):
            return cj.Tensor.new(x[idx]) if as_tensor else x[idx]

    for prefetch in (0, 2):
        out = list(data.Batcher(Single(), 3, prefetch=prefetch))
        assert all(isinstance(t, cj.Tensor) and t.shape == (3, 2) for t in out)
        np.testing.assert_array_equal(np.concatenate([np.asarray(t) for t in out]), x)


def test_iter_batcher_is_candles_streaming_batcher():
    pairs = ((np.full(2, i, np.float32), np.uint32(i)) for i in range(5))
    out = list(data.Batcher.new2(pairs, 2, return_last_incomplete_batch=True))
    assert [np.asarray(o[1]).tolist() for o in out] == [[0, 1], [2, 3], [4]]
    singles = list(data.Batcher.new1((np.ones(3, np.float32) for _ in range(4)), 2))
    assert [t.shape for t in singles] == [(2, 3), (2, 3)]


def test_errors():
    x, y = _xy(10)
    with pytest.raises(data.EmptyDatasetError, match="empty"):
        data.Batcher((x[:0], y[:0]), 4)
    with pytest.raises(data.BatchSizeError, match=r"batch_size 11 is larger than the dataset \(10 examples\)"):
        data.Batcher((x, y), 11)
    with pytest.raises(data.BatchSizeError, match="positive"):
        data.Batcher((x, y), 0)
    with pytest.raises(cj.Error, match="share their first dim"):
        data.TensorDataset(x, y[:5])
    with pytest.raises(cj.Error, match="64-bit"):
        data.TensorDataset(x, np.arange(10))  # int64 labels without x64 mode
    with pytest.raises(cj.Error, match="cannot batch"):
        data.Batcher(42, 4)
    # an iterator is Candle's streaming form: the error names Batcher.new1 / new2
    with pytest.raises(cj.errors.InvalidArgument, match=r"cannot batch a generator.*Batcher\.new2\(it\)"):
        data.Batcher(((x[i], y[i]) for i in range(10)), 4)
    for bad in ("2", 1.5, -1):
        with pytest.raises(cj.errors.InvalidArgument, match=f"prefetch must be an int >= 0, got {bad!r}"):
            data.Batcher((x, y), 4, prefetch=bad)
    assert issubclass(data.EmptyDatasetError, cj.Error) and issubclass(data.BatchSizeError, cj.Error)


def test_errors_inside_the_prefetch_thread_reach_the_caller():
    class Broken(_Squares):
        def __getitem__(self, i):
            if i == 4:
                raise KeyError("bad example 4")
            return super().__getitem__(i)

    with pytest.raises(KeyError, match="bad example 4"):
        list(data.Batcher(Broken(), 2, prefetch=2))


# --- IDX / MNIST ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, rng, dtype, compress):
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    p = tmp_path / "a.idx"
    data.write_idx(p, a, compress=compress)
    b = data.read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_header_layout(tmp_path):
    p = tmp_path / "labels.idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 0, 9]))
    assert data.read_idx(p).tolist() == [7, 0, 9]
    p.write_bytes(b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(">ii", -1, 258))
    assert data.read_idx(p).tolist() == [-1, 258]


def test_idx_errors(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(data.IdxError, match="not an IDX file"):
        data.read_idx(p)
    p.write_bytes(b"\x00\x00\x42\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(data.IdxError, match="unknown IDX type code 0x42"):
        data.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x00" * 5)
    with pytest.raises(data.IdxError, match=r"data is 5 bytes but dims \[2, 3\]"):
        data.read_idx(p)


def test_idx_missing_file_or_directory_is_a_candlejax_oserror(tmp_path):
    with pytest.raises(cj.errors.NoSuchFile, match=r"read_idx: no such file: '.*nope'") as ei:
        data.read_idx(tmp_path / "nope")
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(IsADirectoryError, match=r"read_idx: is a directory: .*load_mnist\(dir\)") as ei:
        data.read_idx(tmp_path)
    assert isinstance(ei.value, cj.Error)


def test_idx_dims_product_is_exact_not_int64(tmp_path):
    """The data size the dims declare is computed in Python ints: 65536**4 bytes wrapped to 0 in int64
    and matched an empty body, then failed in numpy's reshape."""
    p = tmp_path / "huge"
    p.write_bytes(b"\x00\x00\x08\x04" + struct.pack(">4I", 65536, 65536, 65536, 65536))
    with pytest.raises(
        data.IdxError,
        match=r"data is 0 bytes but dims \[65536, 65536, 65536, 65536\] of uint8 need 18446744073709551616",
    ):
        data.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1))
    with pytest.raises(data.IdxError, match=f"need {(2**32 - 1) ** 3} "):
        data.read_idx(p)


def test_idx_truncated_header_and_trailing_bytes(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(data.IdxError, match=r"truncated header \(3 dims\): expected 12 bytes at offset 4, found 4"):
        data.read_idx(p)
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02\x03")
    with pytest.raises(data.IdxError, match=r"b\.gz: data is more than 2 bytes .*\(trailing bytes from offset 10\)"):
        data.read_idx(tmp_path / "b.gz")
    with gzip.open(tmp_path / "c.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x01\x02")
    with pytest.raises(
        data.IdxError, match=r"c\.gz: truncated data \(dims \[5\] of uint8\): expected 5 bytes at offset 8, found 2"
    ):
        data.read_idx(tmp_path / "c.gz")


def test_idx_gzip_cut_short_or_corrupt_is_an_idx_error(tmp_path, rng):
    """A gzip file cut short (an interrupted download) or with a bad CRC raised EOFError / BadGzipFile."""
    a = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    data.write_idx(p, a, compress=True)
    raw = p.read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(
        data.IdxError, match=r"cut\.gz: the gzip stream is cut short or corrupt .*the IDX file needs 15696"
    ):
        data.read_idx(cut)
    bad = bytearray(raw)
    bad[-6] ^= 0xFF  # the CRC-32 of the trailer
    crc = tmp_path / "crc.gz"
    crc.write_bytes(bytes(bad))
    with pytest.raises(data.IdxError, match=r"crc\.gz: the gzip stream is cut short or corrupt .*CRC check failed"):
        data.read_idx(crc)
    head_only = tmp_path / "head.gz"
    head_only.write_bytes(raw[:10])
    with pytest.raises(data.IdxError, match=r"head\.gz: .*reading the magic number"):
        data.read_idx(head_only)


def test_idx_gzip_header_claiming_huge_dims_allocates_nothing(tmp_path):
    """A gzip header declaring 2**64 bytes is read in chunks and fails on the real end of the stream."""
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00\x00\x08\x04" + struct.pack(">4I", 65536, 65536, 65536, 65536) + b"\x00" * 100)
    with pytest.raises(data.IdxError, match=r"expected 18446744073709551616 bytes at offset 20, found 100"):
        data.read_idx(p)


def _write_mnist(d, rng, n_train=12, n_test=5, gz=False):
    def put(name, arr):
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(arr))
        else:
            data.write_idx(d / name, arr)

    imgs = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, n_train, dtype=np.uint8)
    put("train-images-idx3-ubyte", imgs)
    put("train-labels-idx1-ubyte", labs)
    put("t10k-images-idx3-ubyte", imgs[:n_test])
    put("t10k-labels-idx1-ubyte", labs[:n_test])
    return imgs, labs


def test_candle_datasets_module_paths(tmp_path, rng):
    """candle_datasets' paths: vision::fashion_mnist (IDX files as MNIST's; load() needs the hub),
    batcher::Batcher, nlp::tinystories, hub::from_hub (raises: no downloads)."""
    from candlejax.data import batcher, hub
    from candlejax.data.nlp import tinystories
    from candlejax.data.vision import fashion_mnist

    imgs, _ = _write_mnist(tmp_path, rng)
    ds = fashion_mnist.load_dir(tmp_path)
    np.testing.assert_allclose(np.asarray(ds.train_images), imgs.reshape(12, -1) / 255.0, rtol=1e-6)
    with pytest.raises(cj.errors.Msg, match=r"fashion_mnist\.load_dir"):
        fashion_mnist.load()
    assert batcher.Batcher is data.Batcher
    assert tinystories.Dataset is data.TinyStoriesDataset and tinystories.DatasetRandomIter is data.DatasetRandomIter
    with pytest.raises(cj.errors.Msg, match="local files only"):
        hub.from_hub(None, "ylecun/mnist")


def test_candle_datasets_module_paths_are_attributes():
    # candle_datasets::{batcher, hub, nlp::tinystories, vision} are reached as paths, with no import
    # (candle-datasets/src/lib.rs declares them `pub mod`): so are cj.data.batcher, .hub, .nlp, .vision.
    # A fresh interpreter: in this one, other tests may already have imported the submodules.
    import subprocess
    import sys

    code = (
        "import candlejax as cj\n"
        "assert cj.data.batcher.Batcher is cj.data.Batcher\n"
        "assert cj.data.nlp.tinystories.Dataset is cj.data.TinyStoriesDataset\n"
        "assert cj.data.vision.mnist.load_dir is cj.data.load_mnist\n"
        "assert cj.data.hub.from_hub.__module__ == 'candlejax.data.hub'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def _idx_bytes(a):
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_idx_files(tmp_path, rng, gz):
    imgs, labs = _write_mnist(tmp_path, rng, gz=gz)
    ds = data.load_mnist(tmp_path)
    assert ds.labels == 10
    assert ds.train_images.shape == (12, 784) and ds.train_images.dtype == DType.F32
    assert ds.train_labels.shape == (12,) and ds.train_labels.dtype == DType.U8
    assert ds.test_images.shape == (5, 784)
    np.testing.assert_allclose(np.asarray(ds.train_images), imgs.reshape(12, -1) / 255.0, rtol=1e-6)
    assert np.asarray(ds.test_labels).tolist() == labs[:5].tolist()
    assert "train_images=[12, 784] f32" in repr(ds)
    assert len(data.Batcher(ds.train, 4)) == 3


@pytest.mark.parametrize(
    ("stem", "arr", "found"),
    [
        ("train-images-idx3-ubyte", np.zeros((3, 28, 28), np.float32), r"found 3331 \(0x00000d03: float32 data"),
        ("train-labels-idx1-ubyte", np.array([1, 300, 2], np.int32), r"found 3073 \(0x00000c01: int32 data"),
        ("t10k-labels-idx1-ubyte", np.zeros((3, 1), np.uint8), r"found 2050 \(0x00000802: uint8 data, dims \[3, 1\]"),
    ],
)
def test_load_mnist_checks_magic_numbers_as_candle(tmp_path, rng, stem, arr, found):
    """Candle's reader requires magic 2051 (u8, 3 dims) / 2049 (u8, 1 dim); a float image file was
    scaled by 1/255 a second time and i32 labels wrapped modulo 256 (300 -> 44) silently."""
    _write_mnist(tmp_path, rng)
    data.write_idx(tmp_path / stem, arr)
    what = "image" if "images" in stem else "label"
    magic = 2051 if what == "image" else 2049
    with pytest.raises(
        data.IdxError, match=rf"{stem} is not an MNIST {what} file: expected magic number {magic} .*{found}"
    ):
        data.load_mnist(tmp_path)


@pytest.mark.parametrize(
    ("stem", "raw", "found"),
    [
        # an image header (2051) on a labels file, with label-file data: Candle's check_magic_number fails first
        ("train-labels-idx1-ubyte", struct.pack(">II", 2051, 5) + bytes(5), "found 2051 (0x00000803)"),
        ("t10k-images-idx3-ubyte", b"not an idx file at all", "found 1852797984 (0x6e6f7420)"),
    ],
)
def test_load_mnist_wrong_magic_of_a_malformed_file_is_named(tmp_path, rng, stem, raw, found):
    """Candle's mnist.rs reads the magic number first: ``incorrect magic number 2051 != 2049``."""
    _write_mnist(tmp_path, rng)
    (tmp_path / stem).write_bytes(raw)
    magic = 2051 if "images" in stem else 2049
    with pytest.raises(data.IdxError, match=rf"{stem} is not an MNIST .* file: expected magic number {magic} .*"
                       + re.escape(found)):  # fmt: skip
        data.load_mnist(tmp_path)


def test_load_mnist_empty_split_keeps_784_columns(tmp_path, rng):
    """Candle builds ``(samples, rows * cols)``, also for 0 samples; ``reshape(0, -1)`` failed in numpy."""
    _write_mnist(tmp_path, rng)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    ds = data.load_mnist(tmp_path)
    assert ds.test_images.shape == (0, 784) and ds.test_images.dtype == DType.F32
    assert ds.test_labels.shape == (0,) and ds.test_labels.dtype == DType.U8


def test_load_mnist_missing_file(tmp_path):
    with pytest.raises(cj.Error, match="cannot find train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


# --- digits --------------------------------------------------------------------------------------------
def test_digits_offline_deterministic_stratified_split():
    pytest.importorskip("sklearn")
    a = data.load_digits()
    b = data.load_digits()
    assert a.train_images.shape[0] + a.test_images.shape[0] == 1797
    assert a.train_images.shape[1:] == (64,) and a.test_labels.dtype == DType.U32
    assert 350 <= a.test_images.shape[0] <= 370
    np.testing.assert_array_equal(np.asarray(a.test_images), np.asarray(b.test_images))
    x = np.asarray(a.train_images)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    counts = np.bincount(np.asarray(a.test_labels), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class
    c = data.load_digits(seed=1, flatten=False, label_dtype=DType.U8)
    assert c.train_images.shape[1:] == (1, 8, 8) and c.train_labels.dtype == DType.U8
    assert not np.array_equal(np.asarray(c.test_labels), np.asarray(a.test_labels).astype(np.uint8))


def test_digits_arguments():
    # a dtype by name, as elsewhere in candlejax (was an AttributeError: 'str' object has no attribute 'np')
    assert data.load_digits(label_dtype="u8").train_labels.dtype == DType.U8
    with pytest.raises(cj.errors.ArgumentType, match="cannot parse 'u9' as a dtype"):
        data.load_digits(label_dtype="u9")
    for bad in ("a", -1, 1.5):  # numpy's SeedSequence raised its own TypeError / ValueError
        with pytest.raises(cj.errors.InvalidArgument, match=f"seed must be a non-negative int, got {bad!r}"):
            data.load_digits(seed=bad)
    with pytest.raises(cj.errors.InvalidArgument, match="test_fraction must be a float in"):
        data.load_digits(test_fraction="0.2")


# --- Candle's builder spelling -------------------------------------------------------------------------
def test_builder_spelling_on_new2_with_arrays():
    x, y = _xy(5)
    b = data.Batcher.new2((x, y)).batch_size(2).return_last_incomplete_batch(True)
    assert isinstance(b, data.IterBatcher)
    assert b.batch_size == 2 and b.return_last_incomplete_batch == True  # noqa: E712 (the bool-like value)
    out = list(b)
    assert [np.asarray(o[1]).tolist() for o in out] == [[0, 1], [2, 3], [4]]
    np.testing.assert_array_equal(np.asarray(out[1][0]), x[2:4])
    assert [np.asarray(o[1]).tolist() for o in b.return_last_incomplete_batch(False)] == [[0, 1], [2, 3]]
    assert [t.shape for t in data.Batcher.new1(x).batch_size(3)] == [(3, 2)]


def test_builder_spelling_on_streams_and_result_variants():
    def pairs():
        return ((np.full(2, i, np.float32), np.uint32(i)) for i in range(5))

    for new in (data.Batcher.new2, data.Batcher.new_r2):
        out = list(new(pairs()).batch_size(2).return_last_incomplete_batch(True))
        assert [np.asarray(o[1]).tolist() for o in out] == [[0, 1], [2, 3], [4]]
    for new in (data.Batcher.new1, data.Batcher.new_r1):
        b = new(np.ones(3, np.float32) for _ in range(5)).batch_size(2)
        assert [t.shape for t in b] == [(2, 3), (2, 3)]


def test_builder_returns_the_same_batcher_and_validates():
    x, y = _xy(10)
    b = data.Batcher((x, y))  # the default 16 > 10 examples: checked when iterating, after the builder calls
    assert b.batch_size(4) is b and b.return_last_incomplete_batch(True) is b
    assert _labels(b) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for bad in (0, -3, True, 2.5):
        with pytest.raises(data.BatchSizeError, match="positive int"):
            b.batch_size(bad)
        with pytest.raises(data.BatchSizeError, match="positive int"):
            data.Batcher.new2((x, y)).batch_size(bad)
    assert b.batch_size == 4  # a refused value leaves the batcher as it was
    # Candle's call order: the batch size first, then keep the incomplete batch
    assert _labels(data.Batcher((x, y)).batch_size(64).return_last_incomplete_batch(True)) == [list(range(10))]
    b.batch_size(64).return_last_incomplete_batch(False)
    for use in (len, list, iter):
        with pytest.raises(data.BatchSizeError, match=r"batch_size 64 is larger than the dataset \(10 examples\)"):
            use(b)
    with pytest.raises(data.BatchSizeError, match=r"larger than the dataset .*\.return_last_incomplete_batch\(True\)"):
        list(data.Batcher.new2((x, y)).batch_size(11))  # whole arrays: the size is known, as for Batcher
    assert list(data.Batcher.new2(zip(x, y)).batch_size(11)) == []  # a stream: Candle's silent empty pass
    with pytest.raises(data.BatchSizeError, match=r"batch_size 11 is larger than the dataset \(10 examples\)"):
        data.Batcher((x, y), 11)  # given to the constructor: checked at once
    b.batch_size = 5  # assignment goes through the same checks
    assert len(b) == 2
    with pytest.raises(data.BatchSizeError, match="positive int"):
        b.batch_size = 0


def test_option_values_behave_as_int_and_bool():
    import copy
    import pickle

    b = data.Batcher(_xy(40), return_last_incomplete_batch=True)
    bs, keep = b.batch_size, b.return_last_incomplete_batch
    assert bs == 16 and bs + 1 == 17 and bs * 2 == 32 and 40 // bs == 2 and bs < 17 and int(bs) == 16
    assert f"{bs}" == "16" and repr(bs) == "16" and f"{bs:>4}" == "  16" and hash(bs) == hash(16)
    assert type(bs + 0) is int and list(range(bs))[-1] == 15 and np.zeros(bs).shape == (16,)
    assert keep and keep == True and not (keep == False) and bool(keep) is True  # noqa: E712
    assert repr(keep) == "True" and f"{keep}" == "True"
    assert not data.Batcher(_xy(40)).return_last_incomplete_batch
    assert repr(data.Batcher(_xy(40)).return_last_incomplete_batch) == "False"
    assert "batch_size=16" in repr(b) and "return_last_incomplete_batch=True" in repr(b)
    assert pickle.loads(pickle.dumps(bs)) == 16 and type(pickle.loads(pickle.dumps(bs))) is int
    assert pickle.loads(pickle.dumps(keep)) is True and copy.deepcopy(keep) is True


# --- CIFAR-10 (binary version) -------------------------------------------------------------------------
_CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _write_cifar(d, rng, n=3):
    """Six files of ``n`` records each (1 label byte + 3072 CHW pixel bytes); returns their records."""
    recs = {}
    for name in _CIFAR_FILES:
        r = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        r[:, 0] %= 10
        (d / name).write_bytes(r.tobytes())
        recs[name] = r
    return recs


def test_load_cifar_reads_records_in_chw_order(tmp_path, rng):
    recs = _write_cifar(tmp_path, rng, n=3)
    ds = data.load_cifar(tmp_path, records_per_file=3)
    assert ds.labels == 10
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.train_images.dtype == DType.F32
    assert ds.train_labels.shape == (15,) and ds.train_labels.dtype == DType.U8
    assert ds.test_images.shape == (3, 3, 32, 32) and ds.test_labels.shape == (3,)
    train = np.concatenate([recs[n] for n in _CIFAR_FILES[:5]])
    imgs = np.asarray(ds.train_images)
    for i, c, yy, xx in [(0, 0, 0, 0), (4, 1, 5, 31), (14, 2, 31, 7), (7, 2, 16, 16)]:
        byte = train[i, 1 + c * 1024 + yy * 32 + xx]
        assert imgs[i, c, yy, xx] == np.float32(byte) * np.float32(1 / 255)  # Candle's affine scaling
        np.testing.assert_allclose(imgs[i, c, yy, xx], byte / 255, rtol=1e-6)
    np.testing.assert_allclose(imgs, train[:, 1:].reshape(15, 3, 32, 32) / 255.0, rtol=1e-6)
    assert np.asarray(ds.train_labels).tolist() == train[:, 0].tolist()
    test = recs["test_batch.bin"]
    np.testing.assert_allclose(np.asarray(ds.test_images), test[:, 1:].reshape(3, 3, 32, 32) / 255.0, rtol=1e-6)
    assert np.asarray(ds.test_labels).tolist() == test[:, 0].tolist()
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0
    # records_per_file=None: any whole number of records
    assert data.load_cifar(tmp_path, records_per_file=None).train_images.shape == (15, 3, 32, 32)


def test_load_cifar_size_errors(tmp_path, rng):
    _write_cifar(tmp_path, rng, n=2)
    # CIFAR-10's files hold 10,000 records: a smaller file is refused before anything is read
    with pytest.raises(data.DatasetFileError, match=r"data_batch_1\.bin is 6146 bytes, expected 30730000"):
        data.load_cifar(tmp_path)
    p = tmp_path / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-5])  # truncated
    with pytest.raises(data.DatasetFileError, match=r"data_batch_3\.bin is 6141 bytes, expected 6146"):
        data.load_cifar(tmp_path, records_per_file=2)
    with pytest.raises(data.DatasetFileError, match=r"data_batch_3\.bin is 6141 bytes, expected a positive multiple"):
        data.load_cifar(tmp_path, records_per_file=None)
    p.unlink()
    with pytest.raises(data.DatasetFileError, match=r"cannot find data_batch_3\.bin"):
        data.load_cifar(tmp_path, records_per_file=2)
    with pytest.raises(cj.Error, match="records_per_file must be a positive int"):
        data.load_cifar(tmp_path, records_per_file=0)
    for bad in ("2", 2.0):  # a str or float count is refused, not compared or used as a size
        with pytest.raises(cj.errors.InvalidArgument, match=f"must be a positive int or None, got {bad!r}"):
            data.load_cifar(tmp_path, records_per_file=bad)
    assert issubclass(data.DatasetFileError, cj.Error)


def test_load_cifar_names_the_archive_folder(tmp_path, rng):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    _write_cifar(sub, rng, n=1)
    with pytest.raises(data.DatasetFileError, match="pass that folder"):
        data.load_cifar(tmp_path, records_per_file=1)
    assert data.load_cifar(sub, records_per_file=1).test_images.shape == (1, 3, 32, 32)


# --- TinyStories ------------------------------------------------------------------------------------------
def _write_tinystories(d, sizes=(50, 300, 200)):
    """``data00.bin`` (valid), ``data01.bin``... of little-endian u16 ids; file k's ids are 1000 k + 0, 1, ..."""
    toks = []
    for k, n in enumerate(sizes):
        t = (1000 * k + np.arange(n)).astype("<u2")
        t.tofile(d / f"data{k:02d}.bin")
        toks.append(t)
    return toks


def test_tinystories_dataset_splits_by_name(tmp_path):
    toks = _write_tinystories(tmp_path)
    (tmp_path / "notes.txt").write_text("not a token file")
    ds = data.TinyStoriesDataset.new(tmp_path)
    assert [p.name for p in ds.valid_files] == ["data00.bin"]
    assert [p.name for p in ds.train_files] == ["data01.bin", "data02.bin"]
    assert ds.valid_tokens() == 1 and ds.train_tokens() == 2  # Candle counts files
    assert ds.num_tokens(valid=True) == 50 and ds.num_tokens() == 500
    np.testing.assert_array_equal(ds.train_arrays[1], toks[2])
    assert isinstance(ds.train_arrays[0], np.memmap)
    from candlejax.data.tinystories import Dataset

    assert Dataset is data.TinyStoriesDataset


@pytest.mark.parametrize("valid", [False, True])
def test_tinystories_windows_are_contiguous_and_shifted(tmp_path, valid):
    toks = _write_tinystories(tmp_path)
    ds = data.TinyStoriesDataset(tmp_path)
    seq = 8
    it = data.DatasetRandomIter.new(ds, valid, seq, seed=1)
    split = toks[:1] if valid else toks[1:]
    starts: dict[int, list[int]] = {}
    per_round = sum(len(range(0, len(t) - seq, seq)) for t in split)
    for _ in range(per_round):
        x, y = next(it)
        assert x.dtype == DType.U32 and y.dtype == DType.U32 and x.shape == (seq,) and y.shape == (seq,)
        xs, ys = np.asarray(x), np.asarray(y)
        k = int(xs[0]) // 1000
        stream = toks[k]
        s = int(xs[0]) - 1000 * k
        np.testing.assert_array_equal(xs, stream[s : s + seq])
        np.testing.assert_array_equal(ys, stream[s + 1 : s + seq + 1])
        starts.setdefault(k, []).append(s)
    # one round visits every window of every file exactly once, file by file, at offsets 0, seq, 2 seq, ...
    for k, t in enumerate(toks):
        if (k == 0) == valid:
            assert sorted(starts[k]) == list(range(0, len(t) - seq, seq))
    next(it)  # then a new round starts: the iterator never ends


def test_tinystories_seed_reproduces_the_order(tmp_path):
    _write_tinystories(tmp_path)
    ds = data.TinyStoriesDataset(tmp_path)

    def draw(seed, n=30):
        it = data.DatasetRandomIter(ds, False, 4, "cpu", seed=seed)
        return [np.asarray(next(it)[0]).tolist() for _ in range(n)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    # the windows batch with Candle's streaming Batcher
    it = data.DatasetRandomIter(ds, False, 4, seed=0)
    xb, yb = next(iter(data.Batcher.new_r2(it).batch_size(3)))
    assert xb.shape == (3, 4) and yb.shape == (3, 4) and xb.dtype == DType.U32


def test_tinystories_errors(tmp_path):
    with pytest.raises(data.DatasetFileError, match="is not a directory"):
        data.TinyStoriesDataset(tmp_path / "missing")
    with pytest.raises(data.DatasetFileError, match=r"found 0 \.bin files .*\(none\), need at least two"):
        data.TinyStoriesDataset(tmp_path)
    np.arange(10, dtype="<u2").tofile(tmp_path / "data00.bin")
    with pytest.raises(data.DatasetFileError, match=r"found 1 \.bin files .*\(data00\.bin\)"):
        data.TinyStoriesDataset(tmp_path)
    (tmp_path / "data01.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(data.DatasetFileError, match=r"data01\.bin is 3 bytes, an odd count"):
        data.TinyStoriesDataset(tmp_path)
    np.arange(4, dtype="<u2").tofile(tmp_path / "data01.bin")
    ds = data.TinyStoriesDataset(tmp_path)
    with pytest.raises(data.DatasetFileError, match=r"data01\.bin holds 4 tokens, fewer than seq_len \+ 1 = 5"):
        data.DatasetRandomIter(ds, False, 4)
    assert next(data.DatasetRandomIter(ds, False, 3, seed=0))[1].tolist() == [1, 2, 3]
    for bad in (0, -1, True, 2.0):
        with pytest.raises(cj.Error, match="seq_len must be a positive int"):
            data.DatasetRandomIter(ds, True, bad)
    for bad in ("a", -1, 1.5):  # numpy's SeedSequence raised its own TypeError / ValueError
        with pytest.raises(cj.errors.InvalidArgument, match=f"DatasetRandomIter: seed must be a non-negative int or"
                           f" None, got {bad!r}"):  # fmt: skip
            data.DatasetRandomIter(ds, False, 3, seed=bad)
    with pytest.raises(cj.errors.InvalidArgument, match=r"takes a TinyStoriesDataset, got a PosixPath.*\.new\(dir\)"):
        data.DatasetRandomIter.new(tmp_path, False, 3)  # the folder instead of Dataset::new(dir)
    (tmp_path / "data02.bin").write_bytes(b"")  # an empty shard maps to no tokens
    ds = data.TinyStoriesDataset(tmp_path)
    assert ds.num_tokens() == 4
    with pytest.raises(data.DatasetFileError, match=r"data02\.bin holds 0 tokens"):
        data.DatasetRandomIter(ds, False, 2)


def test_new2_takes_pairs_only_and_new1_single_tensors():
    x, y = np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4, dtype=np.uint32)
    with pytest.raises(cj.errors.InvalidArgument, match=r"example 0 is a tuple of 3 items; new2 batches \(x, y\)"):
        list(data.Batcher.new2(((x[i], y[i], y[i]) for i in range(4)), batch_size=2))
    with pytest.raises(cj.errors.InvalidArgument, match=r"new2: example 0 is a ndarray"):
        list(data.Batcher.new_r2((x[i] for i in range(4)), batch_size=2))
    # new1: a tuple of arrays is a pair (Candle's new1 takes only Tensors), not stacked into (B, 2, ...)
    with pytest.raises(cj.errors.InvalidArgument, match=r"new1: example 0 is a tuple of 2 items holding arrays"):
        list(data.Batcher.new1(((x[i], x[i]) for i in range(4)), batch_size=2))
    # new1: an example given as a nested list is one tensor, not a tuple of fields
    (b,) = list(data.Batcher.new1(([np.float32(1), np.float32(2)] for _ in range(2)), batch_size=2))
    assert b.shape == (2, 2)


def test_stream_of_examples_of_different_shapes_names_the_example():
    ragged = (np.zeros(3 if i != 3 else 4, np.float32) for i in range(4))
    with pytest.raises(cj.errors.UnexpectedShape, match=r"example 3 cannot be stacked with example 2 of its batch.*"
                       r"expected: \[3\], got: \[4\]"):  # fmt: skip
        list(data.Batcher.new1(ragged, batch_size=2))


def test_stream_of_examples_of_different_dtypes_raises_as_candles_stack():
    # Candle's Batcher stacks with Tensor::stack, which never promotes: candle.stack([u8, f32]) raises
    # DTypeMismatchBinaryOp (candle-core/src/tensor_cat.rs); a silent promotion to F32 would hide it.
    mixed = (np.zeros(2, np.uint8 if i != 1 else np.float32) for i in range(2))
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"lhs: U8, rhs: F32"):
        list(data.Batcher.new1(mixed, batch_size=2))
    pairs = ((np.zeros(2, np.float32), np.uint32(i) if i != 2 else np.uint8(i)) for i in range(4))
    with pytest.raises(cj.errors.DTypeMismatchBinaryOp, match=r"example 2, field 1"):
        list(data.Batcher.new2(pairs, batch_size=4))


def test_iter_batcher_is_an_iterator_as_candles_batcher():
    # Candle's Batcher implements Iterator: `batcher.next()` takes one batch (batcher.rs).
    x, y = _xy(5)
    b = data.Batcher.new2(iter([(x[i], y[i]) for i in range(5)])).batch_size(2)
    xb, yb = next(b)
    assert xb.shape == (2, 2) and np.asarray(yb).tolist() == [0, 1]
    assert np.asarray(next(b)[1]).tolist() == [2, 3]
    with pytest.raises(StopIteration):
        next(b)  # the last incomplete batch is dropped, Candle's default
    cols = data.Batcher.new1(x).batch_size(2).return_last_incomplete_batch(True)
    assert [next(cols).shape for _ in range(3)] == [(2, 2), (2, 2), (1, 2)]


@pytest.mark.parametrize("load, what", [
    (data.load_mnist, "load_mnist: dir"), (data.load_cifar, "load_cifar: dir"), (data.read_idx, "read_idx: path"),
    (lambda p: data.write_idx(p, np.zeros(2, np.uint8)), "write_idx: path"),
    (data.TinyStoriesDataset, "TinyStories: dir"),
])  # fmt: skip
@pytest.mark.parametrize("bad", [None, 3])
def test_loaders_name_a_path_of_the_wrong_type(load, what, bad):
    """Path(None) / open(None) raised a bare TypeError."""
    with pytest.raises(cj.errors.InvalidArgument, match=re.escape(f"{what} must be a str or os.PathLike, got {bad!r}")):
        load(bad)


@pytest.mark.parametrize("bad", ["a", 1.5, None, True])
def test_order_epoch_of_the_wrong_type(bad):
    """int("a") raised a bare ValueError, int(1.5) took epoch 1."""
    x, y = _xy()
    b = data.Batcher((x, y), batch_size=2, shuffle=True)
    if bad is None:
        np.testing.assert_array_equal(b.order(None), b.order(0))
        return
    with pytest.raises(cj.errors.NotAnInteger, match=re.escape(f"Batcher.order: epoch must be an int, got {bad!r}")):
        b.order(bad)
    np.testing.assert_array_equal(b.order(np.int64(3)), b.order(3))


def test_order_of_a_negative_epoch():
    """numpy's default_rng([seed, -1]) raised a bare ``ValueError: expected non-negative integer``; epochs
    count from 0 (as ``set_state`` checks)."""
    x, y = _xy()
    b = data.Batcher((x, y), batch_size=2, shuffle=True)
    with pytest.raises(cj.errors.InvalidArgument, match=r"Batcher\.order: epoch must be >= 0, got -1"):
        b.order(-1)
    b.epoch = -2
    with pytest.raises(cj.errors.InvalidArgument, match=r"Batcher\.order: epoch must be >= 0, got -2"):
        list(b)
    assert data.Batcher((x, y), batch_size=2).order(-1).tolist() == list(range(len(x)))  # unshuffled: no epoch
