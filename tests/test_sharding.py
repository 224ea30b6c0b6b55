"""Mesh, sharding rules, and the sharded forward on 8 fake CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from urlvr_jax.models.config import ModelConfig
from urlvr_jax.models.weights import init_model, model_from_state_dict, state_dict
from urlvr_jax.sharding import ShardingRules, make_mesh

CFG = ModelConfig(family="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=8, num_kv_heads=4, head_dim=16, qk_norm="head")


def per_device_param_bytes(model) -> int:
    from flax import nnx

    total = 0
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        arr = var[...]
        shard = arr.addressable_shards[0]
        total += shard.data.size * shard.data.dtype.itemsize
    return total


@pytest.fixture(scope="module")
def single():
    return init_model(CFG, seed=3, mesh=make_mesh({"fsdp": 1}, devices=jax.devices()[:1]))


def test_eight_fake_devices_present():
    assert len(jax.devices()) >= 8, "tests/conftest.py must set --xla_force_host_platform_device_count=8"


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"fsdp": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2},
                                   {"tensor": 8}])
def test_sharded_forward_equals_single_device(single, shape):
    mesh = make_mesh(shape, devices=jax.devices()[:8])
    sharded = model_from_state_dict(CFG, state_dict(single), mesh=mesh)
    ids = jax.random.randint(jax.random.key(0), (8, 12), 0, CFG.vocab_size)
    mask = jnp.ones((8, 12), jnp.int32).at[:3, :4].set(0)
    ref = np.asarray(jax.jit(lambda m, i, a: m(i, a))(single, ids, mask))
    data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    ids_s, mask_s = jax.device_put(ids, data_sharding), jax.device_put(mask, data_sharding)
    got = np.asarray(jax.jit(lambda m, i, a: m(i, a))(sharded, ids_s, mask_s))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_parameter_bytes_shrink_with_fsdp_times_tensor(single):
    full = per_device_param_bytes(single)
    for shape, n in [({"fsdp": 2}, 2), ({"fsdp": 4}, 4), ({"fsdp": 4, "tensor": 2}, 8), ({"fsdp": 8}, 8)]:
        mesh = make_mesh(shape, devices=jax.devices()[:n])
        model = init_model(CFG, seed=3, mesh=mesh)
        got = per_device_param_bytes(model)
        # every matrix is split n ways; only the small norm vectors stay replicated
        norms = 4 * (CFG.num_layers * (2 * CFG.hidden_size + 2 * CFG.head_dim) + CFG.hidden_size)
        assert got <= (full - norms) / n + norms, (shape, got, full)
        assert got < full / n * 1.1, (shape, got, full)


def test_init_model_is_created_sharded():
    mesh = make_mesh({"fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    model = init_model(CFG, seed=0, mesh=mesh)
    q = model.layers.q[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 16, 4, 16)


def test_rules_reject_mesh_axis_used_twice():
    mesh = make_mesh({"fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    rules = ShardingRules(mesh, rules={"embed": "fsdp", "mlp": "fsdp"})
    with pytest.raises(ValueError, match="mesh axis 'fsdp' is used twice"):
        rules.spec(("embed", "mlp"), (64, 128), name="layers.gate")
    with pytest.raises(ValueError, match="mesh has no axis 'model'"):
        ShardingRules(mesh, rules={"embed": "model"})


def test_indivisible_dimension_falls_back_to_replication():
    mesh = make_mesh({"tensor": 8}, devices=jax.devices()[:8])
    rules = ShardingRules(mesh)
    assert rules.spec(("kv_heads",), (4,), name="k") == jax.sharding.PartitionSpec(None)
    assert rules.fallbacks == ["k:kv_heads(4 % 8)"]


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 6 devices but 8"):
        make_mesh({"fsdp": 3, "tensor": 2}, devices=jax.devices()[:8])
    assert make_mesh({"fsdp": -1, "tensor": 2}, devices=jax.devices()[:8]).shape["fsdp"] == 4


def test_policy_and_frozen_reference_share_one_mesh(single):
    """Two models on the same mesh run in one jitted function (the trainer's policy + reference)."""
    mesh = make_mesh({"fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    policy = model_from_state_dict(CFG, state_dict(single), mesh=mesh)
    reference = model_from_state_dict(CFG, state_dict(single), mesh=mesh)
    ids = jax.random.randint(jax.random.key(1), (4, 6), 0, CFG.vocab_size)
    both = jax.jit(lambda p, r, i: (p(i), r(i)))(policy, reference, ids)
    np.testing.assert_allclose(np.asarray(both[0]), np.asarray(both[1]), atol=0)
    assert reference.layers.q[...].sharding == policy.layers.q[...].sharding
