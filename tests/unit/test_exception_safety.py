"""Stateful objects after an error: the next correct call gives the correct result (or fails clearly),
never a silently wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from candlejax import Device, DType, errors, nn


def _varmap() -> nn.VarMap:
    vm = nn.VarMap()
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    vb.get((2, 3), "a")
    vb.get((4,), "b")
    return vm


def _values(vm: nn.VarMap) -> dict[str, np.ndarray]:
    return {k: np.asarray(v).copy() for k, v in vm.data().items()}


@pytest.mark.parametrize(
    "b",
    [np.zeros((5,), np.float32), None],  # a shape mismatch at the second tensor; the second tensor missing
    ids=["shape", "missing"],
)
def test_varmap_load_failing_at_a_later_tensor_sets_nothing(tmp_path, b):
    # Candle's VarMap::load (candle-nn/src/var_map.rs) sets the Vars in the HashMap's order, so what a
    # failing load leaves set is arbitrary; here the names and shapes are checked from the header first
    vm = _varmap()
    before = _values(vm)
    tensors = {"a": np.full((2, 3), 7.0, np.float32)}
    if b is not None:
        tensors["b"] = b
    save_file(tensors, tmp_path / "w.safetensors")
    with pytest.raises(errors.VarMapError, match="error setting b "):
        vm.load(tmp_path / "w.safetensors")
    for k, v in _values(vm).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # a good file then loads every Var
    save_file({"a": np.full((2, 3), 7.0, np.float32), "b": np.ones(4, np.float32)}, tmp_path / "ok.safetensors")
    vm.load(tmp_path / "ok.safetensors")
    np.testing.assert_array_equal(np.asarray(vm.data()["a"]), np.full((2, 3), 7.0))
    np.testing.assert_array_equal(np.asarray(vm.data()["b"]), np.ones(4))


def _bound_mlp(seed: int):
    import candlejax.optim as optim
    from candlejax import Tensor

    vm = nn.VarMap(seed=seed)
    vb = nn.VarBuilder.from_varmap(vm, DType.F32, Device.Cpu)
    model = nn.seq().add(nn.linear(3, 4, vb.pp("l1"))).add_fn(lambda t: t.relu()).add(nn.linear(4, 2, vb.pp("l2")))
    opt = optim.AdamW(vm.all_vars(), optim.ParamsAdamW(lr=0.05))
    x = Tensor(np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32))
    y = Tensor(np.arange(8, dtype=np.uint32) % 2)
    return vm, model, opt, x, y


def _ce(m, x, y):
    return nn.loss.cross_entropy(m.forward(x), y)


@pytest.mark.parametrize("what", ["batcher", "numpy_rngs"])
def test_checkpoint_restore_that_raises_leaves_bound_vars_and_optimizer_alone(tmp_path, what):
    from candlejax import checkpoint
    from candlejax.data import Batcher

    _, model, opt, x, y = _bound_mlp(1)
    opt.backward_step(_ce, model, x, y)
    path = tmp_path / "ck.safetensors"
    checkpoint.save(path, model, step=1, optimizer=opt)  # no batcher position, no numpy generators
    vm2, model2, opt2, x, y = _bound_mlp(2)
    before = _values(vm2)
    extra = {"batcher": Batcher((np.zeros((4, 1), np.float32),), 2)} if what == "batcher" else {
        "numpy_rngs": {"aug": np.random.default_rng(0)}}
    with pytest.raises(checkpoint.CheckpointError, match="holds no"):
        checkpoint.restore(path, model2, optimizer=opt2, **extra)
    for k, v in _values(vm2).items():  # the failed restore set nothing: the Vars and the optimizer as they were
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert opt2.state is None or int(opt2.state.step) == 0


INST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def chat_model():
    from sentencepiece_fixture import spm_gguf_metadata

    from candlejax.models import llama
    from candlejax.tokenizer import Tokenizer

    pieces = ["▁", "t", "h", "e", "w", "o", "r", "l", "d", "▁t", "he", "▁the", "▁w", "or", "ld", "▁world"]
    tok = Tokenizer.from_gguf_metadata(spm_gguf_metadata(pieces, **{"tokenizer.chat_template": INST}))
    cfg = llama.Config(vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    vb = nn.VarBuilder.from_varmap(nn.VarMap(seed=0), DType.F32, Device.Cpu)
    return llama.Llama.load(vb, cfg, strict=False), tok


def _interrupt_second_step(monkeypatch, gen_mod, run) -> None:
    """Run ``run()`` with a KeyboardInterrupt at the second compiled step call (between the prefill's
    first and second chunk), then restore the step programs."""
    real, calls = gen_mod.StepProgram.__call__, []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(gen_mod.StepProgram, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(gen_mod.StepProgram, "__call__", real)


@pytest.mark.parametrize("how", ["interrupted_prefill", "no_new_tokens"])
def test_chat_turn_whose_prompt_did_not_reach_the_cache(chat_model, monkeypatch, how):
    """A turn stopped in its chunked prefill (Ctrl-C), or run with max_new_tokens=0, left only part (or
    none) of its message in the cache while the conversation recorded all of it: the next turn fed only
    its own message, and the model never saw the first one. transformers feeds the whole rendered
    conversation; the next turn's tokens are those of generating after it."""
    import importlib

    from candlejax.pipelines import TextGeneration

    gen_mod = importlib.import_module("candlejax.generation.generate")
    model, tok = chat_model
    m1, m2 = " ".join(["the world"] * 30), "world the"  # m1: more than one 32-token prefill chunk
    tg = TextGeneration(model, tok, eos_token_ids=[])
    tg.prefill_buckets = True
    if how == "interrupted_prefill":
        _interrupt_second_step(monkeypatch, gen_mod, lambda: "".join(tg.chat_turn(m1, 4)))
    else:
        assert "".join(tg.chat_turn(m1, 0)) == ""
    "".join(tg.chat_turn(m2, 6))
    conv = [{"role": "user", "content": m1}, {"role": "assistant", "content": ""}, {"role": "user", "content": m2}]
    assert tg.messages[:3] == conv
    ids = tok.apply_chat_template(conv, add_generation_prompt=True)
    assert tg.generation.tokens == list(model.generate(ids, 6, eos_token_id=[]))


@pytest.mark.parametrize("how", ["interrupted_prefill", "no_new_tokens"])
def test_stream_continuing_a_call_whose_prompt_did_not_reach_the_cache(chat_model, monkeypatch, how):
    """``stream(ids, n, continue_cache=True)`` follows the previous call's tokens: those of a call
    stopped in its prefill (or run with max_new_tokens=0) that are not in the cache are fed first."""
    import importlib

    from candlejax.pipelines import TextGeneration

    gen_mod = importlib.import_module("candlejax.generation.generate")
    model, tok = chat_model
    first = tok.encode(" ".join(["the world"] * 30), add_special_tokens=False)
    second = tok.encode(" world the", add_special_tokens=False)
    tg = TextGeneration(model, tok, eos_token_ids=[])
    tg.prefill_buckets = True
    if how == "interrupted_prefill":
        _interrupt_second_step(monkeypatch, gen_mod, lambda: "".join(tg.stream(first, 4)))
    else:
        assert "".join(tg.stream(first, 0)) == ""
    "".join(tg.stream(second, 6, continue_cache=True))
    assert tg.generation.tokens == list(model.generate([*first, *second], 6, eos_token_id=[]))
    assert tg.history == [*first, *second, *tg.generation.tokens][: tg.pos]


def test_generation_interrupted_while_its_next_step_runs_holds_only_the_tokens_handed_out(chat_model, monkeypatch):
    """With ``pipeline=True`` the step after token k is dispatched before token k reaches the host; a
    Ctrl-C while waiting for it left ``g.pos`` counting token k, which the caller never saw, so a
    continuation from ``g.cache`` at ``start_pos=g.pos`` attended to it. Continuing must give what
    generating after the tokens handed out gives."""
    import importlib

    from candlejax.generation import generate
    from candlejax.models import llama

    gen_mod = importlib.import_module("candlejax.generation.generate")
    model, _ = chat_model
    prompt = [5, 9, 22, 7, 3]
    g = generate(llama.step, model, model.new_cache(1, 64), prompt, 8, pipeline=True)
    real, calls = gen_mod._host_token, []

    def interrupted(tok):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(tok)

    monkeypatch.setattr(gen_mod, "_host_token", interrupted)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for t in g:
            got.append(t)
    monkeypatch.setattr(gen_mod, "_host_token", real)
    assert got == g.tokens and len(got) == 3 and g.pos == len(prompt) + len(got)
    more = list(generate(llama.step, model, g.cache, g.continuation([11]), 4, start_pos=g.pos, pipeline=True))
    ref = list(generate(llama.step, model, model.new_cache(1, 64), [*prompt, *got, 11], 4))
    assert more == ref
