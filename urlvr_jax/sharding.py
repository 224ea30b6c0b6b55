"""Device mesh and the one table that maps logical tensor axes to mesh axes.

Every parameter and activation is annotated with *logical* axis names ("embed", "mlp", "q_heads", …);
`ShardingRules` turns them into a `PartitionSpec` for the mesh in use. Parameters are sharded FSDP ×
tensor-parallel: the model dimension over `fsdp`, heads / MLP / vocabulary over `tensor`; the batch is
split over `data` × `fsdp`. A rule table that would use one mesh axis twice in one tensor is rejected,
and a dimension that does not divide by its mesh axes' size falls back to replication for that tensor
(and is listed by `ShardingRules.fallbacks`), so any model runs on any mesh.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: dict[str, tuple[str, ...] | str | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "sequence": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_vocab": "tensor",
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    # KV cache [layers, batch, seq, kv_heads, head_dim]
    "cache_batch": ("data", "fsdp"),
    "cache_seq": None,
}


def make_mesh(
    shape: Mapping[str, int] | Sequence[int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh with axes (data, fsdp, tensor).

    shape: dict like {"data": 1, "fsdp": 4, "tensor": 2} or a 3-tuple; one entry may be -1 (fill with
    the remaining devices). Default: all devices on `fsdp`.
    """
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if shape is None:
        sizes = [1, n, 1]
    elif isinstance(shape, Mapping):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"mesh shape has unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
        if len(sizes) != len(MESH_AXES):
            raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {sizes}: at most one axis may be -1")
    if -1 in sizes:
        rest = math.prod(s for s in sizes if s != -1)
        if n % rest:
            raise ValueError(f"mesh shape {sizes}: {n} devices do not divide by {rest}")
        sizes[sizes.index(-1)] = n // rest
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {n} are given"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(eq=False)  # hashed by identity: it is static metadata of jitted modules
class ShardingRules:
    """Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated)."""

    mesh: Mesh
    rules: Mapping[str, tuple[str, ...] | str | None] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))
    fallbacks: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for name, target in self.rules.items():
            for axis in _as_tuple(target):
                if axis not in self.mesh.axis_names:
                    raise ValueError(f"sharding rule {name!r} -> {axis!r}: mesh has no axis {axis!r} "
                                     f"(mesh axes: {self.mesh.axis_names})")

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None, name: str = "") -> P:
        """PartitionSpec for a tensor with these logical axes (and, if given, this shape)."""
        used: dict[str, str] = {}
        out = []
        for i, logical in enumerate(logical_axes):
            if logical is None:
                out.append(None)
                continue
            if logical not in self.rules:
                raise KeyError(f"{name or 'tensor'}: logical axis {logical!r} has no sharding rule; "
                               f"known: {sorted(self.rules)}")
            mesh_axes = tuple(a for a in _as_tuple(self.rules[logical]) if self.mesh.shape[a] > 1)
            for a in mesh_axes:
                if a in used:
                    raise ValueError(
                        f"{name or 'tensor'} {tuple(logical_axes)}: mesh axis {a!r} is used twice "
                        f"(by {used[a]!r} and {logical!r}); fix the sharding rules"
                    )
                used[a] = logical
            size = math.prod(self.mesh.shape[a] for a in mesh_axes)
            if shape is not None and mesh_axes and shape[i] % size:
                self.fallbacks.append(f"{name}:{logical}({shape[i]} % {size})")
                mesh_axes = ()
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
        return P(*out)

    def sharding(self, logical_axes, shape=None, name: str = "") -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape, name))


def _as_tuple(target) -> tuple[str, ...]:
    if target is None:
        return ()
    if isinstance(target, str):
        return (target,)
    return tuple(target)


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None], rules: ShardingRules | None):
    """Constrain an activation's sharding inside jit (no-op without rules, e.g. on one device)."""
    if rules is None:
        return x
    return jax.lax.with_sharding_constraint(x, rules.sharding(logical_axes, x.shape))


def shard_batch(x, rules: ShardingRules | None):
    """Place a host batch [B, ...] on the mesh, split along B over (data, fsdp) when B divides evenly.

    Every process passes the same global batch; each one transfers only the rows of its own devices
    (so this is also the multi-host path: no process sends data to another's devices).
    """
    if rules is None:
        return jnp.asarray(x)
    x = np.asarray(x)
    sharding = rules.sharding(("batch",) + (None,) * (x.ndim - 1), x.shape, name="batch")
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def replicate(x, mesh: Mesh):
    """A host value placed whole on every device of the mesh (works on multi-host meshes too)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = replicate(jax.random.key_data(x), mesh)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()), lambda idx: x[idx])


def to_host(tree):
    """numpy copies of (possibly multi-host, sharded) arrays; a collective when not fully addressable."""

    def one(x):
        if x is None:
            return None
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree, is_leaf=lambda x: x is None)
