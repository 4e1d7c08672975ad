r"""The whole RL loop in seconds: a random 4-layer model, for tests and smoke runs.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/tiny
  python -m experiments.train --config=experiments/configs/tiny.py:scrl --workdir=/tmp/tscrl

Same code path as the default (sampler, old-stats pass, micro-batched update,
checkpoints, both evaluations with the reasoning-gym checker in the worker
pool), shrunk: a random `tiny` decoder (4 layers, width 256) with SmolLM2's
tokenizer, 4 prompts x 4 responses of 8 tokens, 3 steps, 16 held-out problems.
The model is random, so accuracy stays near 0; the run checks plumbing, not
learning. Under a minute on 2 CPU cores once compiled.

Training reward: a random model never writes a \boxed{} answer, so the
verifier alone would give every group the same reward, zero advantages and a
zero gradient, and the run would never show that gradients flow. The tiny
run trains on `smoke_reward` through the user-reward hook
(`--config.reward.fn`, rewards/channels.py): the exact-match verdict plus a
small `letters` channel (the share of letters among the response's
non-space characters), which differs between random responses, so every step
takes a non-zero update. `:scrl` is the same smoke run with SCRL's credit
(`algo.advantage=scrl`), whose per-block reward replaces the user reward.
"""

from typing import Any, Sequence

import ml_collections

from experiments.configs import default
from rlvr_jax.rewards import answers
from rlvr_jax.rewards import scorers


def smoke_reward(examples: Sequence[dict[str, Any]],
                 texts: Sequence[str]) -> dict[str, list[float]]:
  """The tiny run's reward channels: 'correct' (exact match) and 'letters'.

  Args:
    examples: B dataset rows ('answer' is the gold answer).
    texts: B decoded responses.

  Returns:
    {'correct': 1.0 when the boxed answer equals the gold answer after
     `answers.normalize_answer`, else 0.0; 'letters': letters / non-space
     characters of the response, 0.0 for an empty one}.
  """
  correct, letters = [], []
  for example, text in zip(examples, texts):
    boxed = answers.extract_boxed(text)
    correct.append(0.0 if boxed is None else scorers.exact_item(example["answer"], boxed)[0])
    chars = [ch for ch in text if not ch.isspace()]
    letters.append(sum(ch.isalpha() for ch in chars) / len(chars) if chars else 0.0)
  return {"correct": correct, "letters": letters}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config shrunk to a smoke run; `arg` 'scrl' switches to SCRL."""
  if arg not in (None, "", "scrl"):
    raise ValueError(f"experiments/configs/tiny.py:{arg}: the argument is '' or 'scrl'.")
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
  # A reward a random model's groups differ on (module docstring).
  c.reward.fn = "experiments.configs.tiny:smoke_reward"
  c.reward.channel_weights = "letters=0.1"  # lambda of the letters channel.
  c.train.eval_max_new_tokens = 8  # Short answers at evaluation.
  c.train.eval_batch_size = 16  # One evaluation batch.
  c.train.save_every = 1  # Checkpoint every step (exercises the policy).
  c.train.dense_window = 2  # Keep steps 0..2 (RELEX's window).
  c.train.tensorboard = True  # Exercise the TensorBoard writer.
  if arg == "scrl":
    c.algo.advantage = "scrl"  # SCRL's per-block rewards and span advantages.
    c.reward.fn = ""  # SCRL scores its own blocks.
    c.reward.channel_weights = ""
    c.rl.max_prompt_len = 192  # Curriculum prompts: the problem and its chain (~130 tokens).
  return c
