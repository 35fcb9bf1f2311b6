"""candle-transformers' ``quantized_var_builder::VarBuilder``: QTensors from a GGUF file by name.

Sketch (needs a GGUF file)::

    vb = VarBuilder.from_gguf("model.gguf", Device.Cpu)
    w = vb.pp("blk.0").pp("attn_q").get((576, 576), "weight")   # a QTensor, shape (out, in)

Tensors are read from the mmapped file on first use and cached (Candle reads them all up front).
"""

from __future__ import annotations

from typing import Any

from candlejax import errors
from candlejax.device import Device
from candlejax.quantized.qtensor import QTensor


class VarBuilder:
    """Builds quantized models by tensor name, Candle's way (``pp``, ``get``, ``get_no_shape``)."""

    __slots__ = ("_cache", "_content", "_device", "_path")

    def __init__(self, content: Any, device: Any = None, path: tuple[str, ...] = (), cache: dict | None = None):
        self._content = content
        self._device = Device.coerce(device)
        self._path = path
        self._cache: dict[str, QTensor] = {} if cache is None else cache

    @staticmethod
    def from_gguf(p: Any, device: Any = None) -> VarBuilder:
        """Open a GGUF file (path or file object)."""
        from candlejax.io.gguf import Content

        return VarBuilder(Content.read(p), device)

    @staticmethod
    def from_gguf_buffer(buffer: bytes, device: Any = None) -> VarBuilder:
        """Candle's ``quantized_var_builder::VarBuilder::from_gguf_buffer``: read the GGUF bytes ``buffer``."""
        from candlejax.io.gguf import Content

        return VarBuilder(Content.read(bytes(buffer)), device)

    @staticmethod
    def from_content(content: Any, device: Any = None) -> VarBuilder:
        """A builder over an already-read GGUF ``Content``."""
        return VarBuilder(content, device)

    # --- naming --------------------------------------------------------------------------------
    def pp(self, s: Any) -> VarBuilder:
        """A builder whose names are prefixed with ``s.`` (``push_prefix``)."""
        return VarBuilder(self._content, self._device, (*self._path, str(s)), self._cache)

    push_prefix = pp

    def path(self, name: str) -> str:
        """The full tensor name of ``name`` under the current prefix."""
        return ".".join((*self._path, name)) if self._path else name

    def prefix(self) -> str:
        """The current prefix, dot-separated."""
        return ".".join(self._path)

    @property
    def device(self) -> Device:
        """Candle's ``VarBuilder::device``: the device tensors are loaded on."""
        return self._device

    @property
    def content(self) -> Any:
        """The underlying ``gguf.Content`` (metadata, tensor infos)."""
        return self._content

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF metadata of the file."""
        return self._content.metadata

    def contains_key(self, key: str) -> bool:
        """Candle's ``VarBuilder::contains_key``: whether ``key`` under the prefix is in the file."""
        return self.path(key) in self._content.tensor_infos

    # --- tensors -------------------------------------------------------------------------------
    def get_no_shape(self, name: str) -> QTensor:
        """Candle's ``VarBuilder::get_no_shape``: the ``QTensor`` ``name`` whatever its shape."""
        path = self.path(name)
        q = self._cache.get(path)
        if q is None:
            if path not in self._content.tensor_infos:
                raise errors.CannotFindTensor(path, f"not in {self._content.path}")
            q = self._content.tensor(path, device=self._device)
            self._cache[path] = q
        return q

    def get(self, shape: Any, name: str) -> QTensor:
        """The QTensor ``name`` (after the prefix); raises when its shape is not ``shape``."""
        q = self.get_no_shape(name)
        want = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        if q.shape != want:
            raise errors.UnexpectedShape(
                f"shape mismatch for {self.path(name)} in {self._content.path}", want, q.shape
            )
        return q

    def __repr__(self) -> str:
        return f"quantized.VarBuilder({self._content.path!r}, prefix={self.prefix()!r}, {self._device!r})"


__all__ = ["VarBuilder"]
