r"""The reproduction study's shared run: `python -m experiments.study`.

Every method of the study (GRPO, DelTA, SCRL, DelTA+SCRL, RELEX) trains
SmolLM2-135M-Instruct from this config, changing only `algo` (and RELEX only
the number of steps it trains); `experiments/study.py` sets the method and
the seed. It derives from the default run, changed so that
  - the methods have something to differ on: 3-term arithmetic (+ - *), which
    the base model answers right about a third of the time, so groups mix
    right and wrong answers, and a 3-term expression has one sub-expression
    for SCRL's chain (K = 2: the first operation, then the whole problem);
  - 5 methods x 3 seeds fit in 60 minutes on 2 cores: 3 prompts x 4
    responses a step, 10 steps, 96 held-out problems (greedy, one batch),
    shared by every run;
  - RELEX can fit: steps 1 and 2 (20% of 10) are kept for it.
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The study's base run; `arg` is unused."""
  del arg
  c = default.get_config()
  c.data.task_kwargs = {
      "min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 2,
      "operators": ("+", "-"), "allow_parentheses": False,
      "allow_negation": False,
  }
  c.data.eval_size = 96  # Held-out problems, the same for every run.
  c.rl.steps = 10  # Rollout iterations of each trained run.
  c.rl.prompts_per_batch = 3  # Prompts per rollout batch.
  c.rl.group_size = 4  # SCRL: 2 curriculum + 2 plain responses.
  c.rl.micro_batches = 1  # 12 rows fit in one micro-batch.
  c.rl.max_prompt_len = 168  # 2-shot prompts <= 147 tokens, curriculum <= 163.
  c.rl.max_new_tokens = 48  # Two SCRL blocks take about 40 tokens.
  c.algo.scrl_k = 2  # The sub-expression, then the problem.
  c.train.eval_max_new_tokens = 32  # Plain answers take about 20 tokens.
  c.train.eval_batch_size = 96  # The held-out set in one sampler call.
  c.train.save_every = 10  # Only the last step after RELEX's window.
  c.train.keep = 1
  c.train.dense_window = 2  # Steps 0, 1, 2: RELEX's base and window.
  c.train.tensorboard = False
  return c
