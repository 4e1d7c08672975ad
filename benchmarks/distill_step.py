r"""One OPD iteration at the full horizon vs TOPD (rho = 0.1) on SmolLM2-135M.

Two trainers in one process (`experiments/configs/opd.py` and `opd.py:topd`),
the same policy and teacher (SmolLM2-135M-Instruct for both unless --teacher:
the timing does not depend on the teacher's weights, so the default GRPO
run's checkpoint is not needed), 8 prompts x 4 responses = 32 rollouts, a
256-token full horizon (TOPD: ceil(0.1 * 256) = 26 tokens). One iteration is
`Trainer.train_step`: rollout, reward, the statistics pass with the teacher's
forward, OPD advantages, and the update on [32, P + H] rows. By default the
rows ignore EOS and run to the horizon (--eos to let them stop), so the full
horizon really costs 256 tokens, as the long reasoning rollouts TOPD is meant
for do; the default task's answers end after ~20 tokens. After one warm-up
(compiling) iteration each, the two alternate; the median of the timed ones
is reported. In the table, reward_s includes the statistics pass and the
teacher's forward (they run before the credit step; old_stats_s is then 0).

  python -m benchmarks.distill_step            # table, then {"full_s", "topd_s", "ratio"}
  python -m benchmarks.distill_step --iterations=3 --eos

Target (issue 17): ratio >= 3.
"""

import argparse
import json
import statistics
import tempfile

_PROMPTS, _GROUP, _FULL = 8, 4, 256
_KEYS = ("time/rollout_s", "time/reward_s", "time/old_stats_s", "time/update_s", "time/step_s")


def make_trainer(arg: str, workdir: str, *, teacher: str, eos: bool):
  """A Trainer of opd.py:<arg> at the benchmark's sizes."""
  from experiments.configs import opd  # pylint: disable=g-import-not-at-top
  from rlvr_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.training import loop  # pylint: disable=g-import-not-at-top
  c = opd.get_config(arg)
  c.distill.teacher = teacher
  c.rl.prompts_per_batch = _PROMPTS
  c.rl.group_size = _GROUP
  c.rl.micro_batches = 4
  c.rl.max_new_tokens = _FULL
  c.rl.stop_strings = () if not eos else c.rl.stop_strings
  c.train.eval_max_new_tokens = _FULL
  c.train.logprob_chunk = 64
  c.train.eval_before = c.train.eval_after = False
  trainer = loop.Trainer(c, workdir, overwrite=True)
  if not eos:
    s = trainer.sampler
    trainer.sampler = sampler_lib.Sampler(
        s.model, s.tokenizer, max_prompt_len=s.max_prompt_len, max_new_tokens=s.max_new_tokens,
        mesh=s.mesh, eos_token_ids=())
  return trainer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--iterations", type=int, default=2, help="timed iterations per mode")
  parser.add_argument("--teacher", default="smollm2", help="--config.distill.teacher")
  parser.add_argument("--eos", action="store_true", help="let rows stop at EOS")
  args = parser.parse_args()
  trainers = {}
  times = {"full": [], "topd": []}
  rows = {}
  try:
    for mode in times:
      trainers[mode] = make_trainer(mode, tempfile.mkdtemp(prefix=f"distill_{mode}_"),
                                    teacher=args.teacher, eos=args.eos)
      trainers[mode].train_step(0)  # compile
    for i in range(args.iterations):
      for mode, trainer in trainers.items():
        metrics = trainer.train_step(i + 1)
        times[mode].append(metrics["time/step_s"])
        rows.setdefault(mode, []).append(metrics)
  finally:
    for trainer in trainers.values():
      trainer.close()
  print(f"{'mode':<6} {'H':>4} " + " ".join(f"{k[5:]:>14}" for k in _KEYS))
  for mode, ms in rows.items():
    h = int(ms[0]["distill/horizon"])
    print(f"{mode:<6} {h:>4} " + " ".join(
        f"{statistics.median(m[k] for m in ms):>14.2f}" for k in _KEYS))
  full_s, topd_s = statistics.median(times["full"]), statistics.median(times["topd"])
  print(json.dumps({"full_s": round(full_s, 3), "topd_s": round(topd_s, 3),
                    "ratio": round(full_s / topd_s, 3)}), flush=True)


if __name__ == "__main__":
  main()
