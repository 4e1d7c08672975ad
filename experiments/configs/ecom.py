r"""SmolLM2-135M-Instruct shopping with tools in the e-commerce environment (issue 18).

METHODS.md section 8. Multi-turn episodes of `rlvr_jax.envs.ecom` (search,
view_product, add_to_cart, remove_from_cart, checkout as tagged JSON tool
calls), the KV cache carried across turns, the loss on the model's tokens
only, GRPO over groups of G episodes of one (seed, level), the verified
`success` channel as the reward, adaptive difficulty from level 0 (the
easiest: 6 products, no attribute constraint, a loose budget), one solved
episode as chat turns before the first observation (`env.few_shot`).
The run: 12 steps of 2 groups x 4 episodes, 100-215 s a step and 8-13
minutes per held-out evaluation of 64 episodes on 2 cores (the first one
compiles a decode program per cache size), 52 minutes in all, 11.6 GB peak.
It took held-out success 0.0% -> 31.3% by learning to buy P001 blindly
(README: the blind guess is worth 30.5% at level 0).

  python -m experiments.train --config=experiments/configs/ecom.py --workdir=runs/ecom
  python -m experiments.train --config=experiments/configs/ecom.py:tiny --workdir=/tmp/ecom

`:tiny` is the same code path on the random tiny model in seconds (2 steps,
2 groups of 4 episodes, 192-token episodes): plumbing, not learning.

Outputs beside the usual ones: metrics env/ecom/<channel> (per-constraint
pass rates), curriculum/ecom/{level,accuracy,weight}, episode/turns_mean,
curriculum_levels.png; eval_before/after.json hold the greedy success on
`env.eval_episodes` fixed held-out episodes at `env.eval_level`.
"""

import ml_collections

from experiments.configs import default


def add_env_fields(c: ml_collections.ConfigDict, *, name: str) -> None:
  """Adds the env and curriculum sections (rlvr_jax.training.env_rollout)."""
  c.env = ml_collections.ConfigDict()
  c.env.name = name  # ecom | reasoning_gym:<task> (comma-separated for several).
  c.env.level = 0  # Start level (adaptive) or the fixed level.
  c.env.max_turns = 6  # Most model turns per episode.
  c.env.max_turn_tokens = 64  # Most tokens of one model turn.
  c.env.max_results = 3  # Products listed by one search (ecom).
  c.env.eval_episodes = 64  # Held-out episodes per environment.
  c.env.eval_level = 0  # Held-out level; -1 = the hardest.
  c.env.few_shot = 0  # Worked examples as chat turns before the first observation.
  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.adaptive = True  # Level controller on; False keeps env.level.
  c.curriculum.window = 32  # Episodes at a level before a decision.
  c.curriculum.up_threshold = 0.9  # Move up above this rolling accuracy.
  c.curriculum.down_threshold = 0.2  # Move down below it.
  c.curriculum.signal_window = 16  # Groups per environment in its signal fraction.
  c.curriculum.signal_floor = 0.0  # Least sampling probability of an environment.
  c.curriculum.seed = 0  # Seed of the environment draws.


def shrink_to_tiny(c: ml_collections.ConfigDict) -> None:
  """The random tiny model, 2 steps of 2 x 4 short episodes, 2 held-out episodes."""
  c.model.source = "random:tiny"
  c.rl.steps = 2
  c.rl.prompts_per_batch = 2
  c.rl.group_size = 4  # 8 rows: the tests' 8 host devices split them.
  c.rl.update_groups = 0
  c.rl.mini_batches = 1
  c.rl.micro_batches = 1
  c.rl.max_new_tokens = 64
  c.env.max_turns = 2
  c.env.max_turn_tokens = 16
  c.env.eval_episodes = 2
  c.curriculum.window = 4
  c.data.eval_size = 4
  c.data.train_size = 100
  c.optim.lr = 1e-3
  c.train.eval_batch_size = 4
  c.train.eval_max_new_tokens = 8
  c.train.save_every = 1
  c.train.tensorboard = False


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The e-commerce run; arg 'tiny' for the smoke run."""
  c = default.get_config()
  add_env_fields(c, name="ecom")
  c.data.template = "chat"  # Data records are unused; the preflight renders them.
  c.data.few_shot = 0
  c.data.eval_size = 16
  # One solved episode (search, add_to_cart, checkout) as chat turns before
  # the first observation: without it SmolLM2-135M writes no tool call
  # (0 of 64 held-out episodes, none with a call, at level 0).
  c.env.few_shot = 1
  c.rl.steps = 12
  c.rl.prompts_per_batch = 2  # Groups (one seed and level each) per step.
  c.rl.group_size = 4  # Episodes per group.
  c.rl.update_groups = 0
  c.rl.micro_batches = 2  # One group (4 rows x 704 + 512 tokens) per pass.
  c.rl.max_prompt_len = 704  # The worked example and the first observation: <= 681 tokens.
  c.rl.max_new_tokens = 512  # The whole episode after the prompt (model + environment).
  # The update of 4 rows x 512 tokens (+ the 704-token prompt once) kept
  # every layer's attention probabilities and the whole LM head for the
  # backward pass: 13.8 GB at the first step. Recomputed per layer and
  # chunked, it fits beside the sampler's caches.
  c.model.remat = "full"
  c.train.logprob_chunk = 128
  c.rl.temperature = 0.7
  c.optim.lr = 1e-5
  c.train.eval_batch_size = 8  # 32 episodes of 704 + 512 tokens a batch took over 15 GB.
  c.train.save_every = 10
  if arg == "tiny":
    shrink_to_tiny(c)
    c.env.few_shot = 0
    c.model.remat = "none"
    c.train.logprob_chunk = 0
    c.rl.max_prompt_len = 256  # The first observation with the tool list: <= 252 tokens.
    c.rl.max_new_tokens = 192  # Room for a search's answer and a second turn.
  elif arg:
    raise ValueError(f"--config=experiments/configs/ecom.py:{arg}: the argument must be "
                     "'tiny' or absent.")
  return c
