"""nn.HostState: host-side state (a stateful forward's cache) that leaves the pytree and jit caches alone."""

from __future__ import annotations

import jax
import numpy as np

from candlejax import Tensor
from candlejax.nn import HostState, Linear


def test_host_state_is_per_module_object_and_static():
    lin = Linear(Tensor(np.ones((2, 3), np.float32)))
    st = HostState.of(lin)
    st.value = "cache of lin"
    assert HostState.of(lin) is st
    copy = jax.tree_util.tree_map(lambda x: x, lin)  # shares the attribute object
    assert HostState.of(copy) is not st and HostState.of(copy).value is None and HostState.of(lin) is st
    # a state's contents do not change the tree structure: a jitted function is not retraced
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(1)
        return m.forward(x)

    x = Tensor(np.ones((1, 3), np.float32))
    f(lin, x)
    st.value = "another cache"
    f(lin, x)
    assert len(traces) == 1
