"""urlvr-jax: unsupervised RL with verifiable rewards (URLVR) for language models, in JAX/Flax NNX."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "transformers>=5.0",
    "safetensors>=0.4",
    "datasets>=3.0",
    "tensorflow-datasets>=4.9.8",
    "ml-collections>=1.0",
    "grain>=0.2.12",
    "math-verify>=0.8",
    "gguf>=0.17",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "absl-py>=2.1",
]

EXTRAS = {
    # torch is the numerical reference in parity tests only. Keep it pinned: an unpinned torch
    # pulls several GB of CUDA packages. accelerate: transformers' GGUF loader (the SmolLM2 reference) needs it.
    # trl: the peer of benchmarks/rl_step.py, whose --tiny smoke run is a test (tests/test_bench_rl_step.py).
    "test": ["torch==2.13.0", "accelerate>=1.0", "pytest>=8", "scipy>=1.11", "nbclient>=0.10", "nbformat>=5.10",
             "ipykernel>=6", "ruff>=0.6", "trl>=0.20"],
    "bench": ["torch==2.13.0", "trl>=0.20"],
    # libtpu: abstract TPU devices on any host, so `urlvr-train --compile_for=v5e-16` compiles the step for a
    # TPU slice on a CPU-only machine (jax[tpu] pins the libtpu that matches the installed jax)
    "tpu": ["jax[tpu]"],
}

setup(
    name="urlvr-jax",
    version="0.1.0",
    description="Unsupervised RLVR (label-free RL with verifiable rewards) for LLMs in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["urlvr_jax", "urlvr_jax.*"]),
    include_package_data=True,
    package_data={"urlvr_jax": ["data/assets/**/*", "data/assets/*/*", "data/assets/*/*/*",
                                "models/ladder/*", "models/ladder/*/*", "models/ladder_v2/*", "models/ladder_v2/*/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "urlvr-eval=urlvr_jax.main:eval_main",
            "urlvr-train=urlvr_jax.main:train_main",
        ]
    },
)
