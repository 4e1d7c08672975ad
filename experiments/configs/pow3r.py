r"""POW3R (METHODS.md 6.3) on the rubric task (`data/rubric.py`), SmolLM2-135M-Instruct.

  python -m experiments.train --config=experiments/configs/pow3r.py --workdir=runs/pow3r
  python -m experiments.train --config=experiments/configs/pow3r.py \
      --config.reward.pow3r=False --workdir=runs/rubric_static   # static weights
  python -m experiments.train --config=experiments/configs/pow3r.py:tiny --workdir=/tmp/pow3r

Prompts ask for a short text with difficulty + 1 = 3 code-checked criteria
(word count, keywords, final line, bullets, case, first word), each with a
weight and a category. The training reward is the criteria's weighted pass
rate with POW3R's policy-aware weights (a = b = 0.5, alpha in [0.1, 3],
category totals kept); evaluation keeps the static weights and reports strict
completion (all criteria passed) as `eval/accuracy`. The chat template, no
few-shot example and no boxed-answer instruction (the prompt is the task).
Lengths and batch sizes are set for a 2-core CPU but not calibrated: a 3-
criterion text takes about 60-100 tokens.
`:tiny` runs the same method on the random tiny model in seconds.
"""

import ml_collections

from experiments.configs import default
from experiments.configs import tiny_overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """POW3R's run; arg 'tiny' shrinks it to a smoke run."""
  c = default.get_config()
  c.data.source = "reasoning_gym"  # The procedural source...
  c.data.task = "rubric"  # ...of the rubric task.
  c.data.task_kwargs = {"difficulty": 2}  # 3 criteria a prompt.
  c.data.eval_size = 128  # Held-out prompts.
  c.data.template = "chat"
  c.data.instruction = ""  # The criteria are the instructions.
  c.data.few_shot = 0
  c.reward.checker = "exact"  # No answer checker: criteria are scored by code.
  c.reward.pow3r = True
  c.rl.prompts_per_batch = 8
  c.rl.group_size = 4
  c.rl.update_groups = 0
  c.rl.micro_batches = 4  # 8 rows of 256 tokens a pass (16 took 11 GB).
  c.rl.max_prompt_len = 160  # Chat template + 3 criteria.
  c.rl.max_new_tokens = 96
  c.rl.temperature = 1.0
  c.rl.stop_strings = ()
  c.train.eval_max_new_tokens = 96
  if arg == "tiny":
    tiny_overrides.apply(c)
  elif arg:
    raise ValueError(f"--config=experiments/configs/pow3r.py:{arg}: the argument must be "
                     "'tiny' or absent.")
  return c
