r"""CIRCA, label-free (METHODS.md 6.5), on the default run's task and model.

  python -m experiments.train --config=experiments/configs/circa.py --workdir=runs/circa
  python -m experiments.train --config=experiments/configs/circa.py:tiny --workdir=/tmp/circa

The default run (SmolLM2-135M-Instruct, 2-term arithmetic, 16 steps of
16 prompts x 4) with the training reward replaced by CIRCA's two label-free
channels: the cluster vote of the G boxed answers (the checker pool clusters
equivalent answers) and the self-certainty from the statistics pass, combined
with GDPO (lambda = (1, 1)) and KL-Cov on 2% of the tokens (the fraction
CIRCA penalizes). No gold answer enters the training reward; `reward/accuracy`
and the held-out evaluations still use the gold answers.

Ablations (the issue's "votes alone / certainty alone"):
  --config.reward.channel_weights=self_certainty=0   (cluster vote only)
  --config.reward.channel_weights=cluster_vote=0     (self-certainty only)
(with GDPO a weight-0 channel contributes nothing to the advantage).
`:tiny` runs the same method on the random tiny model in seconds.
"""

import ml_collections

from experiments.configs import default
from experiments.configs import tiny_overrides


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """CIRCA's run; arg 'tiny' shrinks it to a smoke run."""
  c = default.get_config()
  c.reward.label_free = True  # Cluster vote + self-certainty, no gold answers.
  c.algo.advantage = "gdpo"  # Per-channel group normalization, lambda = (1, 1).
  c.algo.kl_cov_ratio = 0.02  # KL-Cov on the top 2% of tokens by covariance.
  c.algo.kl_cov_beta = 1.0  # verl's default penalty coefficient.
  # The statistics pass runs anyway (self-certainty): take the old log-probs from it.
  c.train.old_logp = "recompute"
  if arg == "tiny":
    tiny_overrides.apply(c)
  elif arg:
    raise ValueError(f"--config=experiments/configs/circa.py:{arg}: the argument must be "
                     "'tiny' or absent.")
  return c
