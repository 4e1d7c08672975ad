"""The `:tiny` argument of the method configs: the same run on the random tiny model.

`experiments/configs/<method>.py:tiny` applies `apply` to the method's config:
the random `tiny` decoder with SmolLM2's tokenizer, 2 prompts x 4 responses
of 8 tokens, 2 steps, 8 held-out problems, no checkpoints beyond the last.
The method's own flags are untouched, so the run exercises its code path in
seconds; the model is random, so it checks plumbing, not learning.
"""

import ml_collections


def apply(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `c` in place to a tiny smoke run and returns it."""
  c.model.source = "random:tiny"  # Random init; SmolLM2's tokenizer.
  c.model.remat = "none"
  c.data.eval_size = 8  # Held-out problems.
  c.data.train_size = 200  # Items in one training epoch.
  c.rl.steps = 2  # Rollout iterations.
  c.rl.prompts_per_batch = 2  # Prompts per rollout batch.
  c.rl.group_size = 4  # Responses per prompt.
  c.rl.update_groups = 0  # Update on every group.
  c.rl.mini_batches = 1
  c.rl.micro_batches = 2
  c.rl.max_new_tokens = 8  # Short responses.
  c.optim.lr = 1e-3  # Random model: a visible step.
  c.train.eval_max_new_tokens = 8
  c.train.eval_batch_size = 8  # One evaluation batch.
  c.train.save_every = 2
  c.train.keep = 1
  c.train.dense_window = 0
  c.train.tensorboard = False
  return c
