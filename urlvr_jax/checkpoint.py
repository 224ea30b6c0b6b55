"""Orbax checkpoints of a training run: parameters, optimizer state and a JSON meta record.

Async saves, keep-N, atomic (a step directory appears only when complete); a restore places every leaf
exactly as the live state is placed, so a resumed run compiles and runs the same programs.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

_device_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


class Checkpointer:
    """Orbax CheckpointManager: async saves, keep-N, atomic (a step dir appears only when complete)."""

    def __init__(self, directory: Path, keep: int):
        self.mgr = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
        )

    def save(self, step, params, opt_state, meta) -> None:
        """Start an async save. The arrays are first copied on device: the next step donates (overwrites)
        the live parameter buffers while the background write may still be reading them."""
        state = _device_copy({"params": params, "opt_state": opt_state})
        self.mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def restore_latest(self, params, opt_state):
        """(params, opt_state, meta) of the newest checkpoint, placed like the given live state; None if none."""
        step = self.mgr.latest_step()
        if step is None:
            return None
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              {"params": params, "opt_state": opt_state})
        got = self.mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                             meta=ocp.args.JsonRestore()))
        # place every leaf exactly as the live state is placed (orbax may put scalars on one device)
        state = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), got["state"], target)
        return state["params"], state["opt_state"], got["meta"]

    def wait(self):
        self.mgr.wait_until_finished()
