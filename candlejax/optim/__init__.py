"""``candlejax.optim``: Candle's optimizers (``SGD``, ``AdamW``) and any optax transform.

>>> import jax.numpy as jnp, candlejax as cj
>>> opt = cj.optim.SGD(0.1)
>>> model = {"w": cj.Tensor._wrap(jnp.ones(2))}
>>> state = opt.init(model)
>>> x = cj.Tensor._wrap(jnp.ones(2))
>>> model, state, loss = opt.backward_step(lambda m, x: (m["w"].jax * x.jax).sum(), model, state, x)
>>> model["w"].jax.tolist()
[0.8999999761581421, 0.8999999761581421]

Candle -> candlejax, bound (Candle's way) / functional (JAX's way):

* ``SGD::new(vars, lr)`` (PyTorch ``SGD(params, lr)``): ``SGD(varmap.all_vars(), lr)`` /
  ``SGD(lr)`` and ``state = opt.init(model)``; ``AdamW::new(vars, p)``: ``AdamW(varmap.all_vars(), p)``
  / ``AdamW(p)``.
* ``opt.backward_step(&loss)`` (PyTorch ``loss.backward(); opt.step()``):
  ``loss = opt.backward_step(loss_fn, model, x, y)`` /
  ``model, state, loss = opt.backward_step(loss_fn, model, state, x, y)``.
* ``opt.step(&grads)``: ``opt.step(grads)`` / ``model, state = opt.step(model, state, grads)``.
* ``set_learning_rate(lr)``: the same; schedules (optax's, as ``lr``) and ``clip_grad_norm=`` are
  extensions (PyTorch's ``lr_scheduler``, ``clip_grad_norm_``).
"""

from optax import (
    chain,
    clip,
    clip_by_global_norm,
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)

from candlejax.optim._optimizer import SGD, AdamW, NanLoss, Optimizer, OptState, ParamsAdamW, from_optax
from candlejax.optim._params import is_var, split

__all__ = [
    "SGD",
    "AdamW",
    "NanLoss",
    "OptState",
    "Optimizer",
    "ParamsAdamW",
    "chain",
    "clip",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "from_optax",
    "is_var",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "split",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
