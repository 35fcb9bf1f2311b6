"""Ready tensor-parallel rules (Megatron-style) for the models in ``candlejax.models``.

Written once for the shared layer kinds, keyed by the Hugging Face parameter names:

* column-parallel (output features split over ``"model"``): attention q/k/v projections (so each
  device holds whole heads), the MLP's gate/up (or intermediate) projection, their biases;
* row-parallel (input features split): the attention output projection and the MLP's down
  (output) projection, so each block needs one all-reduce after attention and one after the MLP;
* the LM head is split over the vocabulary; embeddings and norms are replicated;
* a LLaMA KV cache (``k``/``v`` of shape ``(layers, B, kv_heads, S, D)``) is split over heads.

The ``"model"`` axis size must divide the number of (key/value) heads and the MLP width; a rule
that does not fit raises naming the parameter. The same rules place quantised weights (a
``BlockedWeight`` or ``QTensor`` is named like the dense weight it stands for, e.g. a GGUF model's
``layers.self_attn.q_proj.weight``); a row-parallel split must fall on block boundaries.
Megatron-LM: ``ColumnParallelLinear`` / ``RowParallelLinear``.
"""

from __future__ import annotations

from jax.sharding import Mesh

from candlejax.distributed._mesh import ShardingError
from candlejax.distributed._shard import Rules

COLUMN = ("model", None)  # (out, in) weight: output features split
ROW = (None, "model")  # (out, in) weight: input features split
BIAS = ("model",)

llama_tp_rules = Rules(
    {
        r"self_attn\.(q|k|v)_proj\.weight$": COLUMN,
        r"self_attn\.(q|k|v)_proj\.bias$": BIAS,
        r"self_attn\.o_proj\.weight$": ROW,
        r"mlp\.(gate|up)_proj\.weight$": COLUMN,
        r"mlp\.down_proj\.weight$": ROW,
        r"^lm_head\.weight$": COLUMN,
        r"^(k|v)$": (None, None, "model", None, None),  # Cache.k / Cache.v: kv heads
    },
    name="llama_tp_rules",
    require_each=False,
)


def check_heads(mesh: Mesh, num_heads: int, num_kv_heads: int, axis: str = "model",
                params: tuple[str, str] = ("model.layers.*.self_attn.q_proj.weight",
                                           "model.layers.*.self_attn.k_proj.weight")) -> None:  # fmt: skip
    """Raise unless ``axis`` of ``mesh`` divides the attention and key/value heads (each device
    holds whole heads under :data:`llama_tp_rules`); no-op for a mesh without ``axis``.
    ``params``: the names of the query and key weights in the checkpoint, for the message."""
    if axis not in mesh.shape:
        return
    n = int(mesh.shape[axis])
    for count, what, param in ((num_heads, "attention heads", params[0]), (num_kv_heads, "key/value heads", params[1])):
        if int(count) % n:
            fits = [d for d in range(1, int(count) + 1) if int(count) % d == 0]
            raise ShardingError(
                f"cannot split the {count} {what} of {param} over mesh axis {axis!r}"
                f" of size {n} (each device holds whole heads); use a mesh whose {axis!r} axis divides {count}"
                f" (one of {fits})"
            )


bert_tp_rules = Rules(
    {
        r"attention\.self\.(query|key|value)\.weight$": COLUMN,
        r"attention\.self\.(query|key|value)\.bias$": BIAS,
        r"attention\.output\.dense\.weight$": ROW,
        r"intermediate\.dense\.weight$": COLUMN,
        r"intermediate\.dense\.bias$": BIAS,
        r"layer\.\d+\.output\.dense\.weight$": ROW,
    },
    name="bert_tp_rules",
    require_each=False,
)

__all__ = ["BIAS", "COLUMN", "ROW", "Rules", "bert_tp_rules", "check_heads", "llama_tp_rules"]
