r"""On-policy distillation (METHODS.md 7.1) with a rollout horizon (7.2).

  python -m experiments.train --config=experiments/configs/opd.py --workdir=runs/opd
  python -m experiments.train --config=experiments/configs/opd.py:topd --workdir=runs/topd
  python -m experiments.train --config=experiments/configs/opd.py:popd --workdir=runs/popd
  python -m experiments.train --config=experiments/configs/opd.py:topd,tiny --workdir=/tmp/topd

The argument is a comma-separated list of at most one horizon and the word
`tiny`, in any order: `full` (the default: plain OPD, the whole T), `topd`
(TOPD, H = ceil(rho T), rho = 0.1) or `popd` (POPD, H_k = min(T, H_0 + dH
floor(k / dk)) with H_0 = 8, dH = 8, dk = 4: 8 tokens for steps 0-3, 16 for
4-7, 24, then the whole 32 from step 12); `tiny` runs the same method on the
random tiny model in seconds (teacher 'random:tiny'; its POPD grows 2, 4, ...
tokens per step so a 2-step run shows the schedule).

The student is the default run's base model (SmolLM2-135M-Instruct, 2-term
arithmetic, temperature 0.7); the teacher is the default GRPO run's latest
checkpoint, `runs/default` (relative to where the command runs): train it
first with `python -m experiments.train --workdir=runs/default`, or point
`--config.distill.teacher` at another run folder, HF folder or .gguf with the
SmolLM2 tokenizer. A missing folder stops the run before any work with that
command in the message. The advantage is the teacher/student log-ratio of
each sampled token (no verifier; `--config.distill.outcome_coef` > 0 adds the
GRPO outcome advantage). 6 prompts x 4 responses, every group updated: the
same 24 update rows per step as the default GRPO run (which samples 16 x 4
and keeps 6 groups with a reward spread; with OPD every group has a signal).
"""

import ml_collections

from experiments.configs import default
from experiments.configs import tiny_overrides

HORIZONS = ("full", "topd", "popd")
DEFAULT_TEACHER = "runs/default"


def parse_arg(arg: str | None, config_file: str) -> tuple[str, bool]:
  """`full|topd|popd` and/or `tiny`, comma-separated -> (horizon, tiny).

  Raises:
    ValueError: an unknown word, or two horizons, naming the --config value.
  """
  horizon, tiny = "full", False
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  seen = []
  for word in words:
    if word == "tiny":
      tiny = True
    elif word in HORIZONS:
      seen.append(word)
      horizon = word
    else:
      raise ValueError(f"--config=experiments/configs/{config_file}:{arg}: unknown word "
                       f"{word!r}; use at most one of {list(HORIZONS)} and/or 'tiny', "
                       "comma-separated.")
  if len(seen) > 1:
    raise ValueError(f"--config=experiments/configs/{config_file}:{arg}: one horizon only, "
                     f"got {seen}.")
  return horizon, tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """OPD with the horizon of `arg` (module docstring); 'tiny' shrinks it."""
  horizon, tiny = parse_arg(arg, "opd.py")
  c = default.get_config()
  c.algo.advantage = "opd"  # Teacher/student log-ratio advantages.
  c.train.old_logp = "recompute"  # The student's log-probs from the statistics pass.
  c.rl.prompts_per_batch = 6  # Every group carries a signal: 24 update rows, as GRPO's.
  c.rl.update_groups = 0
  c.distill.teacher = DEFAULT_TEACHER  # The default GRPO run's latest checkpoint.
  c.distill.horizon = horizon
  c.distill.rho = 0.1  # TOPD: 10% of T (the paper's setting matching full OPD).
  c.distill.popd_h0 = 8
  c.distill.popd_dh = 8
  c.distill.popd_dk = 4
  if tiny:
    tiny_overrides.apply(c)
    c.distill.teacher = "random:tiny"
    c.distill.popd_h0 = 2
    c.distill.popd_dh = 2
    c.distill.popd_dk = 1
  return c
