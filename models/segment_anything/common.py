"""Pieces every SAM part shares (~ candle-transformers' ``segment_anything/mod.rs``): ``LayerNorm2d``
(channel LayerNorm of detectron2/ConvNeXt), ``MlpBlock`` and a ``linear`` helper."""

from __future__ import annotations

from typing import Any

from candlejax import errors
from candlejax.nn import Activation, Linear, Module, VarBuilder, linear_b, ops
from candlejax.tensor import Tensor

__all__ = ["LayerNorm2d", "MlpBlock", "check_input", "linear"]


def linear(vb: VarBuilder, in_dim: int, out_dim: int, bias: bool) -> Linear:
    """Candle's ``segment_anything::linear(vb, in, out, bias)``."""
    return linear_b(in_dim, out_dim, bias, vb)


def check_input(what: str, x: Tensor, rank: int, dims: dict[int, int]) -> None:
    """Raise a candlejax error naming ``what`` unless ``x`` has ``rank`` and the given dim sizes."""
    shape = tuple(x.shape)
    if len(shape) != rank or any(shape[d] != n for d, n in dims.items()):
        want = ["_"] * rank
        for d, n in dims.items():
            want[d] = str(n)
        raise errors.Msg(f"{what}: expected a tensor of shape [{', '.join(want)}], got {list(shape)}")


class LayerNorm2d(Module):
    """LayerNorm over the channel dim of ``(B, C, H, W)`` (SAM's ``LayerNorm2d``, eps 1e-6)."""

    def __init__(self, weight: Tensor, bias: Tensor, num_channels: int, eps: float = 1e-6):
        self.weight, self.bias, self.num_channels, self.eps = weight, bias, int(num_channels), float(eps)

    @staticmethod
    def new(num_channels: int, eps: float, vb: VarBuilder) -> LayerNorm2d:
        """Candle's ``LayerNorm2d::new(num_channels, eps, vb)``: ``weight`` and ``bias`` ``(num_channels,)`` from
        ``vb``."""
        return LayerNorm2d(vb.get(num_channels, "weight"), vb.get(num_channels, "bias"), num_channels, eps)

    def forward(self, xs: Tensor) -> Tensor:
        """Normalize over the channels: ``(B, C, H, W)`` in, same shape out."""
        u = xs.mean_keepdim(1)
        xs = xs.broadcast_sub(u)
        s = xs.sqr().mean_keepdim(1)
        xs = xs.broadcast_div((s + self.eps).sqrt())
        c = self.num_channels
        return xs.broadcast_mul(self.weight.reshape((1, c, 1, 1))).broadcast_add(self.bias.reshape((1, c, 1, 1)))

    def forward_nhwc(self, xs: Tensor) -> Tensor:
        """The same normalisation of a channels-last ``(B, H, W, C)`` input."""
        return ops.layer_norm(xs, self.weight, self.bias, self.eps)


class MlpBlock(Module):
    """``lin2(act(lin1(x)))`` (SAM's ``MLPBlock``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, activation: Activation, vb: VarBuilder):
        self.lin1 = linear(vb.pp("lin1"), embedding_dim, mlp_dim, True)
        self.lin2 = linear(vb.pp("lin2"), mlp_dim, embedding_dim, True)
        self.activation = activation

    @classmethod
    def new(cls, embedding_dim: int, mlp_dim: int, activation: Activation, vb: VarBuilder) -> MlpBlock:
        """Candle's ``MlpBlock::new(embedding_dim, mlp_dim, activation, vb)``."""
        return cls(embedding_dim, mlp_dim, activation, vb)

    def forward(self, xs: Any) -> Tensor:
        """``lin2(activation(lin1(xs)))``: ``(..., embedding_dim)`` in and out."""
        return self.lin2(self.activation(self.lin1(xs)))
