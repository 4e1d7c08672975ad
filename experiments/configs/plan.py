r"""The paper-like pod run that `python -m experiments.plan` checks by default.

512 rollouts per step (64 prompts x 8), 1024-token prompts, 4096-token
responses, bf16 compute, DelTA on; parameters and Adam state in float32
sharded over every chip (fsdp = all devices), one remat'd block kept per
layer, and the LM head over T in chunks of 512 in every pass.

  python -m experiments.plan --model=qwen3_8b --topology=v5e:8x8
  python -m experiments.plan --model=qwen3_1_7b --topology=v5p:2x2x1 \
      --config.rl.micro_batches=4 --config.model.remat=none

Every field is a trainer field (experiments/configs/default.py); the
planner reads the model, mesh, rl, algo, optim and train.logprob_chunk.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config with the pod-scale overrides; `arg` is unused."""
  del arg
  c = default.get_config()
  c.model.dtype = "bfloat16"  # TPU matmuls in bf16; norms, softmax, logits in f32.
  c.model.param_dtype = "float32"  # f32 master weights and Adam moments.
  c.model.remat = "full"  # Recompute each block in the backward pass.
  c.mesh.data = 1  # All chips on fsdp: parameters and optimizer state sharded.
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.rl.prompts_per_batch = 64  # 64 prompts x 8 = 512 rollouts per step.
  c.rl.group_size = 8
  c.rl.update_groups = 0  # Update on every group.
  c.rl.mini_batches = 1  # One optimizer step per rollout batch.
  c.rl.micro_batches = 8  # Gradient accumulation over 8 slices of the batch.
  c.rl.max_prompt_len = 1024  # P.
  c.rl.max_new_tokens = 4096  # T.
  c.rl.temperature = 1.0
  c.rl.stop_strings = ()
  c.algo.delta = True  # DelTA (METHODS.md 2): the stats pass keeps [B, T, D] f32.
  c.train.logprob_chunk = 512  # LM head over T in chunks: no [rows, T, V] logits.
  c.train.old_logp = "recompute"
  return c
