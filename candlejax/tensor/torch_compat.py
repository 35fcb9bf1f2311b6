"""PyTorch spellings where Candle has no name for the same thing, and pointers where it does.

requires: the other Tensor mixins (reshape, to_dtype, permute, matmul, max/min, squeeze, clamp),
candlejax.tensor.reduce (the softmax kernels ``candlejax.nn.ops`` uses too)
provides: ``T``, ``mT``, ``size``, ``numel``, ``view``, ``float``/``half``/``bfloat16``/``double``/``int``/``long``,
``softmax``, ``log_softmax``, ``mm``, ``type_as``, ``amax``/``amin``, ``clone``, ``cpu``, and an ``AttributeError``
naming the Candle method for other PyTorch names (``x.zero_()`` -> tensors are immutable, ...);
Candle's in-place and custom-op (``apply_op1``) calls raise with the candlejax spelling.

Only spellings with one possible meaning are accepted; the list is in docs/differences.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from candlejax import errors
from candlejax.device import Device
from candlejax.dtype import DType
from candlejax.shape import resolve_dim
from candlejax.tensor._core import TensorBase, check_float, wrap
from candlejax.tensor.reduce import log_softmax_op, softmax_op

if TYPE_CHECKING:  # Tensor joins the mixins: candlejax.tensor sets this name at runtime (get_type_hints)
    from candlejax.tensor import Tensor

#: ``t.backward()`` (Candle's and PyTorch's name): what to write instead
_BACKWARD_HINT = (
    "an eager tensor records no op graph, so there is no GradStore to build: write the loss as a function of"
    " the model and take grads = cj.grad(loss_fn)(model, x, y) (a pytree shaped like the model: grads.weight"
    " is the gradient of model.weight) or loss, grads = cj.value_and_grad(loss_fn)(model, x, y), or let a"
    " Candle optimizer do the step: opt.backward_step(loss_fn, model, x, y) for Candle's"
    " opt.backward_step(&loss)"
)

#: PyTorch names Candle spells differently (or that cannot work on immutable XLA arrays) -> hint
_POINTERS: dict[str, str] = {
    "type": "use .to_dtype(DType.F32) (Candle's name)",
    "logsumexp": "use .log_sum_exp(dims) (Candle's name)",
    "sort": "use .sort_last_dim(asc=True) / .arg_sort_last_dim(asc=True) (Candle sorts the last dim)",
    "argsort": "use .arg_sort_last_dim(asc=True) (Candle sorts the last dim)",
    "topk": "use .sort_last_dim(asc=False) then .narrow(-1, 0, k) (Candle has no topk)",
    "where": "use mask.where_cond(on_true, on_false) (Candle's name; the mask comes first)",
    "masked_select": "a data-dependent shape cannot be compiled by XLA; use mask.where_cond(x, other) or"
    " x.masked_fill(mask, value) to keep the shape",
    "nonzero": "a data-dependent shape cannot be compiled by XLA; use mask.where_cond(...) or do it on the"
    " host: np.nonzero(np.asarray(x))",
    "all": "use x.ne(0).min_all() (Candle has no all; comparisons return u8)",
    "any": "use x.ne(0).max_all() (Candle has no any; comparisons return u8)",
    "bool": "Candle has no bool dtype; comparisons return u8 masks: use x.ne(0)",
    "new_zeros": "use Tensor.zeros(shape, x.dtype, x.device) or x.zeros_like()",
    "new_ones": "use Tensor.ones(shape, x.dtype, x.device) or x.ones_like()",
    "new_tensor": "use Tensor.new(data, x.device)",
    "cuda": "use .to_device(Device.new_cuda(0)) (Candle's name)",
    "requires_grad_": "trainable parameters are candlejax.nn.Var; gradients come from cj.value_and_grad",
    "zero_": "tensors are immutable XLA arrays: x = x.zeros_like()",
    "fill_": "tensors are immutable XLA arrays: x = x.full_like(value)",
    "prod": "Candle has no prod; use .log().sum(dims).exp() for positive values or np.prod on the host",
    "clip": "use .clamp(min, max) (Candle's name)",
    "square": "use .sqr() (Candle's name)",
    "reciprocal": "use .recip() (Candle's name)",
    "rsqrt": "use .sqrt().recip() (Candle has no rsqrt)",
    "bmm": "use .matmul(y) (Candle's matmul is batched)",
    "expand_as": "use .broadcast_as(y.shape) (Candle's name)",
    "unbind": "use [x.get_on_dim(dim, i) for i in range(x.dim(dim))] (Candle has no unbind)",
    "logical_not": "masks are u8 (there is no bool dtype): use m.eq(0)",
    "is_floating_point": "use x.dtype.is_float() (Candle's DType::is_float)",
    "element_size": "use x.dtype.size_in_bytes() (Candle's DType::size_in_bytes)",
    "ndimension": "use x.rank (Candle's rank()) or x.dim()",
}


#: Candle's in-place Tensor methods, and what to write instead
_CANDLE_IN_PLACE: dict[str, str] = {
    "zero_set": "t = t.zeros_like()",
    "one_set": "t = t.ones_like()",
    "const_set": "t = t.full_like(value)",
    "inplace_op1": "apply the op and rebind: t = f(t) (a jax function: Tensor.from_jax(f(t.jax)))",
    "inplace_op2": "apply the op and rebind: t = f(t, other)",
    "inplace_op3": "apply the op and rebind: t = f(t, a, b)",
}

#: Candle's storage, op-graph and id accessors, which have no counterpart on an XLA array -> hint
_CANDLE_INTERNAL: dict[str, str] = {
    "id": "candlejax tensors carry no TensorId (there is no op graph or GradStore to key); use the Tensor"
    " itself as a dict key (Tensors hash by identity) or Python's id(t)",
    "track_op": "candlejax records no op graph: gradients come from jax (cj.value_and_grad(fn)(model, ...));"
    " trainable tensors are Vars (t.is_variable())",
    "storage_and_layout": "there are no storages: the values are t.jax (a jax.Array) or t.numpy(), the layout"
    " t.layout() (always C-contiguous)",
    "strided_index": "XLA arrays are always C-contiguous: read the values in order with"
    " t.flatten_all().to_vec1() or t.numpy().ravel()",
    "strided_blocks": "XLA arrays are always C-contiguous (one block of t.elem_count() elements at offset 0):"
    " read the values with t.flatten_all().to_vec1() or t.numpy().ravel()",
    "sorted_nodes": "candlejax records no op graph to sort: gradients come from jax"
    " (cj.value_and_grad(fn)(model, ...))",
}

#: Candle's custom-op calls (``CustomOp1/2/3``): the op is a JAX function in candlejax
_CANDLE_CUSTOM_OP = frozenset(f"apply_op{n}{sfx}" for n in (1, 2, 3) for sfx in ("", "_no_bwd", "_arc"))


class TorchCompatMixin(TensorBase):
    """``x.T``, ``x.size()``, ``x.view(...)``, ``x.float()``, ``x.softmax(dim)`` ... as in PyTorch."""

    __slots__ = ()

    @property
    def T(self) -> Tensor:  # noqa: N802 - PyTorch's / numpy's name
        """All dims reversed (PyTorch/numpy ``x.T``); Candle: ``x.t()`` for the last two dims."""
        r = self.rank
        return self if r < 2 else self.permute(tuple(range(r - 1, -1, -1)))  # type: ignore[attr-defined]

    @property
    def mT(self) -> Tensor:  # noqa: N802 - PyTorch's name
        """The last two dims swapped (PyTorch ``x.mT``); Candle: ``x.t()`` (rank < 2 raises)."""
        return self.t()  # type: ignore[attr-defined]

    def size(self, dim: Any = None) -> Any:
        """PyTorch ``x.size()`` (the shape tuple) / ``x.size(d)`` (one dim); Candle: ``dims()`` / ``dim(d)``."""
        return self.shape if dim is None else self.dim(dim)

    def numel(self) -> int:
        """PyTorch ``x.numel()``; Candle: ``elem_count()``."""
        return self.elem_count()

    def view(self, *shape: Any) -> Tensor:
        """PyTorch ``x.view(2, -1)``: ``reshape`` (XLA arrays have no views; the values are the same)."""
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = shape[0]
        return self.reshape(shape)  # type: ignore[attr-defined]

    def float(self) -> Tensor:
        """PyTorch ``x.float()``: ``to_dtype(DType.F32)``."""
        return self.to_dtype(DType.F32)  # type: ignore[attr-defined]

    def half(self) -> Tensor:
        """PyTorch ``x.half()``: ``to_dtype(DType.F16)``."""
        return self.to_dtype(DType.F16)  # type: ignore[attr-defined]

    def bfloat16(self) -> Tensor:
        """PyTorch ``x.bfloat16()``: ``to_dtype(DType.BF16)``."""
        return self.to_dtype(DType.BF16)  # type: ignore[attr-defined]

    def double(self) -> Tensor:
        """PyTorch ``x.double()``: ``to_dtype(DType.F64)`` (needs ``candlejax.enable_x64()``)."""
        return self.to_dtype(DType.F64)  # type: ignore[attr-defined]

    def int(self) -> Tensor:
        """PyTorch ``x.int()``: ``to_dtype(DType.I32)``."""
        return self.to_dtype(DType.I32)  # type: ignore[attr-defined]

    def long(self) -> Tensor:
        """PyTorch ``x.long()``: ``to_dtype(DType.I64)`` (needs ``candlejax.enable_x64()``)."""
        return self.to_dtype(DType.I64)  # type: ignore[attr-defined]

    def softmax(self, dim: Any) -> Tensor:
        """PyTorch ``x.softmax(dim)``; Candle: ``candle_nn::ops::softmax(&x, dim)``."""
        check_float("softmax", self)
        return wrap(softmax_op(self._a, axis=resolve_dim(dim, self.shape, "softmax")))

    def log_softmax(self, dim: Any) -> Tensor:
        """PyTorch ``x.log_softmax(dim)``; Candle: ``candle_nn::ops::log_softmax(&x, dim)``."""
        check_float("log_softmax", self)
        return wrap(log_softmax_op(self._a, axis=resolve_dim(dim, self.shape, "log_softmax")))

    def mm(self, other: Any) -> Tensor:
        """PyTorch ``x.mm(y)`` (2-D only); Candle: ``matmul``."""
        if self.rank != 2 or getattr(other, "rank", None) != 2:
            raise errors.Msg("mm: both tensors must be 2-D; use .matmul (batched) or .broadcast_matmul")
        return self.matmul(other)  # type: ignore[attr-defined]

    def amax(self, dim: Any, keepdim: bool = False) -> Tensor:
        """PyTorch ``x.amax(dim, keepdim)``: Candle's ``max`` / ``max_keepdim`` (one dim)."""
        return self.max_keepdim(dim) if keepdim else self.max(dim)  # type: ignore[attr-defined]

    def amin(self, dim: Any, keepdim: bool = False) -> Tensor:
        """PyTorch ``x.amin(dim, keepdim)``: Candle's ``min`` / ``min_keepdim`` (one dim)."""
        return self.min_keepdim(dim) if keepdim else self.min(dim)  # type: ignore[attr-defined]

    def type_as(self, other: Any) -> Tensor:
        """PyTorch ``x.type_as(other)``: ``to_dtype(other.dtype)``."""
        if not isinstance(other, TensorBase):
            raise errors.Msg(f"type_as: expected a Tensor, got {type(other).__name__}; use .to_dtype(dtype)")
        return self.to_dtype(other.dtype)  # type: ignore[attr-defined]

    def clone(self) -> Tensor:
        """PyTorch ``x.clone()``: Candle's ``copy()``."""
        return self.copy()  # type: ignore[attr-defined]

    @staticmethod
    def from_storage(*args: Any, **kwargs: Any) -> NoReturn:
        """Candle ``Tensor::from_storage(storage, shape, op, is_variable)``: there are no storages here,
        so this raises, naming ``Tensor.new`` / ``Tensor.from_vec`` / ``Tensor.from_jax``."""
        raise errors.CandleInternalName(
            "from_storage",
            "there are no storages: build a Tensor with Tensor.new(data, device), Tensor.from_vec or"
            " Tensor.from_jax(array)",
        )

    def is_variable(self) -> bool:
        """Candle ``is_variable()``: ``True`` for a trainable :class:`candlejax.nn.Var`, else ``False``."""
        return False

    def cpu(self) -> Tensor:
        """PyTorch ``x.cpu()``: ``to_device(Device.Cpu)``."""
        return self.to_device(Device.Cpu)  # type: ignore[attr-defined]

    def __setitem__(self, index: Any, value: Any) -> NoReturn:
        """PyTorch's ``t[i] = v``: tensors are immutable, so this raises, naming ``slice_assign`` /
        ``where_cond`` / ``masked_fill``."""
        raise errors.ItemAssignment()

    if not TYPE_CHECKING:  # a failed lookup raises: type checkers flag a misspelt name instead of typing it Any

        def __getattr__(self, name: str) -> Any:
            # only reached when normal lookup fails: PyTorch names with a Candle spelling get a pointer
            if name in _CANDLE_IN_PLACE:
                raise errors.CandleInPlaceName(name, _CANDLE_IN_PLACE[name])
            if name in _CANDLE_CUSTOM_OP:
                raise errors.CustomOpName(name)
            if name == "backward":
                raise errors.NoBackward(_BACKWARD_HINT)
            if name in _CANDLE_INTERNAL:
                raise errors.CandleInternalName(name, _CANDLE_INTERNAL[name])
            hint = _POINTERS.get(name)
            if hint is None and name.endswith("_") and not name.startswith("_"):
                hint = f"tensors are immutable XLA arrays, there are no in-place ops: x = x.{name[:-1]}(...)"
            if hint is None:
                raise AttributeError(f"'Tensor' object has no attribute {name!r}")
            raise errors.TorchName(name, hint)
