"""Candle's ``candle-core/tests/tensor_tests.rs``, from ``index_add`` to the end, ported line by line.

Source: huggingface/candle, candle-core/tests/tensor_tests.rs (``index_add``, ``slice_scatter``,
``scatter``, ``gather``, ``broadcasting``, ``randn``, ``repeat_with_zero_factor``,
``meshgrid_with_empty_axis``, ``zero_dim``, ``tensor_send_sync``, ``randn_hasneg``, ``pad_with_same``,
``i64_abs``, ``tril_triu_eye``, ``cumsum``, ``log_sum_exp``, ``pow``, ``test_flip_*``,
``tensor_from_data_validates_concrete_shape``, ``tensor_new``, ``tensor_norm``). Each test runs on
``Device.Cpu`` as Candle's ``*_cpu`` variant does. The expected numbers are Candle's. Rust ``f64``
and ``i64`` tensors are ``dtype=DType.F64`` / ``I64`` here, with JAX's 64-bit mode on. Candle's
in-place ``scatter_set`` is functional here (``init = init.scatter_set(...)``; see
docs/differences/movement-indexing.md).
"""

from __future__ import annotations

import itertools
import threading

import pytest

import candlejax as cj
from candlejax import D, Device, DType, Tensor, errors

U32_MAX = 2**32 - 1
DEVICE = Device.Cpu

T_4X3 = [
    [0.0, 1.0, 2.0],
    [3.0, 4.0, 5.0],
    [6.0, 7.0, 8.0],
    [9.0, 10.0, 11.0],
]


# ------------------------------------------------------------------------------------------------
# index_add
# ------------------------------------------------------------------------------------------------
def test_index_add():
    device = DEVICE
    ids = Tensor.new([0, 1, 1], device, dtype=DType.U32)
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    assert t.to_vec2() == T_4X3
    init = Tensor.ones((4, 2), DType.F32, device)
    hs = init.index_add(ids, t, 1)
    assert hs.to_vec2() == [[1.0, 4.0], [4.0, 10.0], [7.0, 16.0], [10.0, 22.0]]
    init = Tensor.zeros((4, 2), DType.F32, device)
    ids = Tensor.new([1, 0, 0], device, dtype=DType.U32)
    hs = init.index_add(ids, t, 1)
    assert hs.to_vec2() == [[3.0, 0.0], [9.0, 3.0], [15.0, 6.0], [21.0, 9.0]]

    init = Tensor.zeros((6, 3), DType.F32, device)
    ids = Tensor.new([5, 0, 1, 0], device, dtype=DType.U32)
    hs = init.index_add(ids, t, 0)
    assert hs.to_vec2() == [
        [12.0, 14.0, 16.0],
        [6.0, 7.0, 8.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 1.0, 2.0],
    ]


# ------------------------------------------------------------------------------------------------
# slice_scatter
# ------------------------------------------------------------------------------------------------
def test_slice_scatter():
    device = DEVICE
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    assert t.to_vec2() == T_4X3
    src = Tensor.arange(100.0, 106.0, device).reshape((2, 3))
    assert t.slice_scatter0(src, 0).to_vec2() == [
        [100.0, 101.0, 102.0],
        [103.0, 104.0, 105.0],
        [6.0, 7.0, 8.0],
        [9.0, 10.0, 11.0],
    ]
    assert t.slice_scatter0(src, 1).to_vec2() == [
        [0.0, 1.0, 2.0],
        [100.0, 101.0, 102.0],
        [103.0, 104.0, 105.0],
        [9.0, 10.0, 11.0],
    ]
    assert t.slice_scatter0(src, 2).to_vec2() == [
        [0.0, 1.0, 2.0],
        [3.0, 4.0, 5.0],
        [100.0, 101.0, 102.0],
        [103.0, 104.0, 105.0],
    ]


# ------------------------------------------------------------------------------------------------
# scatter
# ------------------------------------------------------------------------------------------------
SCATTER_IDS = [[0, 1, 2], [3, 4, 0], [3, 3, 1], [2, 0, 4]]
SCATTER_DIM0 = [
    [0.0, 10.0, 5.0],
    [1.0, 1.0, 8.0],
    [9.0, 1.0, 2.0],
    [6.0, 7.0, 1.0],
    [1.0, 4.0, 11.0],
    [1.0, 1.0, 1.0],
]


def test_scatter():
    device = DEVICE
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    assert t.to_vec2() == T_4X3
    ids = Tensor.new(SCATTER_IDS, device, dtype=DType.U32)
    init = Tensor.ones((4, 5), DType.F32, device)
    hs = init.scatter_add(ids, t, 1)
    assert hs.to_vec2() == [
        [1.0, 2.0, 3.0, 1.0, 1.0],
        [6.0, 1.0, 1.0, 4.0, 5.0],
        [1.0, 9.0, 1.0, 14.0, 1.0],
        [11.0, 1.0, 10.0, 1.0, 12.0],
    ]

    hs = init.scatter(ids, t, 1)
    assert hs.to_vec2() == [
        [0.0, 1.0, 2.0, 1.0, 1.0],
        [5.0, 1.0, 1.0, 3.0, 4.0],
        [1.0, 8.0, 1.0, 7.0, 1.0],
        [10.0, 1.0, 9.0, 1.0, 11.0],
    ]

    init = Tensor.ones((6, 3), DType.F32, device)
    hs = init.scatter_add(ids, t, 0)
    assert hs.to_vec2() == [
        [1.0, 11.0, 6.0],
        [1.0, 2.0, 9.0],
        [10.0, 1.0, 3.0],
        [10.0, 8.0, 1.0],
        [1.0, 5.0, 12.0],
        [1.0, 1.0, 1.0],
    ]
    hs = init.scatter(ids, t, 0)
    assert hs.to_vec2() == SCATTER_DIM0

    # Candle: `init.scatter_set(&ids, &t, 0)?;` mutates `init`. Here the call returns the new tensor,
    # and the bare statement raises, naming the rebinding.
    with pytest.raises(errors.InPlaceStatement, match=r"t = t\.scatter_set\(ids, src, dim\)"):
        init.scatter_set(ids, t, 0)
    assert init.to_vec2() == [[1.0] * 3] * 6
    init = init.scatter_set(ids, t, 0)
    assert init.to_vec2() == SCATTER_DIM0



def test_scatter_skips_u32_max_ids():
    device = DEVICE
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    init = Tensor.ones((6, 3), DType.F32, device)
    ids = Tensor.new(
        [
            [0, U32_MAX, 2],
            [3, 4, U32_MAX],
            [3, 3, 1],
            [U32_MAX, U32_MAX, 4],
        ],
        device,
        dtype=DType.U32,
    )
    hs = init.scatter(ids, t, 0)
    assert hs.to_vec2() == [
        [0.0, 1.0, 1.0],
        [1.0, 1.0, 8.0],
        [1.0, 1.0, 2.0],
        [6.0, 7.0, 1.0],
        [1.0, 4.0, 11.0],
        [1.0, 1.0, 1.0],
    ]


# ------------------------------------------------------------------------------------------------
# gather
# ------------------------------------------------------------------------------------------------
GATHER_DIM0_T = [
    [
        [108.0, -47.0, 16.0, -56.0, -83.0, -130.0, 210.0],
        [253.0, 95.0, 151.0, 228.0, -210.0, -123.0, -127.0],
        [-9.0, -217.0, 2.0, -78.0, 163.0, 245.0, -204.0],
        [-246.0, 79.0, -238.0, 88.0, -226.0, -184.0, 171.0],
        [8.0, -48.0, -153.0, 234.0, -34.0, 166.0, -153.0],
        [124.0, 0.0, -10.0, -61.0, -242.0, -15.0, -238.0],
    ],
    [
        [12.0, -64.0, -199.0, 244.0, -240.0, 156.0, -128.0],
        [173.0, -57.0, 4.0, -198.0, 233.0, -110.0, 238.0],
        [95.0, 82.0, 0.0, 240.0, 53.0, -211.0, 209.0],
        [-122.0, 167.0, -212.0, 227.0, -144.0, 61.0, 118.0],
        [-63.0, -146.0, 200.0, 244.0, 168.0, -167.0, 116.0],
        [-125.0, -147.0, 110.0, -253.0, -178.0, -250.0, -18.0],
    ],
    [
        [57.0, 86.0, -50.0, 56.0, 92.0, 205.0, -78.0],
        [-137.0, -156.0, -18.0, 248.0, -61.0, -239.0, 14.0],
        [-248.0, -30.0, -50.0, -70.0, -251.0, 250.0, -83.0],
        [-221.0, 67.0, 72.0, 59.0, -24.0, -154.0, 232.0],
        [-144.0, -23.0, -74.0, 5.0, 93.0, 171.0, 205.0],
        [46.0, -77.0, -38.0, -226.0, 246.0, 161.0, -17.0],
    ],
    [
        [-153.0, -231.0, -236.0, 161.0, 126.0, 2.0, -22.0],
        [-229.0, -41.0, 209.0, 164.0, 234.0, 160.0, 57.0],
        [223.0, 254.0, -186.0, -162.0, -46.0, -160.0, -102.0],
        [65.0, 30.0, 213.0, -253.0, 59.0, 224.0, -154.0],
        [-82.0, -203.0, -177.0, 17.0, 31.0, -256.0, -246.0],
        [176.0, -135.0, -65.0, 54.0, -56.0, 210.0, 76.0],
    ],
    [
        [-10.0, -245.0, 168.0, 124.0, -14.0, -33.0, -178.0],
        [25.0, -43.0, -39.0, 132.0, -89.0, 169.0, 179.0],
        [187.0, -215.0, 32.0, -133.0, 87.0, -7.0, -168.0],
        [-224.0, -215.0, -5.0, -230.0, -58.0, -162.0, 128.0],
        [158.0, -137.0, -122.0, -100.0, -202.0, -83.0, 136.0],
        [30.0, -185.0, -144.0, 250.0, 209.0, -40.0, 127.0],
    ],
    [
        [-196.0, 108.0, -245.0, 122.0, 146.0, -228.0, 62.0],
        [-1.0, -66.0, 160.0, 137.0, 13.0, -172.0, -21.0],
        [244.0, 199.0, -164.0, 28.0, 119.0, -175.0, 198.0],
        [-62.0, 253.0, -162.0, 195.0, -95.0, -230.0, -211.0],
        [123.0, -72.0, -26.0, -107.0, -139.0, 64.0, 245.0],
        [11.0, -126.0, -182.0, 108.0, -12.0, 184.0, -127.0],
    ],
    [
        [-159.0, 126.0, 176.0, 161.0, 73.0, -111.0, -138.0],
        [-187.0, 214.0, -217.0, -33.0, -223.0, -201.0, -212.0],
        [-61.0, -120.0, -166.0, -172.0, -95.0, 53.0, 196.0],
        [-33.0, 86.0, 134.0, -152.0, 154.0, -53.0, 74.0],
        [186.0, -28.0, -154.0, -174.0, 141.0, -109.0, 217.0],
        [82.0, 35.0, 252.0, 145.0, 181.0, 74.0, -87.0],
    ],
]

GATHER_DIM0_IDS = [
    [
        [6, 6, 4, 3, 4, 4, 6],
        [3, 3, 2, 4, 4, 4, 6],
        [3, 3, 0, 2, 4, 6, 4],
        [2, 5, 1, 2, 6, 6, 1],
        [2, 1, 6, 5, 3, 2, 3],
        [6, 1, 0, 1, 0, 2, 6],
    ],
    [
        [4, 6, 4, 3, 3, 3, 2],
        [4, 3, 2, 4, 4, 4, 6],
        [2, 3, 0, 2, 4, 6, 4],
        [6, 5, 1, 2, 6, 6, 1],
        [4, 1, 6, 5, 3, 2, 3],
        [1, 1, 0, 1, 0, 2, 6],
    ],
    [
        [3, 6, 4, 3, 3, 3, 2],
        [2, 3, 2, 4, 4, 4, 6],
        [4, 3, 0, 2, 4, 6, 4],
        [0, 5, 1, 2, 6, 6, 1],
        [6, 1, 6, 5, 3, 2, 3],
        [4, 1, 0, 1, 0, 2, 6],
    ],
    [
        [0, 6, 4, 3, 3, 3, 2],
        [5, 3, 2, 4, 4, 4, 6],
        [0, 3, 0, 2, 4, 6, 4],
        [3, 5, 1, 2, 6, 6, 1],
        [0, 1, 6, 5, 3, 2, 3],
        [3, 1, 0, 1, 0, 2, 6],
    ],
]

GATHER_DIM0_EXPECTED = [
    [
        [-159.0, 126.0, 168.0, 161.0, -14.0, -33.0, -138.0],
        [-229.0, -41.0, -18.0, 132.0, -89.0, 169.0, -212.0],
        [223.0, 254.0, 2.0, -70.0, 87.0, 53.0, -168.0],
        [-221.0, 253.0, -212.0, 59.0, 154.0, -53.0, 118.0],
        [-144.0, -146.0, -154.0, -107.0, 31.0, 171.0, -246.0],
        [82.0, -147.0, -10.0, -253.0, -242.0, 161.0, -87.0],
    ],
    [
        [-10.0, 126.0, 168.0, 161.0, 126.0, 2.0, -78.0],
        [25.0, -41.0, -18.0, 132.0, -89.0, 169.0, -212.0],
        [-248.0, 254.0, 2.0, -70.0, 87.0, 53.0, -168.0],
        [-33.0, 253.0, -212.0, 59.0, 154.0, -53.0, 118.0],
        [158.0, -146.0, -154.0, -107.0, 31.0, 171.0, -246.0],
        [-125.0, -147.0, -10.0, -253.0, -242.0, 161.0, -87.0],
    ],
    [
        [-153.0, 126.0, 168.0, 161.0, 126.0, 2.0, -78.0],
        [-137.0, -41.0, -18.0, 132.0, -89.0, 169.0, -212.0],
        [187.0, 254.0, 2.0, -70.0, 87.0, 53.0, -168.0],
        [-246.0, 253.0, -212.0, 59.0, 154.0, -53.0, 118.0],
        [186.0, -146.0, -154.0, -107.0, 31.0, 171.0, -246.0],
        [30.0, -147.0, -10.0, -253.0, -242.0, 161.0, -87.0],
    ],
    [
        [108.0, 126.0, 168.0, 161.0, 126.0, 2.0, -78.0],
        [-1.0, -41.0, -18.0, 132.0, -89.0, 169.0, -212.0],
        [-9.0, 254.0, 2.0, -70.0, 87.0, 53.0, -168.0],
        [65.0, 253.0, -212.0, 59.0, 154.0, -53.0, 118.0],
        [8.0, -146.0, -154.0, -107.0, 31.0, 171.0, -246.0],
        [176.0, -147.0, -10.0, -253.0, -242.0, 161.0, -87.0],
    ],
]

GATHER_DIM1_T = [
    [
        [-117.0, -175.0, 69.0, -163.0],
        [200.0, 242.0, -21.0, -67.0],
        [179.0, 150.0, -126.0, -75.0],
        [-118.0, 38.0, -138.0, -13.0],
        [-221.0, 136.0, -185.0, 180.0],
        [58.0, 182.0, -204.0, -149.0],
    ],
    [
        [3.0, -148.0, -58.0, -154.0],
        [-43.0, 45.0, -108.0, 4.0],
        [-69.0, -249.0, -71.0, -21.0],
        [80.0, 110.0, -152.0, -235.0],
        [-88.0, 7.0, 92.0, -250.0],
        [-186.0, 207.0, -242.0, 98.0],
    ],
    [
        [238.0, 19.0, 64.0, -242.0],
        [-150.0, -97.0, 218.0, 58.0],
        [111.0, -233.0, 204.0, -212.0],
        [-242.0, -232.0, 83.0, 42.0],
        [153.0, 62.0, -251.0, 219.0],
        [-117.0, 36.0, -119.0, 10.0],
    ],
    [
        [215.0, 159.0, -169.0, -27.0],
        [-83.0, 101.0, -88.0, 169.0],
        [-205.0, 93.0, 225.0, -64.0],
        [-162.0, 240.0, 214.0, 23.0],
        [-112.0, 6.0, 21.0, 245.0],
        [-38.0, 113.0, 93.0, 215.0],
    ],
    [
        [91.0, -188.0, -148.0, 101.0],
        [74.0, 203.0, -35.0, 55.0],
        [-116.0, -130.0, -153.0, -96.0],
        [58.0, 22.0, -45.0, -194.0],
        [-221.0, -134.0, 73.0, 159.0],
        [-203.0, -254.0, 31.0, 235.0],
    ],
    [
        [105.0, -53.0, 61.0, 186.0],
        [-195.0, 234.0, 75.0, -1.0],
        [51.0, 139.0, 160.0, -108.0],
        [-173.0, -167.0, 161.0, 19.0],
        [83.0, -246.0, 156.0, -222.0],
        [109.0, 39.0, -149.0, 137.0],
    ],
]


def test_gather():
    device = DEVICE
    ids = Tensor.new([[0], [2], [1], [0]], device, dtype=DType.U32)
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    assert t.to_vec2() == T_4X3
    hs = t.gather(ids, 1)
    assert hs.to_vec2() == [[0.0], [5.0], [7.0], [9.0]]
    ids = Tensor.new([[0, 0], [2, 0], [1, 1], [0, 2]], device, dtype=DType.U32)
    hs = t.gather(ids, 1)
    assert hs.to_vec2() == [[0.0, 0.0], [5.0, 3.0], [7.0, 7.0], [9.0, 11.0]]
    ids = Tensor.new([[0, 2, 0]], device, dtype=DType.U32)
    hs = t.gather(ids, 0)
    assert hs.to_vec2() == [[0.0, 7.0, 2.0]]
    ids = Tensor.new([[0, 2, 0], [0, 1, 1]], device, dtype=DType.U32)
    hs = t.gather(ids, 0)
    assert hs.to_vec2() == [[0.0, 7.0, 2.0], [0.0, 4.0, 5.0]]

    # Random data

    # Dim: 0
    t = Tensor.new(GATHER_DIM0_T, device, dtype=DType.F32)
    ids = Tensor.new(GATHER_DIM0_IDS, device, dtype=DType.U32)
    hs = t.gather(ids, 0)
    assert hs.to_vec3() == GATHER_DIM0_EXPECTED

    # Dim: 1
    t = Tensor.new(GATHER_DIM1_T, device, dtype=DType.F32)
    ids = Tensor.new(
        [
            [[4, 4, 4, 2]],
            [[0, 4, 4, 3]],
            [[1, 5, 3, 4]],
            [[0, 3, 3, 2]],
            [[1, 1, 5, 2]],
            [[1, 4, 5, 4]],
        ],
        device,
        dtype=DType.U32,
    )
    hs = t.gather(ids, 1)
    assert hs.to_vec3() == [
        [[-221.0, 136.0, -185.0, -75.0]],
        [[3.0, 7.0, 92.0, -235.0]],
        [[-150.0, 36.0, 83.0, 219.0]],
        [[215.0, 240.0, 214.0, -64.0]],
        [[74.0, 203.0, 31.0, -96.0]],
        [[-195.0, -246.0, -149.0, -222.0]],
    ]

    # Dim: 2
    t = Tensor.new(
        [
            [[-162.0, 202.0], [-126.0, -39.0], [35.0, -65.0], [1.0, 80.0]],
            [[37.0, 248.0], [-191.0, 89.0], [117.0, -40.0], [-217.0, 220.0]],
        ],
        device,
        dtype=DType.F32,
    )
    ids = Tensor.new([[[1], [0], [1], [1]], [[0], [1], [0], [1]]], device, dtype=DType.U32)
    hs = t.gather(ids, 2)
    assert hs.to_vec3() == [
        [[202.0], [-126.0], [-65.0], [80.0]],
        [[37.0], [89.0], [117.0], [220.0]],
    ]

    t = Tensor.new(
        [
            [[-21.0, -197.0], [194.0, 122.0]],
            [[255.0, -106.0], [-191.0, 250.0]],
            [[33.0, -117.0], [43.0, 10.0]],
            [[-130.0, 238.0], [-217.0, -92.0]],
        ],
        device,
        dtype=DType.F32,
    )
    ids = Tensor.new(
        [
            [[0, 1], [1, 0]],
            [[1, 0], [0, 1]],
            [[0, 1], [0, 1]],
            [[1, 0], [1, 0]],
        ],
        device,
        dtype=DType.U32,
    )
    hs = t.gather(ids, 2)
    assert hs.to_vec3() == [
        [[-21.0, -197.0], [122.0, 194.0]],
        [[-106.0, 255.0], [-191.0, 250.0]],
        [[33.0, -117.0], [43.0, 10.0]],
        [[238.0, -130.0], [-92.0, -217.0]],
    ]



def test_gather_u32_max_ids_give_zero():
    device = DEVICE
    t = Tensor.arange(0.0, 12.0, device).reshape((4, 3))
    ids = Tensor.new(
        [
            [0, 0],
            [2, U32_MAX],
            [U32_MAX, 1],
            [0, 2],
        ],
        device,
        dtype=DType.U32,
    )
    hs = t.gather(ids, 1)
    assert hs.to_vec2() == [[0.0, 0.0], [5.0, 0.0], [0.0, 7.0], [9.0, 11.0]]


# ------------------------------------------------------------------------------------------------
# broadcasting
# ------------------------------------------------------------------------------------------------
def test_broadcasting():
    device = DEVICE
    t1 = Tensor.arange(0.0, 24.0, device).reshape((4, 2, 3))
    t2 = Tensor.new([100.0, 200.0], device, dtype=DType.F32)
    s = t1.broadcast_add(t2.reshape((2, 1)))
    assert s.to_vec3() == [
        [[100.0, 101.0, 102.0], [203.0, 204.0, 205.0]],
        [[106.0, 107.0, 108.0], [209.0, 210.0, 211.0]],
        [[112.0, 113.0, 114.0], [215.0, 216.0, 217.0]],
        [[118.0, 119.0, 120.0], [221.0, 222.0, 223.0]],
    ]
    s = t1.t().broadcast_add(t2)
    assert s.to_vec3() == [
        [[100.0, 203.0], [101.0, 204.0], [102.0, 205.0]],
        [[106.0, 209.0], [107.0, 210.0], [108.0, 211.0]],
        [[112.0, 215.0], [113.0, 216.0], [114.0, 217.0]],
        [[118.0, 221.0], [119.0, 222.0], [120.0, 223.0]],
    ]
    s = t1.broadcast_sub(t2.reshape((2, 1)))
    assert s.to_vec3() == [
        [[-100.0, -99.0, -98.0], [-197.0, -196.0, -195.0]],
        [[-94.0, -93.0, -92.0], [-191.0, -190.0, -189.0]],
        [[-88.0, -87.0, -86.0], [-185.0, -184.0, -183.0]],
        [[-82.0, -81.0, -80.0], [-179.0, -178.0, -177.0]],
    ]
    s = t1.t().broadcast_sub(t2)
    assert s.to_vec3() == [
        [[-100.0, -197.0], [-99.0, -196.0], [-98.0, -195.0]],
        [[-94.0, -191.0], [-93.0, -190.0], [-92.0, -189.0]],
        [[-88.0, -185.0], [-87.0, -184.0], [-86.0, -183.0]],
        [[-82.0, -179.0], [-81.0, -178.0], [-80.0, -177.0]],
    ]
    # Test a narrowed version as this uses a layout start_offset.
    t1 = t1.i(slice(2, None))
    s = t1.broadcast_add(t2.reshape((2, 1)))
    assert s.to_vec3() == [
        [[112.0, 113.0, 114.0], [215.0, 216.0, 217.0]],
        [[118.0, 119.0, 120.0], [221.0, 222.0, 223.0]],
    ]
    s = t1.t().broadcast_add(t2)
    assert s.to_vec3() == [
        [[112.0, 215.0], [113.0, 216.0], [114.0, 217.0]],
        [[118.0, 221.0], [119.0, 222.0], [120.0, 223.0]],
    ]
    s = t1.broadcast_sub(t2.reshape((2, 1)))
    assert s.to_vec3() == [
        [[-88.0, -87.0, -86.0], [-185.0, -184.0, -183.0]],
        [[-82.0, -81.0, -80.0], [-179.0, -178.0, -177.0]],
    ]
    s = t1.t().broadcast_sub(t2)
    assert s.to_vec3() == [
        [[-88.0, -185.0], [-87.0, -184.0], [-86.0, -183.0]],
        [[-82.0, -179.0], [-81.0, -178.0], [-80.0, -177.0]],
    ]
    t3 = Tensor.new(1.0, device, dtype=DType.F32).broadcast_div(t2)
    s = t1.broadcast_mul(t2.reshape((2, 1)))
    s_div = t1.broadcast_div(t3.reshape((2, 1)))
    assert s.to_vec3() == [
        [[1200.0, 1300.0, 1400.0], [3000.0, 3200.0, 3400.0]],
        [[1800.0, 1900.0, 2000.0], [4200.0, 4400.0, 4600.0]],
    ]
    assert s.to_vec3() == s_div.to_vec3()
    s = t1.t().broadcast_mul(t2)
    s_div = t1.t().broadcast_div(t3)
    assert s.to_vec3() == [
        [[1200.0, 3000.0], [1300.0, 3200.0], [1400.0, 3400.0]],
        [[1800.0, 4200.0], [1900.0, 4400.0], [2000.0, 4600.0]],
    ]
    assert s.to_vec3() == s_div.to_vec3()


# ------------------------------------------------------------------------------------------------
# randn
# ------------------------------------------------------------------------------------------------
def test_randn():
    device = DEVICE
    tensor = Tensor.randn(0.0, 1.0, (5, 3), device, dtype=DType.F32)
    assert tensor.dims() == [5, 3]
    # Check that the seed gets updated by checking that
    # a new series of numbers is generated each time
    tensor2 = Tensor.randn(0.0, 1.0, (5, 3), device, dtype=DType.F32)
    assert tensor.to_vec2() != tensor2.to_vec2()
    tensor = Tensor.rand(0.0, 1.0, (5, 3), device, dtype=DType.F32)
    assert tensor.dims() == [5, 3]
    # Check that the seed gets updated by checking that
    # a new series of numbers is generated each time
    tensor2 = Tensor.rand(0.0, 1.0, (5, 3), device, dtype=DType.F32)
    assert tensor.to_vec2() != tensor2.to_vec2()
    # We do not expect deterministic elements at any index.
    # There once was a bug that had a deterministic zero element in evenly sized tensors.
    n = 2
    v = [Tensor.randn(0.0, 1.0, n, device, dtype=DType.F32).to_vec1() for _ in range(100)]
    assert all(any(a[i] != b[i] for a, b in itertools.pairwise(v)) for i in range(n)), (
        "There are deterministic values in the randn tensors"
    )
    v = [Tensor.rand(0.0, 1.0, n, device, dtype=DType.F32).to_vec1() for _ in range(100)]
    assert all(any(a[i] != b[i] for a, b in itertools.pairwise(v)) for i in range(n)), (
        "There are deterministic values in the rand tensors"
    )


# ------------------------------------------------------------------------------------------------
# repeat_with_zero_factor, meshgrid_with_empty_axis, zero_dim
# ------------------------------------------------------------------------------------------------
def test_repeat_with_zero_factor():
    device = DEVICE
    tensor = Tensor.new([[1, 2], [3, 4]], device, dtype=DType.U32)

    repeated_rows = tensor.repeat((0, 2))
    assert repeated_rows.dims() == [0, 4]
    assert repeated_rows.elem_count() == 0

    repeated_columns = tensor.repeat((2, 0))
    assert repeated_columns.dims() == [4, 0]
    assert repeated_columns.elem_count() == 0


def test_meshgrid_with_empty_axis():
    device = DEVICE
    empty_axis = Tensor.from_vec([], 0, device, dtype=DType.F32)
    coordinates = Tensor.new([10.0, 20.0, 30.0], device, dtype=DType.F32)

    grids = Tensor.meshgrid([empty_axis, coordinates], False)
    assert len(grids) == 2
    for grid in grids:
        assert grid.dims() == [0, 3]
        assert grid.elem_count() == 0


def test_zero_dim():
    device = DEVICE
    t = Tensor.zeros((4, 0, 1), DType.F32, device)
    assert t.dims3() == (4, 0, 1)
    t2 = Tensor.zeros((4, 3, 1), DType.F32, device)
    t_cat = Tensor.cat([t, t2], 1)
    assert t_cat.dims3() == (4, 3, 1)
    t_cat = Tensor.cat([t, t], 1)
    assert t_cat.dims3() == (4, 0, 1)
    t_unary = t.sqrt()
    assert t_unary.dims3() == (4, 0, 1)
    t_plus = t + 1.0
    assert t_plus.dims3() == (4, 0, 1)
    t_mm = t2.matmul(t.t())
    assert t_mm.dims3() == (4, 3, 0)
    t_mm = t.matmul(t2.t())
    assert t_mm.dims3() == (4, 0, 3)
    t_mm = t.t().matmul(t)
    assert t_mm.dims3() == (4, 1, 1)


# ------------------------------------------------------------------------------------------------
# tensor_send_sync (Rust's std::thread::spawn -> threading.Thread)
# ------------------------------------------------------------------------------------------------
def test_tensor_send_sync():
    device = DEVICE
    tensor = Tensor.new([1.0, 2.0, 3.0], device, dtype=DType.F32)

    results = []

    def add_self(tensor):
        new = tensor.add(tensor)
        results.append(new.to_vec1())

    threads = []
    for _ in range(10):
        thread = threading.Thread(target=add_self, args=(tensor.clone(),))
        thread.start()
        threads.append(thread)
    result = tensor.to_vec1()
    assert result == [1.0, 2.0, 3.0]
    for thread in threads:
        thread.join()
    assert results == [[2.0, 4.0, 6.0]] * 10

    tensor = Tensor.new([1.0, 2.0, 3.0], device, dtype=DType.F32)
    tensor.device().synchronize()

    out = []

    def add_and_sync():
        new = tensor.add(tensor)
        new.device().synchronize()
        out.append(new)

    thread = threading.Thread(target=add_and_sync)
    thread.start()
    thread.join()
    new = out[0]
    result = new.to_vec1()
    assert result == [2.0, 4.0, 6.0]


# ------------------------------------------------------------------------------------------------
# plain #[test] functions (all on Device::Cpu)
# ------------------------------------------------------------------------------------------------
# There was originally a bug on the CPU implementation for randn
# https://github.com/huggingface/candle/issues/381
def test_randn_hasneg():
    t = Tensor.randn(0.0, 1.0, 200, Device.Cpu, dtype=DType.F32).to_vec1()
    assert not all(v >= 0.0 for v in t), "all values in tensors are non-negative"


def test_pad_with_same():
    t = Tensor.arange(1.0, 5.0, Device.Cpu).reshape((2, 2))
    t0 = t.pad_with_same(0, 1, 2)
    assert t0.to_vec2() == [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0]]
    t1 = t.pad_with_same(1, 1, 2)
    assert t1.to_vec2() == [[1.0, 1.0, 2.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0, 4.0]]


def test_i64_abs(x64):
    t = Tensor.new([-42, 1337], Device.Cpu, dtype=DType.I64)
    t = t.abs()
    assert t.to_vec1(DType.I64) == [42, 1337]


def test_tril_triu_eye():
    t = Tensor.tril2(4, DType.F32, Device.Cpu)
    assert t.to_vec2() == [
        [1.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0],
        [1.0, 1.0, 1.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
    ]
    t = Tensor.triu2(4, DType.F32, Device.Cpu)
    assert t.to_vec2() == [
        [1.0, 1.0, 1.0, 1.0],
        [0.0, 1.0, 1.0, 1.0],
        [0.0, 0.0, 1.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    t = Tensor.eye(4, DType.F32, Device.Cpu)
    assert t.to_vec2() == [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]


def test_cumsum():
    t = [3.0, 1.0, 4.0, 1.0, 5.0]
    t = Tensor.new(t, Device.Cpu, dtype=DType.F32)
    assert t.cumsum(0).to_vec1() == [3.0, 4.0, 8.0, 9.0, 14.0]
    t = t.unsqueeze(1)
    assert t.cumsum(0).to_vec2() == [[3.0], [4.0], [8.0], [9.0], [14.0]]
    assert t.cumsum(1).to_vec2() == [[3.0], [1.0], [4.0], [1.0], [5.0]]
    t = [[3.0, 1.0, 4.0, 1.0, 5.0], [2.0, 1.0, 7.0, 8.0, 2.0]]
    t = Tensor.new(t, Device.Cpu, dtype=DType.F32)
    assert t.cumsum(1).to_vec2() == [[3.0, 4.0, 8.0, 9.0, 14.0], [2.0, 3.0, 10.0, 18.0, 20.0]]
    assert t.cumsum(0).to_vec2() == [[3.0, 1.0, 4.0, 1.0, 5.0], [5.0, 2.0, 11.0, 9.0, 7.0]]


def assert_close(a, b, epsilon):
    """Both a and b 1-D f64 tensors with the same number of elements; every pair closer than epsilon."""
    a_vec = a.to_vec1(DType.F64)
    b_vec = b.to_vec1(DType.F64)

    assert len(a_vec) == len(b_vec)
    for x, y in zip(a_vec, b_vec):
        assert abs(x - y) < epsilon


def test_log_sum_exp(x64):
    input = Tensor.new(
        [
            [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
            [[-1000.0, -999.0, -1001.0], [1000.0, 999.0, 1001.0]],
        ],
        Device.Cpu,
        dtype=DType.F64,
    )

    output = input.log_sum_exp(D.Minus1)
    # The expectations obtained from pytorch.
    expected = Tensor.new([[3.4076, 6.4076], [-998.5924, 1001.4076]], Device.Cpu, dtype=DType.F64)
    assert output.dims() == expected.dims()
    assert_close(output.flatten_all(), expected.flatten_all(), 0.00001)

    assert input.log_sum_exp((0, 1)).to_vec1(DType.F64) == [1000.0, 999.0, 1001.0]
    assert input.log_sum_exp(()).to_vec3(DType.F64) == input.to_vec3(DType.F64)


def test_pow():
    lhs = Tensor.new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], Device.Cpu, dtype=DType.F32)
    rhs = lhs - 2.0
    res = lhs.pow(rhs)
    assert cj.testing.to_vec2_round(res, 3) == [[1.0, 1.0, 3.0], [16.0, 125.0, 1296.0]]


def test_flip_1d(x64):
    # 1D: [0, 1, 2, 3, 4]
    t = Tensor.arange(0.0, 5.0, Device.Cpu, dtype=DType.F64).reshape((5,))
    flipped = t.flip([0])
    # Expected: [4, 3, 2, 1, 0]
    expected = Tensor.from_vec([4.0, 3.0, 2.0, 1.0, 0.0], (5,), Device.Cpu, dtype=DType.F64)
    cj.testing.assert_tensor_eq(flipped, expected)


def test_flip_2d(x64):
    # 2D:
    # [[0, 1, 2],
    #  [3, 4, 5]]
    t = Tensor.arange(0.0, 6.0, Device.Cpu, dtype=DType.F64).reshape((2, 3))
    flipped = t.flip([0, 1])
    # Expected:
    # [[5, 4, 3],
    #  [2, 1, 0]]
    expected = Tensor.from_vec([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], (2, 3), Device.Cpu, dtype=DType.F64)
    cj.testing.assert_tensor_eq(flipped, expected)


def test_flip_3d_channels(x64):
    # 3D:
    # [[[0,1,2],
    #   [3,4,5]],
    #
    #  [[6,7,8],
    #   [9,10,11]]]
    t = Tensor.arange(0.0, 12.0, Device.Cpu, dtype=DType.F64).reshape((2, 2, 3))
    flipped = t.flip([2])
    # Expected:
    # [[[2,1,0],
    #   [5,4,3]],
    #
    #  [[8,7,6],
    #   [11,10,9]]]
    expected = Tensor.from_vec(
        [2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0, 11.0, 10.0, 9.0],
        (2, 2, 3),
        Device.Cpu,
        dtype=DType.F64,
    )
    cj.testing.assert_tensor_eq(flipped, expected)


def test_tensor_from_data_validates_concrete_shape():
    values = [1.0, 2.0, 3.0, 4.0]

    with pytest.raises(errors.ShapeMismatch):
        Tensor.from_slice(values, (2, 2, 2), Device.Cpu, dtype=DType.F32)
    with pytest.raises(errors.ShapeMismatch):
        Tensor.from_slice(values, (2, 1), Device.Cpu, dtype=DType.F32)
    with pytest.raises(errors.ShapeMismatch):
        Tensor.from_vec(list(values), (2, 2, 2), Device.Cpu, dtype=DType.F32)
    with pytest.raises(errors.ShapeMismatch):
        Tensor.from_vec(list(values), (2, 1), Device.Cpu, dtype=DType.F32)

    tensor = Tensor.from_slice(values, (2, 2), Device.Cpu, dtype=DType.F32)
    assert tensor.dims() == [2, 2]

    tensor = Tensor.from_vec(list(values), ((), 2), Device.Cpu, dtype=DType.F32)
    assert tensor.dims() == [2, 2]

    empty = []
    tensor = Tensor.from_slice(empty, (0, 3), Device.Cpu, dtype=DType.F32)
    assert tensor.dims() == [0, 3]


def test_tensor_new():
    t1 = Tensor.new([1.0, 2.0, 3.0], Device.Cpu, dtype=DType.F32)
    assert t1.to_vec1(DType.F32) == [1.0, 2.0, 3.0]
    t2 = Tensor.new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], Device.Cpu, dtype=DType.F32)
    assert t2.to_vec2(DType.F32) == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    t3 = Tensor.new(
        [
            [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
            [[3.0, 1.0, 4.0], [1.0, 5.0, 9.0]],
        ],
        Device.Cpu,
        dtype=DType.F32,
    )
    assert t3.to_vec3(DType.F32) == [
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
        [[3.0, 1.0, 4.0], [1.0, 5.0, 9.0]],
    ]


def test_tensor_norm(x64):
    t = Tensor.new([[3.0, 4.0], [0.0, 0.0]], Device.Cpu, dtype=DType.F64)
    norm = t.norm()
    assert norm.to_scalar(DType.F64) == 5.0


# transfers_cuda_to_device and allocates_twice_when_transferring_to_same_device need two CUDA devices / CUDA
# storage pointers (#[cfg(feature = "cuda")]): not ported.


def test_core_api_names_cmp_op_write_bytes_is_variable_dtype_from_str():
    import io

    import numpy as np

    from candlejax import CmpOp, Var

    t = Tensor.new([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], DEVICE)
    # t.cmp(rhs, CmpOp::Lt) (candle::op::CmpOp)
    assert t.cmp(t.ones_like() * 3.0, CmpOp.Lt).to_vec2(DType.U8) == [[1, 1, 0], [0, 0, 0]]
    assert t.cmp(t, CmpOp.Eq).to_vec2() == t.eq(t).to_vec2() and t.cmp(2.0, CmpOp.Ge).to_vec2() == t.ge(2.0).to_vec2()
    # write_bytes: row-major, little endian
    buf = io.BytesIO()
    t.t().write_bytes(buf)
    assert np.frombuffer(buf.getvalue(), "<f4").tolist() == [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
    buf = io.BytesIO()
    Tensor.new([1, 258], DEVICE).write_bytes(buf)
    assert buf.getvalue() == bytes([1, 0, 0, 0, 2, 1, 0, 0])
    # is_variable
    assert not t.is_variable() and Var.from_tensor(t).is_variable() and not (Var.new([1.0]) * 2.0).is_variable()
    # FromStr: DType::from_str("bf16")
    assert DType.from_str("bf16") is DType.BF16
    with pytest.raises(errors.Error, match="cannot parse 'x' as a dtype"):
        DType.from_str("x")


def test_device_api_names():
    from candlejax import DeviceLocation

    assert DEVICE.location() == DeviceLocation.Cpu and DEVICE.location() != DeviceLocation.Cuda(0)
    assert repr(DeviceLocation.Cuda(1)) == "Cuda { gpu_id: 1 }"
    assert repr(DeviceLocation.Metal(0)) == "Metal { gpu_id: 0 }"
    assert DEVICE.with_context(lambda: 41 + 1) == 42
    with pytest.raises(errors.Error, match="expected a cuda device, got cpu"):
        DEVICE.as_cuda_device()
    with pytest.raises(errors.Error, match="expected a metal device, got cpu"):
        DEVICE.as_metal_device()
