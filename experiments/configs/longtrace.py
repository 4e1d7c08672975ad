r"""LongTraceRL gating (METHODS.md 6.4) on 3-term addition and subtraction.

  python -m experiments.train --config=experiments/configs/longtrace.py --workdir=runs/lt
  python -m experiments.train --config=experiments/configs/longtrace.py \
      --config.reward.longtrace_eta=0 --workdir=runs/lt_outcome   # plain outcome reward
  python -m experiments.train --config=experiments/configs/longtrace.py:tiny --workdir=/tmp/lt

The reproduction study's run (`study.py`: SmolLM2-135M-Instruct, GRPO, 16
steps of 16 prompts x 4) on 3-term addition and subtraction of 1-digit numbers
("Calculate 9 + 4 - 7."), whose SCRL subproblem chains (K = 2: the partial
sum "9 + 4", then the problem) give one gold intermediate entity per problem
(13). (With 1- and 2-digit numbers the base model solves 5.1% of the
held-out problems, and 16 steps of this method left it at 5.1%.) A correct
response earns (1 - eta) + eta * (fraction of the intermediate answers it
names) / (group maximum), a wrong one exactly 0; eta = 0.3. The plain prompt is sampled, as for GRPO. On the default run's
2-term task the chains have no intermediate entity, every correct response
earns 1 - eta, and GRPO's group normalization makes the run identical to the
plain outcome reward's.
`:tiny` runs the same method on the random tiny model in seconds.
"""

import ml_collections

from experiments.configs import study
from experiments.configs import tiny_overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """LongTraceRL's run; arg 'tiny' shrinks it to a smoke run."""
  c = study.get_config()
  c.algo.advantage = "grpo"
  c.algo.scrl_k = 2  # Chains: the partial sum, then the problem.
  c.reward.longtrace_eta = 0.3  # The paper's eta.
  c.data.task_kwargs.update(min_terms=3, max_terms=3, min_digits=1, max_digits=1,
                            operators=["+", "-"])
  c.rl.max_prompt_len = 96  # The 1-shot prompt of a 3-term problem: <= 81 tokens (2 digits).
  c.rl.max_new_tokens = 48  # Room to write the partial sum before the answer.
  c.train.eval_max_new_tokens = 48
  if arg == "tiny":
    tiny_overrides.apply(c)
  elif arg:
    raise ValueError(f"--config=experiments/configs/longtrace.py:{arg}: the argument must "
                     "be 'tiny' or absent.")
  return c
