"""``candlejax.nn``: Candle's candle-nn on JAX — Modules as pytrees, VarBuilder/VarMap, layers, ops.

>>> from candlejax import DType, Device
>>> from candlejax.nn import VarBuilder, VarMap, linear
>>> vb = VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)
>>> layer = linear(4, 2, vb.pp("fc"))
>>> sorted(layer.named_vars())
['fc.bias', 'fc.weight']
"""

from candlejax.nn import (
    attention,
    cpu_flash_attention,
    encoding,
    init,
    loss,
    ops,
    optim,  # noqa: F401  candle_nn::optim::AdamW (not in __all__: a star import keeps cj.optim, the full module)
    quantized,
    rotary_emb,
    sampling,
    varlen_attention,
)
from candlejax.nn.activation import Activation, PReLU, prelu
from candlejax.nn.conv import (
    Conv1d,
    Conv1dConfig,
    Conv2d,
    Conv2dConfig,
    ConvTranspose1d,
    ConvTranspose1dConfig,
    ConvTranspose2d,
    ConvTranspose2dConfig,
    conv1d,
    conv1d_no_bias,
    conv2d,
    conv2d_no_bias,
    conv_transpose1d,
    conv_transpose1d_no_bias,
    conv_transpose2d,
    conv_transpose2d_no_bias,
)
from candlejax.nn.dropout import Dropout
from candlejax.nn.embedding import Embedding, check_token_ids, embedding
from candlejax.nn.encoding import one_hot
from candlejax.nn.init import (
    DEFAULT_KAIMING_NORMAL,
    DEFAULT_KAIMING_UNIFORM,
    ONE,
    ZERO,
    FanInOut,
    Init,
    NonLinearity,
    NormalOrUniform,
)
from candlejax.nn.kv_cache import (
    Cache,
    ConcatKvCache,
    DecodeKvCache,
    KvCache,
    RotatingCache,
    RotatingKvCache,
    StackedKvCache,
)
from candlejax.nn.kv_cache_scattered import IndicesAndMask, ScatteredCacheBuilder, ScatteredKvCache
from candlejax.nn.linear import Linear, PackedLinear, linear, linear_b, linear_no_bias, pack_linears, unpack_linears
from candlejax.nn.module import (
    Buffer,
    LayerInputShape,
    Module,
    ModuleT,
    Var,
    named_buffers,
    named_tensors,
    named_vars,
)
from candlejax.nn.norm import (
    BatchNorm,
    BatchNormConfig,
    GroupNorm,
    LayerNorm,
    LayerNormConfig,
    RmsNorm,
    batch_norm,
    group_norm,
    layer_norm,
    layer_norm_no_bias,
    rms_norm,
)
from candlejax.nn.ops import Identity
from candlejax.nn.rnn import GRU, LSTM, RNN, Direction, GRUConfig, GRUState, LSTMConfig, LSTMState, gru, lstm
from candlejax.nn.rotary import RotaryEmbedding
from candlejax.nn.sequential import Func, FuncT, Sequential, func, func_t, seq
from candlejax.nn.state import HostState, check_continuation
from candlejax.nn.var_builder import SimpleBackend, VarBuilder
from candlejax.nn.var_map import VarMap
from candlejax.optim import SGD, AdamW, Optimizer, ParamsAdamW  # Candle exports its optimizers from candle_nn

__all__ = [
    "Activation", "BatchNorm", "BatchNormConfig", "Buffer", "Cache", "ConcatKvCache", "Conv1d", "Conv1dConfig",
    "Conv2d", "Conv2dConfig", "ConvTranspose1d", "ConvTranspose1dConfig", "ConvTranspose2d",
    "ConvTranspose2dConfig", "DEFAULT_KAIMING_NORMAL", "DEFAULT_KAIMING_UNIFORM", "DecodeKvCache", "Direction",
    "Dropout",
    "Embedding", "FanInOut", "Func", "FuncT", "GRU", "GRUConfig", "GRUState", "GroupNorm", "Identity",
    "IndicesAndMask", "Init",
    "KvCache", "LSTM", "LSTMConfig", "LSTMState", "LayerInputShape", "LayerNorm", "LayerNormConfig", "Linear",
    "HostState", "Module", "ModuleT", "NonLinearity", "NormalOrUniform", "ONE", "PReLU", "PackedLinear", "RNN",
    "RmsNorm",
    "RotaryEmbedding", "RotatingCache", "RotatingKvCache", "ScatteredCacheBuilder", "ScatteredKvCache",
    "Sequential", "SimpleBackend", "StackedKvCache", "Var", "VarBuilder",
    "VarMap", "ZERO", "batch_norm", "check_continuation", "check_token_ids", "conv1d", "conv1d_no_bias", "conv2d",
    "conv2d_no_bias",
    "conv_transpose1d", "conv_transpose1d_no_bias", "conv_transpose2d", "conv_transpose2d_no_bias", "embedding",
    "encoding", "func", "func_t", "group_norm", "gru", "init", "layer_norm", "layer_norm_no_bias", "linear", "linear_b",
    "linear_no_bias", "loss", "pack_linears", "lstm", "named_buffers", "named_tensors", "named_vars", "one_hot", "ops",
    "prelu", "quantized", "rotary_emb", "sampling", "rms_norm", "seq", "unpack_linears",
    "attention", "cpu_flash_attention", "varlen_attention",
    "SGD", "AdamW", "Optimizer", "ParamsAdamW",
]  # fmt: skip
