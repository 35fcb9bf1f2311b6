"""Sharded training and tensor-parallel inference on 8 simulated CPU devices.

Run by test_distributed.py in a child process started with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must precede JAX's start-up, so these
cases never share a process with the rest of the suite).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import candlejax as cj
from candlejax import Device, DType, Tensor
from candlejax.demo import Cnn, Mlp, loss_fn
from candlejax.distributed import ShardingError
from candlejax.nn import VarBuilder, VarMap

_NEED = "needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason=_NEED)

STEPS = 4


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n).astype(np.uint32)


def _train(cls, mesh=None, rules=None, steps=STEPS, batch=16, model=None, state=None, opt=None, batcher=None):
    if model is None:
        model = cls(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
        if mesh is not None:
            model = cj.distributed.shard(model, mesh, rules)
    opt = opt or cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-2))
    state = opt.init(model) if state is None else state
    batcher = batcher or cj.data.Batcher(_data(), batch_size=batch, shuffle=True, seed=1, mesh=mesh)
    losses = []
    while len(losses) < steps:
        for x, y in batcher:
            model, state, loss = opt.backward_step(loss_fn, model, state, x, y)
            losses.append(float(np.asarray(loss)))
            if len(losses) == steps:
                break
    return model, state, losses, opt, batcher


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model.named_vars().items()}


@pytest.fixture(scope="module")
def single():
    return {name: _train(cls) for name, cls in (("mlp", Mlp), ("cnn", Cnn))}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("rules", ["replicate", "fsdp"])
def test_sharded_training_matches_one_device(single, name, rules):
    axes = {"data": 8} if rules == "replicate" else {"data": 4, "model": 2}
    mesh = cj.distributed.mesh(axes)
    model, state, losses, opt, _ = _train({"mlp": Mlp, "cnn": Cnn}[name], mesh, rules)
    ref_model, _, ref_losses, _, _ = single[name]
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)
    w, rw = _weights(model), _weights(ref_model)
    assert set(w) == set(rw)
    for k in w:
        np.testing.assert_allclose(w[k], rw[k], rtol=1e-4, atol=2e-6, err_msg=k)
    specs = cj.distributed.specs(model)
    if rules == "fsdp":
        assert any(s is not None and "data" in tuple(s) for s in specs.values()), specs
        # the optimizer moments follow their parameters' layout
        first = model.named_vars()["first.weight" if name == "mlp" else "fc1.weight"]._a.sharding
        assert any(getattr(a, "sharding", None) == first for a in jax.tree_util.tree_leaves(state))
    else:
        assert all(s == jax.sharding.PartitionSpec() for s in specs.values()), specs
    # every step ran one compiled program
    (fn,) = opt._compiled.values()
    assert fn._cache_size() == 1


def test_bound_optimizer_on_a_sharded_model_matches_one_device(single):
    """Candle's form (an optimizer built with the Vars, updating them in place) on an FSDP model:
    its state is laid out like the parameters (moments split, step count replicated)."""
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    varmap = VarMap(seed=0)
    model = cj.distributed.shard(Mlp(VarBuilder.from_varmap(varmap, DType.F32, Device.Cpu)), mesh, "fsdp")
    assert cj.distributed.specs(model)["first.weight"] == jax.sharding.PartitionSpec("data", None)
    x, y = cj.distributed.shard_batch((Tensor.new(_data()[0][:16]), Tensor.new(_data()[1][:16])), mesh)
    with pytest.raises(cj.errors.OptimizerUsage, match=r"shard returns a copy with new Vars.*named_vars"):
        cj.optim.AdamW(varmap.all_vars()).backward_step(loss_fn, model, x, y)  # the unsharded model's Vars
    opt = cj.optim.AdamW(list(model.named_vars().values()), cj.optim.ParamsAdamW(lr=1e-2))
    batcher = cj.data.Batcher(_data(), batch_size=16, shuffle=True, seed=1, mesh=mesh)
    losses = []
    while len(losses) < STEPS:
        for x, y in batcher:
            losses.append(float(np.asarray(opt.backward_step(loss_fn, model, x, y))))
            if len(losses) == STEPS:
                break
    ref_model, _, ref_losses, _, _ = single["mlp"]
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=1e-6)
    for k, v in _weights(ref_model).items():
        np.testing.assert_allclose(_weights(model)[k], v, rtol=1e-4, atol=2e-6, err_msg=k)
    first = model.named_vars()["first.weight"]._a.sharding
    assert any(getattr(a, "sharding", None) == first for a in jax.tree_util.tree_leaves(opt.state))
    assert opt.state.step.sharding.spec == jax.sharding.PartitionSpec()


def test_batcher_places_batches_sharded():
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    x, y = next(iter(cj.data.Batcher(_data(), batch_size=8, mesh=mesh)))
    assert x._a.sharding.spec == jax.sharding.PartitionSpec("data", None)
    assert len(x._a.addressable_shards) == 8 and x._a.addressable_shards[0].data.shape == (2, 64)
    np.testing.assert_array_equal(np.asarray(x), _data()[0][:8])
    np.testing.assert_array_equal(np.asarray(y), _data()[1][:8])


def test_sharded_checkpoint_resume_is_bit_identical(tmp_path):
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    full_model, _, full_losses, _, _ = _train(Mlp, mesh, "fsdp", steps=6)
    model, state, losses, opt, batcher = _train(Mlp, mesh, "fsdp", steps=3)
    path = tmp_path / "ck.safetensors"
    cj.distributed.save(path, model, state, step=3, batcher=batcher, optimizer=opt)
    # resume in a fresh sharded template
    tmpl = cj.distributed.shard(Mlp(VarBuilder.from_varmap(VarMap(seed=5), DType.F32, Device.Cpu)), mesh, "fsdp")
    opt2 = cj.optim.AdamW(cj.optim.ParamsAdamW(lr=1e-2))
    b2 = cj.data.Batcher(_data(), batch_size=16, shuffle=True, seed=1, mesh=mesh)
    ck = cj.distributed.restore(path, tmpl, optimizer=opt2, batcher=b2)
    assert cj.distributed.specs(ck.model) == cj.distributed.specs(model)
    model2, _, losses2, _, _ = _train(Mlp, steps=3, model=ck.model, state=ck.opt_state, opt=opt2, batcher=b2)
    assert losses + losses2 == full_losses
    for k, v in _weights(full_model).items():
        np.testing.assert_array_equal(_weights(model2)[k], v, err_msg=k)
    # the same file is an ordinary checkpoint: it loads into an unsharded model
    plain = Mlp(VarBuilder.from_varmap(VarMap(seed=7), DType.F32, Device.Cpu))
    ck1 = cj.checkpoint.restore(path, plain)
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(_weights(ck1.model)[k], v, err_msg=k)


def test_sharded_checkpoint_resume_with_a_bound_optimizer(tmp_path):
    """Candle's form: restore sets the template's Vars in place (on their shards) and the optimizer's
    own state, so the bound step continues the saved run exactly."""
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    batches = list(cj.data.Batcher(_data(), batch_size=16, mesh=mesh))

    def fresh(seed):
        m = cj.distributed.shard(Mlp(VarBuilder.from_varmap(VarMap(seed=seed), DType.F32, Device.Cpu)), mesh, "fsdp")
        return m, cj.optim.AdamW(list(m.named_vars().values()), cj.optim.ParamsAdamW(lr=1e-2))

    def run(m, opt, bs):
        return [float(np.asarray(opt.backward_step(loss_fn, m, x, y))) for x, y in bs]

    full_model, opt = fresh(0)
    full = run(full_model, opt, batches)
    model, opt = fresh(0)
    losses = run(model, opt, batches[:2])
    cj.distributed.save(tmp_path / "ck.safetensors", model, optimizer=opt, step=2)
    tmpl, opt2 = fresh(5)
    ck = cj.distributed.restore(tmp_path / "ck.safetensors", tmpl, optimizer=opt2)
    assert ck.step == 2 and cj.distributed.specs(tmpl) == cj.distributed.specs(model)
    np.testing.assert_array_equal(np.asarray(tmpl.first.weight), np.asarray(model.first.weight))
    assert opt2.stepped_vars == tuple(tmpl.named_vars().values())
    assert losses + run(tmpl, opt2, batches[2:]) == full
    for k, v in _weights(full_model).items():
        np.testing.assert_array_equal(_weights(tmpl)[k], v, err_msg=k)


# --------------------------------------------------------------------------- tensor parallel
LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2,
             vocab_size=256, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
             tie_word_embeddings=False)  # fmt: skip


def _llama():
    """A small LLaMA with random weights (N(0, 0.1); norm weights around 1)."""
    from candlejax.models import llama

    zero = llama.Llama.load(VarBuilder.zeros(DType.F32, Device.Cpu), llama.Config.from_dict(dict(LLAMA)))
    rng = np.random.default_rng(3)
    state = {k: ((1.0 if "norm" in k else 0.0) + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in zero.named_tensors().items()}  # fmt: skip
    return llama, zero.load_state_dict(state)


def test_tensor_parallel_llama_same_logits_and_tokens():
    llama, model = _llama()
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    tp = cj.distributed.shard(model, mesh, cj.distributed.llama_tp_rules)
    specs = cj.distributed.specs(tp)
    assert specs["model.layers.0.self_attn.q_proj.weight"] == jax.sharding.PartitionSpec("model", None)
    assert specs["model.layers.1.mlp.down_proj.weight"] == jax.sharding.PartitionSpec(None, "model")
    assert specs["model.norm.weight"] == jax.sharding.PartitionSpec()
    prompt = [1, 5, 9, 17, 33, 2]
    step = jax.jit(llama.step)
    ids = jnp.asarray([prompt], jnp.uint32)
    ref, _ = step(model, model.new_cache(1, 32), ids, jnp.int32(0))
    cache = cj.distributed.shard(model.new_cache(1, 32), mesh, cj.distributed.llama_tp_rules)
    assert cache.k.sharding.spec == jax.sharding.PartitionSpec(None, None, "model", None, None)
    got, _ = step(tp, cache, ids, jnp.int32(0))
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5)
    from candlejax.generation import generate

    want = list(generate(llama.step, model, model.new_cache(1, 32), prompt, 12))
    g = generate(llama.step, tp, cj.distributed.shard(model.new_cache(1, 32), mesh, cj.distributed.llama_tp_rules),
                 prompt, 12)  # fmt: skip
    assert list(g) == want and len(want) == 12 and len(set(want)) > 3


def test_tensor_parallel_llama_through_generate_and_forward():
    _, model = _llama()
    tp = cj.distributed.shard(model, cj.distributed.mesh({"data": 4, "model": 2}), cj.distributed.llama_tp_rules)
    prompt = [3, 1, 4, 1, 5, 9]
    want = list(model.generate(prompt, 10))
    assert list(tp.generate(prompt, 10)) == want and len(set(want)) > 3
    np.testing.assert_allclose(np.asarray(tp.forward(Tensor.new([prompt]), 0)),
                               np.asarray(model.forward(Tensor.new([prompt]), 0)), rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("axes,rules", [({"data": 2, "model": 4}, "fsdp"), ({"model": 4}, "replicate"),
                                        ({"model": 4}, "llama_tp_rules")])  # fmt: skip
def test_llama_cache_on_a_model_axis_that_does_not_divide_the_kv_heads(axes, rules):
    """2 key/value heads on a 4-way "model" axis: the cache is replicated and generation gives the
    tokens of one device (the cache used to be split by heads whatever the model's layout, and raised)."""
    _, model = _llama()
    mesh = cj.distributed.mesh(axes, jax.devices()[: int(np.prod(list(axes.values())))])
    sharded = cj.distributed.shard(model, mesh, cj.distributed.llama_tp_rules if rules == "llama_tp_rules" else rules)
    cache = sharded.new_cache(1, 32)
    assert cache.k.sharding.is_fully_replicated and len(cache.k.sharding.device_set) == mesh.devices.size
    prompt = [3, 1, 4, 1, 5, 9]
    want = list(model.generate(prompt, 8))
    assert list(sharded.generate(prompt, 8)) == want and len(set(want)) > 2
    np.testing.assert_allclose(np.asarray(sharded.forward(Tensor.new([prompt]), 0)),
                               np.asarray(model.forward(Tensor.new([prompt]), 0)), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_llama_cli_tensor_parallel(tmp_path):
    import json
    import subprocess
    import sys

    from tokenizers import Tokenizer, models, pre_tokenizers

    _, model = _llama()
    model.save_safetensors(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, "architectures": ["LlamaForCausalLM"]}))
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    outs = []
    for n in (1, 2):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        cmd = [sys.executable, "-m", "candlejax.models.llama", "generate", "--model", str(tmp_path), "--prompt",
               "w3 w1 w4 w1 w5", "-n", "8", "--quiet", "--tensor-parallel", str(n)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1] and len(set(outs[0].split()[5:])) > 2, outs


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A small random LLaMA saved as a model folder (config.json + model.safetensors)."""
    import json

    d = tmp_path_factory.mktemp("llama_tp_load")
    _llama()[1].save_safetensors(d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({**LLAMA, "architectures": ["LlamaForCausalLM"]}))
    return d


def test_llama_from_pretrained_on_mesh_places_weights_as_they_load(llama_dir, monkeypatch):
    from candlejax.models import llama
    from candlejax.nn.var_builder import SafetensorsBackend

    P, n = jax.sharding.PartitionSpec, 2
    ref = llama.Llama.from_pretrained(llama_dir)
    mesh = cj.distributed.mesh({"model": n}, jax.devices()[:n])

    def whole_on_one_device(*a, **k):
        raise AssertionError("a weight was loaded whole onto one device")

    monkeypatch.setattr(SafetensorsBackend, "get", whole_on_one_device)
    tp = llama.Llama.from_pretrained(llama_dir, mesh=mesh)
    monkeypatch.undo()
    specs = cj.distributed.specs(tp)
    assert specs["model.layers.0.self_attn.q_proj.weight"] == P("model", None)
    assert specs["model.layers.1.self_attn.v_proj.weight"] == P("model", None)
    assert specs["model.layers.0.self_attn.o_proj.weight"] == P(None, "model")
    assert specs["model.layers.1.mlp.up_proj.weight"] == P("model", None)
    assert specs["model.layers.1.mlp.down_proj.weight"] == P(None, "model")
    assert specs["lm_head.weight"] == P("model", None)
    assert specs["model.embed_tokens.weight"] == P() and specs["model.norm.weight"] == P()
    assert all(s is not None for s in specs.values()), specs  # rotary tables on the mesh too
    q = tp.layers[0].self_attn.q_proj.weight._a
    assert {tuple(s.data.shape) for s in q.addressable_shards} == {(64 // n, 64)} and len(q.sharding.device_set) == n
    prompt = [1, 5, 9, 17, 33, 2]
    ids = jnp.asarray([prompt], jnp.uint32)
    step = jax.jit(llama.step)
    want, _ = step(ref, ref.new_cache(1, 32), ids, jnp.int32(0))
    cache = tp.new_cache(1, 32)
    assert cache.k.sharding.spec == P(None, None, "model", None, None)
    got, _ = step(tp, cache, ids, jnp.int32(0))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    tokens = list(ref.generate(prompt, 8))
    assert list(tp.generate(prompt, 8)) == tokens and len(set(tokens)) > 2
    # rules= overrides the default; a plain VarBuilder loads the same way through Llama.load
    vb = VarBuilder.from_mmaped_safetensors([llama_dir / "model.safetensors"], DType.F32, Device.Cpu)
    rep = llama.Llama.load(vb, llama.Config.from_json_file(llama_dir / "config.json"), mesh=mesh, rules="replicate")
    assert set(cj.distributed.specs(rep).values()) == {P()}


def test_llama_load_on_a_mesh_that_does_not_fit_names_the_parameter(llama_dir):
    from candlejax.models import llama

    devs = jax.devices()
    with pytest.raises(ShardingError, match=r"2 key/value heads of model\.layers\.\*\.self_attn\.k_proj\.weight over"
                                            r" mesh axis 'model' of size 4.*one of \[1, 2\]"):  # fmt: skip
        llama.Llama.from_pretrained(llama_dir, mesh=cj.distributed.mesh({"model": 4}, devs[:4]))
    with pytest.raises(ShardingError, match=r"4 attention heads of model\.layers\.\*\.self_attn\.q_proj\.weight"):
        llama.Llama.from_pretrained(llama_dir, mesh=cj.distributed.mesh({"model": 3}, devs[:3]))
    rules = {r"mlp\.down_proj\.weight$": (None, "model")}
    with pytest.raises(ShardingError, match=r"cannot shard model\.layers\.0\.mlp\.down_proj\.weight \(shape \[64, 128\]"
                                            r"\) dim 1 of size 128 over mesh axis 'model' of size 3"):  # fmt: skip
        llama.Llama.from_pretrained(llama_dir, mesh=cj.distributed.mesh({"model": 3}, devs[:3]), rules=rules)
    with pytest.raises(ShardingError, match=r"q_proj.*bias.*matches no parameter of Llama"):
        llama.Llama.from_pretrained(llama_dir, mesh=cj.distributed.mesh({"model": 2}, devs[:2]),
                                    rules={**rules, r"q_proj\.bias$": ("model",)})  # fmt: skip


def test_tensor_parallel_bert_same_hidden_states():
    from candlejax.models import bert

    cfg = bert.Config.from_dict(dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64))  # fmt: skip
    model = bert.BertModel.load(VarBuilder.from_varmap(VarMap(seed=4), DType.F32, Device.Cpu), cfg)
    mesh = cj.distributed.mesh({"data": 2, "model": 4})
    tp = cj.distributed.shard(model, mesh, cj.distributed.bert_tp_rules)
    assert cj.distributed.specs(tp)["encoder.layer.1.output.dense.weight"] == jax.sharding.PartitionSpec(None, "model")
    ids = np.random.default_rng(0).integers(0, 128, (2, 16)).astype(np.uint32)
    ref = np.asarray(bert.forward_jit(model, jnp.asarray(ids)))
    got = bert.forward_jit(tp, cj.distributed.replicate(Tensor.new(ids), mesh))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)
    bert.forward_jit(tp, cj.distributed.replicate(Tensor.new(ids + 1), mesh))
    assert bert.forward_jit._cache_size() == 2  # one program per layout, reused for new values


# --------------------------------------------------------------------------- bad input
def test_rule_that_does_not_divide_names_parameter_and_axis():
    mesh = cj.distributed.mesh({"data": 2, "model": 4})
    model = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    with pytest.raises(ShardingError, match=r"second\.weight.*dim 0 of size 10 over mesh axis 'model' of size 4"):
        cj.distributed.shard(model, mesh, {r"second\.weight": ("model", None)})
    with pytest.raises(ShardingError, match=r"mesh has no axis 'tensor'"):
        cj.distributed.shard(model, mesh, {r"first\.weight": ("tensor", None)})


def test_rules_that_match_nothing_raise():
    mesh = cj.distributed.mesh({"data": 8})
    model = Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu))
    with pytest.raises(ShardingError, match=r"q_proj.*matches no parameter of Mlp.*first\.weight"):
        cj.distributed.shard(model, mesh, {r"first\.weight": (None, "data"), r"q_proj": ("data", None)})
    with pytest.raises(ShardingError, match="unknown sharding rules 'ddp'"):
        cj.distributed.shard(model, mesh, "ddp")


def test_batch_not_divisible_by_data_axis():
    mesh = cj.distributed.mesh({"data": 4, "model": 2})
    with pytest.raises(ShardingError, match=r"batch_size 10 does not split over mesh axis 'data' of size 4"):
        cj.data.Batcher(_data(), batch_size=10, mesh=mesh)
    # 70 examples in batches of 16 leave 6, which 4 devices do not split: raised before the first batch
    b = cj.data.Batcher(_data(70), batch_size=16, mesh=mesh, return_last_incomplete_batch=True)
    with pytest.raises(ShardingError, match=r"last incomplete batch holds 6 examples \(70 examples, batch_size 16\)"
                                            r".*axis 'data' of size 4"):  # fmt: skip
        iter(b)
    assert b.position == 0 and len(b) == 5
    assert [x.shape[0] for x, _ in cj.data.Batcher(_data(72), batch_size=16, mesh=mesh,
                                                   return_last_incomplete_batch=True)] == [16] * 4 + [8]  # fmt: skip
    with pytest.raises(ShardingError, match=r"batch of 6 examples .* axis 'data' of size 4.*multiple of 4"):
        cj.distributed.shard_batch(Tensor.new(np.zeros((6, 3), np.float32)), mesh)


def test_batch_on_other_devices_than_the_model():
    mesh = cj.distributed.mesh({"data": 2}, jax.devices()[:2])
    model = cj.distributed.shard(Mlp(VarBuilder.from_varmap(VarMap(seed=0), DType.F32, Device.Cpu)), mesh)
    opt = cj.optim.AdamW()
    state = opt.init(model)
    dev = Device.from_jax(jax.devices()[3])
    x, y = Tensor.new(_data()[0][:8], dev), Tensor.new(_data()[1][:8], dev)
    with pytest.raises(ShardingError, match=r"on devices \[0, 1\] \(a mesh\) but batch input 0 .* on devices \[3\]"
                                            r".*Batcher\(\.\.\., mesh=mesh\)"):  # fmt: skip
        opt.backward_step(loss_fn, model, state, x, y)


def test_mesh_errors():
    with pytest.raises(ShardingError, match=r"need 6 devices, 8 are given"):
        cj.distributed.mesh({"data": 3, "model": 2})
    assert dict(cj.distributed.mesh({"data": -1, "model": 2}).shape) == {"data": 4, "model": 2}
    d = jax.devices()
    with pytest.raises(ShardingError, match=r"device cpu:0 is given 2 times in devices; a mesh holds each device once"):
        cj.distributed.mesh({"data": 2, "model": 2}, devices=[d[0], d[0], d[1], d[2]])

    class Fake:
        def __init__(self, platform):
            self.platform, self.id = platform, 0

    with pytest.raises(ShardingError, match=r"mixed devices \(cpu, gpu\).*devices=jax.devices\('gpu'\)"):
        cj.distributed.mesh({"data": 2}, devices=[jax.devices()[0], Fake("gpu")])


def test_reduced_precision_switch_reaches_compiled_products():
    def f(a, b):
        return (a.matmul(b) + cj.nn.Linear(b).forward(a)).sum_all()

    a = Tensor.new(np.ones((4, 4), np.float32))
    jf = cj.jit(f) if hasattr(cj, "jit") else jax.jit(f)
    exact = jax.jit(lambda a, b: f(Tensor.new(a), Tensor.new(b))._a).lower(a._a, a._a).as_text()
    assert "HIGHEST" in exact and not cj.gemm_reduced_precision_f32()
    v0 = float(np.asarray(jf(a, a)))
    cj.set_gemm_reduced_precision_f32(True)
    try:
        assert cj.gemm_reduced_precision_f32()
        reduced = jax.jit(lambda a, b: f(Tensor.new(a), Tensor.new(b))._a).lower(a._a, a._a).as_text()
        assert "HIGHEST" not in reduced
        assert float(np.asarray(jf(a, a))) == v0  # the CPU computes f32 exactly either way
    finally:
        cj.set_gemm_reduced_precision_f32(False)
    assert "HIGHEST" in jax.jit(lambda a, b: f(Tensor.new(a), Tensor.new(b))._a).lower(a._a, a._a).as_text()

