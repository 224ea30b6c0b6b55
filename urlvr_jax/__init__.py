"""urlvr-jax: unsupervised reinforcement learning with verifiable rewards (URLVR) for LLMs in JAX.

The public API is small; everything else lives in the sub-packages:
  models/      Flax NNX transformer (Llama, Qwen2, Qwen3, OLMo-2), HF/GGUF weight I/O
  sharding.py  device mesh and logical-axis rules
  rollout/     on-device sampler and scoring pass with per-token statistics
  rewards/     reward estimators, answer extraction, grading
  diagnostics/ URLVR metrics, Model Collapse Step, closed-form optimal-policy diagnostics
  data/        math datasets, synthetic worlds, prompt templates, input pipelines
"""
__version__ = "0.1.0"
