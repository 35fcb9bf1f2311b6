"""candle-nn's recurrent layers, ported line by line from candle-nn/tests/rnn.rs (huggingface/candle).

The expected numbers are Candle's (checked there against PyTorch's ``nn.LSTM`` / ``nn.GRU``). State
fields are attributes here (``state.h``, ``state.c``; Candle also has the ``h()`` / ``c()`` accessors),
as docs/differences/nn.md says. The ``seq`` tests run the same inputs through the ``RNN`` trait's
``seq`` (Candle's default: ``step`` repeated from ``zero_state``), so they end in the same states.
"""

from __future__ import annotations

import candlejax as cj
import candlejax.nn as candle_nn
from candlejax import Device, DType, Tensor
from candlejax.testing import to_vec2_round

INPUTS = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]


def _lstm_vb(cpu):
    w_ih = Tensor.arange(0.0, 24.0, cpu).reshape((12, 2))
    w_ih = w_ih.cos()
    w_hh = Tensor.arange(0.0, 36.0, cpu).reshape((12, 3))
    w_hh = w_hh.sin()
    b_ih = Tensor.new([-1.0, 1.0, -0.5, 2.0, -1.0, 1.0, -0.5, 2.0, -1.0, 1.0, -0.5, 2.0], cpu)
    b_hh = b_ih.cos()
    tensors = {
        "weight_ih_l0": w_ih,
        "weight_hh_l0": w_hh,
        "bias_ih_l0": b_ih,
        "bias_hh_l0": b_hh,
    }
    return candle_nn.VarBuilder.from_tensors(tensors, DType.F32, cpu)


def _gru_vb(cpu):
    w_ih = Tensor.arange(0.0, 18.0, cpu).reshape((9, 2))
    w_ih = w_ih.cos()
    w_hh = Tensor.arange(0.0, 27.0, cpu).reshape((9, 3))
    w_hh = w_hh.sin()
    b_ih = Tensor.new([-1.0, 1.0, -0.5, 2.0, -1.0, 1.0, -0.5, 2.0, -1.0], cpu)
    b_hh = b_ih.cos()
    tensors = {
        "weight_ih_l0": w_ih,
        "weight_hh_l0": w_hh,
        "bias_ih_l0": b_ih,
        "bias_hh_l0": b_hh,
    }
    return candle_nn.VarBuilder.from_tensors(tensors, DType.F32, cpu)


# PyTorch: nn.LSTM(2, 3, 1) with these weights, fed [[x, x/2]] for x in 3 1 4 1 5 9 2, ends in
# h = [[0.9919, 0.1738, -0.1451]], c = [[5.7250, 0.4458, -0.2908]].
def test_lstm():
    cpu = Device.Cpu
    vb = _lstm_vb(cpu)
    lstm = candle_nn.lstm(2, 3, candle_nn.LSTMConfig.default(), vb)
    state = lstm.zero_state(1)
    for inp in INPUTS:
        inp = Tensor.new([[inp, inp * 0.5]], cpu)
        state = lstm.step(inp, state)
    # Candle: state.h() / state.c(); the fields are attributes here (docs/differences/nn.md)
    h = state.h
    c = state.c
    assert to_vec2_round(h, 4) == [[0.9919, 0.1738, -0.1451]]
    assert to_vec2_round(c, 4) == [[5.725, 0.4458, -0.2908]]


# PyTorch: nn.GRU(2, 3, 1) with these weights ends in h = [[0.0579, 0.8836, -0.9991]].
def test_gru():
    cpu = Device.Cpu
    vb = _gru_vb(cpu)
    gru = candle_nn.gru(2, 3, candle_nn.GRUConfig.default(), vb)
    state = gru.zero_state(1)
    for inp in INPUTS:
        inp = Tensor.new([[inp, inp * 0.5]], cpu)
        state = gru.step(inp, state)
    h = state.h
    assert to_vec2_round(h, 4) == [[0.0579, 0.8836, -0.9991]]


def _seq_input(cpu):
    # (batch 1, seq_len 7, features 2): the step inputs above, in order
    return Tensor.new([[[x, x * 0.5] for x in INPUTS]], cpu)


def test_lstm_seq():
    cpu = Device.Cpu
    lstm = candle_nn.lstm(2, 3, candle_nn.LSTMConfig.default(), _lstm_vb(cpu))
    states = lstm.seq(_seq_input(cpu))
    assert len(states) == 7
    assert to_vec2_round(states[-1].h, 4) == [[0.9919, 0.1738, -0.1451]]
    assert to_vec2_round(states[-1].c, 4) == [[5.725, 0.4458, -0.2908]]
    # the first state is one step from zero_state
    first = lstm.step(Tensor.new([[3.0, 1.5]], cpu), lstm.zero_state(1))
    assert to_vec2_round(states[0].h, 4) == to_vec2_round(first.h, 4)
    # seq_init from the state after the first step gives the remaining six states
    rest = lstm.seq_init(_seq_input(cpu).narrow(1, 1, 6), first)
    assert to_vec2_round(rest[-1].h, 4) == [[0.9919, 0.1738, -0.1451]]
    # LSTM::states_to_tensor stacks the h of every state on dim 1: (B, T, H)
    ys = lstm.states_to_tensor(states)
    assert ys.dims() == (1, 7, 3)
    assert cj.testing.to_vec1_round(ys.i((0, 6)), 4) == [0.9919, 0.1738, -0.1451]


def test_gru_seq():
    cpu = Device.Cpu
    gru = candle_nn.gru(2, 3, candle_nn.GRUConfig.default(), _gru_vb(cpu))
    states = gru.seq(_seq_input(cpu))
    assert len(states) == 7
    assert to_vec2_round(states[-1].h, 4) == [[0.0579, 0.8836, -0.9991]]
    # GRU::states_to_tensor concatenates on dim 1: (B, T * H)
    ys = gru.states_to_tensor(states)
    assert ys.dims() == (1, 21)
    assert to_vec2_round(ys.narrow(1, 18, 3), 4) == [[0.0579, 0.8836, -0.9991]]


def test_rnn_trait():
    # rnn.rs: `use candle_nn::RNN;` brings zero_state / step / seq / seq_init / states_to_tensor
    from candlejax.nn import RNN

    cpu = Device.Cpu
    lstm = candle_nn.lstm(2, 3, candle_nn.LSTMConfig.default(), _lstm_vb(cpu))
    gru = candle_nn.gru(2, 3, candle_nn.GRUConfig.default(), _gru_vb(cpu))
    assert isinstance(lstm, RNN)
    assert isinstance(gru, RNN)


# ------------------------------------------------------------------------------------------------
# Beyond Candle's tests: the trait's default seq / seq_init, LSTM::new / GRU::new, config(),
# LSTMState::new, jax.jit.
# ------------------------------------------------------------------------------------------------
def test_rnn_trait_default_seq_loops_step():
    from candlejax.nn import RNN

    class Accumulate(candle_nn.Module, RNN):
        """state <- state + input: seq is a running sum."""

        def zero_state(self, batch_dim):
            return Tensor.zeros((batch_dim, 2), DType.F32, Device.Cpu)

        def step(self, input, state):
            return state + input

        def states_to_tensor(self, states):
            return Tensor.stack(states, 1)

    cell = Accumulate()
    states = cell.seq(_seq_input(Device.Cpu))
    assert len(states) == 7
    assert to_vec2_round(states[-1], 4) == [[sum(INPUTS), sum(INPUTS) * 0.5]]
    start = Tensor.new([[100.0, 0.0]], Device.Cpu)
    rest = cell.seq_init(_seq_input(Device.Cpu).narrow(1, 5, 2), start)
    assert to_vec2_round(rest[-1], 4) == [[111.0, 5.5]]
    assert cell.states_to_tensor(states).dims() == (1, 7, 2)


def test_new_config_and_state_new():
    cpu = Device.Cpu
    cfg = candle_nn.LSTMConfig.default()
    lstm = candle_nn.LSTM.new(2, 3, cfg, _lstm_vb(cpu))
    assert lstm.config() == cfg
    assert candle_nn.lstm(2, 3, cfg, _lstm_vb(cpu)).config() == cfg
    state = candle_nn.LSTMState.new(Tensor.zeros((1, 3), DType.F32, cpu), Tensor.zeros((1, 3), DType.F32, cpu))
    for inp in INPUTS:
        state = lstm.step(Tensor.new([[inp, inp * 0.5]], cpu), state)
    assert to_vec2_round(state.h, 4) == [[0.9919, 0.1738, -0.1451]]

    gcfg = candle_nn.GRUConfig.default()
    gru = candle_nn.GRU.new(2, 3, gcfg, _gru_vb(cpu))
    assert gru.config() == gcfg
    assert to_vec2_round(gru.seq(_seq_input(cpu))[-1].h, 4) == [[0.0579, 0.8836, -0.9991]]

    # built from tensors: the default config (without biases when it has none)
    w = lstm.w_ih
    assert candle_nn.LSTM(w, lstm.w_hh, None, None, 3).config() == candle_nn.LSTMConfig.default_no_bias()
    assert candle_nn.LSTM(w, lstm.w_hh, lstm.b_ih, lstm.b_hh, 3).config() == cfg


def test_rnn_under_jit():
    import jax

    cpu = Device.Cpu
    lstm = candle_nn.LSTM.new(2, 3, candle_nn.LSTMConfig.default(), _lstm_vb(cpu))

    @jax.jit
    def last_h(model, xs):
        return model.seq(xs)[-1].h

    assert to_vec2_round(last_h(lstm, _seq_input(cpu)), 4) == [[0.9919, 0.1738, -0.1451]]
