"""Test-wide setup: eight fake CPU devices so sharding is exercised in every run.

XLA reads XLA_FLAGS once, when jax first initialises its backend, so this must run before any
test module imports jax.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
