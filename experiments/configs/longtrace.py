r"""LongTraceRL gating (METHODS.md 6.4) on the study's subproblem task.

  python -m experiments.train --config=experiments/configs/longtrace.py --workdir=runs/lt
  python -m experiments.train --config=experiments/configs/longtrace.py \
      --config.reward.longtrace_eta=0 --workdir=runs/lt_outcome   # plain outcome reward
  python -m experiments.train --config=experiments/configs/longtrace.py:tiny --workdir=/tmp/lt

The reproduction study's run (`study.py`: 2- and 3-term addition and
subtraction, SmolLM2-135M-Instruct, GRPO) with its SCRL subproblem chains
(K = 2: the partial sum, then the problem) used as LongTraceRL's gold
entities: a correct response earns (1 - eta) + eta * (fraction of the
intermediate answers it names) / (group maximum), a wrong one exactly 0;
eta = 0.3. The plain prompt is sampled, as for GRPO.
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
  if arg == "tiny":
    tiny_overrides.apply(c)
  elif arg:
    raise ValueError(f"--config=experiments/configs/longtrace.py:{arg}: the argument must "
                     "be 'tiny' or absent.")
  return c
