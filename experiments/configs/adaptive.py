r"""Adaptive vs fixed difficulty on reasoning-gym chain_sum (issue 18).

METHODS.md section 8. chain_sum (sums and differences, "State the final answer
to the following arithmetic problem: 21 + 44 - 87 =") as a one-turn
environment whose 8 levels grow the number of terms and digits
(`rlvr_jax.envs.reasoning_gym_env` LEVELS: 2 terms of 1 digit up to 6 terms of
4 digits), with one worked example as a chat turn pair before the question
(`env.few_shot`; without it SmolLM2-135M-Instruct never boxes an answer).
Greedy SmolLM2 with the example, 16 problems a level (transformers, this
session): level 0 94%, level 1 31%, levels 2 and 3 0%.

With `curriculum.adaptive=True` (this config) a level controller starts at
level 0 and moves the level up above 90% rolling accuracy over 32 episodes
and down below 20%; with False every episode is at `env.level`. Both are
evaluated greedily on the same 128 held-out episodes at `env.eval_level` = 2,
the first level the base model never solves: the question is whether the
curriculum reaches it where training on it directly gets no signal.

  python -m experiments.train --config=experiments/configs/adaptive.py --workdir=runs/adaptive
  python -m experiments.train --config=experiments/configs/adaptive.py \
      --config.curriculum.adaptive=False --config.env.level=2 --workdir=runs/fixed
  python -m experiments.train --config=experiments/configs/adaptive.py:tiny --workdir=/tmp/ad

`:tiny`: the random tiny model, 2 steps, seconds.
"""

import ml_collections

from experiments.configs import default
from experiments.configs import ecom


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The adaptive-difficulty run; arg 'tiny' for the smoke run."""
  c = default.get_config()
  ecom.add_env_fields(c, name="reasoning_gym:chain_sum")
  c.env.max_turns = 1
  c.env.max_turn_tokens = 64
  c.env.few_shot = 1
  c.env.eval_episodes = 128
  c.env.eval_level = 2
  c.data.template = "chat"  # Data records are unused; the preflight renders them.
  c.data.few_shot = 0
  c.data.eval_size = 16
  c.rl.steps = 16  # The default run's budget: 16 steps of 16 x 4.
  c.rl.prompts_per_batch = 16
  c.rl.group_size = 4
  c.rl.update_groups = 0
  c.rl.micro_batches = 8  # 64 rows of 208 tokens: 8 rows a pass (32 took 13 GB).
  c.rl.max_prompt_len = 144  # The example and the question: <= 144 tokens at level 7.
  c.rl.max_new_tokens = 64
  c.rl.temperature = 0.7
  c.train.eval_batch_size = 64
  c.train.save_every = 8
  if arg == "tiny":
    ecom.shrink_to_tiny(c)
    c.env.max_turns = 1
  elif arg:
    raise ValueError(f"--config=experiments/configs/adaptive.py:{arg}: the argument must be "
                     "'tiny' or absent.")
  return c
