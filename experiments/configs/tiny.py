r"""The whole RL loop in seconds: a random 4-layer model, for tests and smoke runs.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/tiny

Same code path as the default (sampler, rewards in the worker pool, old-stats
pass, micro-batched update, checkpoints, both evaluations), shrunk: a random
`tiny` decoder (4 layers, width 256) with SmolLM2's tokenizer, 4 prompts x 4
responses of 8 tokens, 3 steps, 16 held-out problems. The model is random, so
accuracy stays near 0; the run checks plumbing, not learning. Under a minute
on 2 CPU cores once compiled.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config shrunk to a smoke run; `arg` is unused."""
  del arg
  c = default.get_config()
  c.model.source = "random:tiny"  # Random init; SmolLM2's tokenizer.
  c.model.remat = "none"  # Tiny activations; recomputing only costs time.
  c.data.eval_size = 16  # Held-out problems.
  c.data.train_size = 2000  # Items in one training epoch.
  c.rl.steps = 3  # Rollout iterations.
  c.rl.prompts_per_batch = 4  # Prompts per rollout batch.
  c.rl.group_size = 4  # Responses per prompt.
  c.rl.update_groups = 0  # Update on every group.
  c.rl.mini_batches = 2  # Two optimizer steps per rollout batch.
  c.rl.micro_batches = 2  # Two micro-batches per mini-batch.
  c.rl.max_prompt_len = 128  # The chat-templated prompt fits.
  c.rl.max_new_tokens = 8  # Short responses.
  c.optim.lr = 1e-3  # Random model: a visible step.
  c.train.eval_max_new_tokens = 8  # Short answers at evaluation.
  c.train.eval_batch_size = 16  # One evaluation batch.
  c.train.save_every = 1  # Checkpoint every step (exercises the policy).
  c.train.dense_window = 2  # Keep steps 0..2 (RELEX's window).
  c.train.tensorboard = True  # Exercise the TensorBoard writer.
  return c
