"""Loading a model straight onto a mesh: each tensor placed on its ``NamedSharding`` as it is read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from jax.sharding import Mesh, NamedSharding

from candlejax.device import Device
from candlejax.distributed._mesh import ShardingError
from candlejax.distributed._shard import Resolver, RuleSet, _place, shard
from candlejax.dtype import DType
from candlejax.nn.var_builder import SafetensorsBackend, SimpleBackend, VarBuilder, VarMapBackend

T = TypeVar("T")


class MeshBackend(SimpleBackend):
    """A backend that places what ``inner`` holds on a mesh: safetensors tensors go from the mapped
    file (one host copy, one tensor at a time) straight onto their ``NamedSharding``, so each device
    receives only its shard; other backends' tensors are read as they are, then placed."""

    def __init__(self, inner: SimpleBackend, resolver: Resolver):
        if isinstance(inner, VarMapBackend):
            raise ShardingError(
                "a VarMap builds trainable Vars on one device; build the model, then place it with"
                " cj.distributed.shard(model, mesh, rules)"
            )
        self.inner, self.resolver = inner, resolver

    def describe(self) -> str:
        return self.inner.describe()

    def names(self) -> list[str]:
        return self.inner.names()

    def contains_tensor(self, path: str) -> bool:
        return self.inner.contains_tensor(path)

    def check(self, path: str, shape: tuple[int, ...] | None = None) -> None:
        self.inner.check(path, shape)

    def _placed(self, path: str, host: Any) -> Any:
        spec = self.resolver.spec(path, tuple(np.shape(host)))
        return _place(host, NamedSharding(self.resolver.mesh, spec))

    def get(self, shape: tuple[int, ...], path: str, init: Any, dtype: DType, device: Device) -> Any:
        if not isinstance(self.inner, SafetensorsBackend):
            return self._placed(path, self.inner.get(shape, path, init, dtype, device))
        self.inner.check(path, shape)
        return self._placed(path, self.inner.st.get(path).numpy(dtype))

    def get_unchecked(self, path: str, dtype: DType, device: Device) -> Any:
        if not isinstance(self.inner, SafetensorsBackend):
            return self._placed(path, self.inner.get_unchecked(path, dtype, device))
        self.inner.check(path)
        return self._placed(path, self.inner.st.get(path).numpy(dtype))


def on_mesh(vb: VarBuilder, mesh: Mesh, rules: RuleSet) -> VarBuilder:
    """``vb`` (same prefix, dtype, names and read record) with every tensor it reads placed on
    ``mesh`` by ``rules`` as it is read. Rules match the checkpoint names."""
    resolver = Resolver(mesh, rules)
    return vb.wrap_backend(lambda inner: MeshBackend(inner, resolver))


def load_on_mesh(load: Callable[[VarBuilder], T], vb: VarBuilder, mesh: Mesh, rules: RuleSet) -> T:
    """``load(vb)`` with each weight put on ``mesh`` by ``rules`` as it is read (the whole model
    never sits on one device). Tensors the loader computes rather than reads (rotary tables) are
    then placed by the same rules, and rules that match no parameter raise.

    JAX: ``jax.device_put(host_array, NamedSharding(mesh, spec))`` per checkpoint tensor.
    """
    model = load(on_mesh(vb, mesh, rules))
    return shard(model, mesh, rules)  # weights already placed stay as they are
