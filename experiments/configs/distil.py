r"""DistIL (METHODS.md 7.3): the policy, shown feedback, is its own teacher.

  python -m experiments.train --config=experiments/configs/distil.py --workdir=runs/distil
  python -m experiments.train --config=experiments/configs/distil.py:tiny --workdir=/tmp/distil

The default run (SmolLM2-135M-Instruct, 2-term arithmetic, 16 steps of 16
prompts x 4, updates on 6 groups) with GRPO replaced by DistIL: after the
verifier scores each response, the policy runs on its prompt with the
feedback appended (the verdict and the reference answer, template
`verdict_answer` of data/feedback.py) followed by the same response tokens;
its top 20 tokens per position are the target of a forward cross-entropy
term (weight 1) and the CE still to come after each token, minus its group
mean at that position, is the REINFORCE advantage (future credit). Same
rollouts, update rows and steps as the default GRPO run (the same budget, plus
one forward pass of the policy on the feedback prompts). `:tiny` runs the
method on the random tiny model in seconds.
"""

import ml_collections

from experiments.configs import default
from experiments.configs import tiny_overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """DistIL's run; arg 'tiny' shrinks it to a smoke run."""
  c = default.get_config()
  c.algo.advantage = "distil"
  c.train.old_logp = "recompute"  # The statistics pass gives the student's hidden states.
  c.distill.feedback_template = "verdict_answer"
  c.distill.max_teacher_prompt_len = 128  # The 1-shot prompt (<= 73) + feedback fit.
  c.distill.topk = 20
  c.distill.ce_coef = 1.0
  c.distill.future_coef = 1.0
  if arg == "tiny":
    tiny_overrides.apply(c)
  elif arg:
    raise ValueError(f"--config=experiments/configs/distil.py:{arg}: the argument must be "
                     "'tiny' or absent.")
  return c
