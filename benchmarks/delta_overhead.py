r"""DelTA update step vs the same GRPO update step (METHODS.md 2 target: <= 1.10x).

Both steps are the trainer's own: the old-statistics forward pass
(`step.rollout_stats`; for DelTA the same jitted pass also computes the
coefficients from its hidden states and returns A * c~), then one optimizer
update (`step.update_step`). Same batch, same model, same compiled
update; the only difference is DelTA's work. Two sizes: the tiny config and
SmolLM2-135M.

  python -m benchmarks.delta_overhead       # table, then one JSON line {"ratio": ...}
"""

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np
import optax

from rlvr_jax.models import loader
from rlvr_jax.training import step as step_lib


def _batch(b: int, p: int, t: int, group: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, p + t)).astype(np.int32)
  lengths = rng.integers(t // 4, t + 1, b)
  response_mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  input_mask = np.ones((b, p + t), bool)
  input_mask[:, p:] = response_mask > 0
  rewards = rng.integers(0, 2, b).astype(np.float32).reshape(-1, group)
  adv = (rewards - rewards.mean(1, keepdims=True)).reshape(-1)
  return {"tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(input_mask),
          "response_mask": jnp.asarray(response_mask),
          "advantages": jnp.asarray(adv[:, None] * response_mask)}


def measure(source: str, *, b: int, p: int, t: int, group: int, micro: int,
            repeats: int) -> dict:
  """Best-of-`repeats` wall time of one GRPO and one DelTA update step."""
  model, _, config = loader.load_model(source, remat="full")
  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optax.adamw(1e-6)
  opt_state = optimizer.init(params)
  loss_config = step_lib.LossConfig(eps_high=0.28, dual_clip=10.0, max_response_len=t)
  update = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=p,
                                    num_micro=micro, loss_config=loss_config, donate=False)
  stats_plain = step_lib.jit_rollout_stats(graphdef, prompt_len=p, num_micro=micro,
                                           loss_config=loss_config, with_hidden=False)
  stats_delta = step_lib.jit_rollout_stats(
      graphdef, prompt_len=p, num_micro=micro, loss_config=loss_config, with_hidden=False,
      delta=step_lib.DeltaConfig(k=1, lam_min=0.8, lam_max=1.2))
  batch = _batch(b, p, t, group, config.vocab_size)

  def grpo_step():
    stats = stats_plain(params, rest, batch, None)
    mini = {**batch, "old_logp": stats["old_logp"]}
    return update(params, rest, opt_state, mini)[2]["policy/loss"]

  def delta_step():
    stats = stats_delta(params, rest, batch, None)
    mini = {**batch, "old_logp": stats["old_logp"], "advantages": stats["advantages"]}
    return update(params, rest, opt_state, mini)[2]["policy/loss"]

  times = {}
  for name, fn in (("grpo", grpo_step), ("delta", delta_step)):
    fn().block_until_ready()  # compile
  for name, fn in (("grpo", grpo_step), ("delta", delta_step)) * repeats:
    t0 = time.perf_counter()
    fn().block_until_ready()
    times.setdefault(name, []).append(time.perf_counter() - t0)
  grpo_s, delta_s = min(times["grpo"]), min(times["delta"])
  return {"model": source, "rows": b, "tokens": b * (p + t), "grpo_s": grpo_s,
          "delta_s": delta_s, "ratio": delta_s / grpo_s}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  rows = [
      measure("random:tiny", b=32, p=64, t=128, group=4, micro=2, repeats=args.repeats),
      measure("smollm2", b=32, p=64, t=128, group=4, micro=4, repeats=args.repeats),
  ]
  print(f"{'model':<14} {'rows x tokens':>14} {'GRPO step s':>12} {'DelTA step s':>13} "
        f"{'ratio':>6}")
  for r in rows:
    print(f"{r['model']:<14} {r['rows']:>5} x {r['tokens'] // r['rows']:<6} "
          f"{r['grpo_s']:>12.3f} {r['delta_s']:>13.3f} {r['ratio']:>6.3f}")
  print(json.dumps({"ratio": round(max(r["ratio"] for r in rows), 4),
                    "rows": [{k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
  main()
