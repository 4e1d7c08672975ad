r"""The default run's update step with shared prompts vs without (issue 14: ratio >= 1.8).

The batch is the default config's update batch, sampled as the trainer samples
it: `rl.update_groups` = 6 prompts of the training task rendered with the
config's template (the one-shot preamble is the batch-wide prefix) x
`rl.group_size` = 4 responses from SmolLM2-135M's sampler, P = 80, T = 32,
float32, `rl.micro_batches` = 2, AdamW. The same jitted `step.update_step`
runs it unshared (every row computes its whole sequence, the sampler's rows
as they are), with each group's prompt computed once, and with the prefix
every prompt begins with (after `shared_prompt.align_prefix`) computed once
too, and with the responses packed as well (each computed only up to its last
token, `train.pack_responses`); the four calls are interleaved in one process,
best of --repeats each, and their losses agree to float noise.

  python -m benchmarks.update_step          # table, then one JSON line

The JSON line holds `shared_s` (groups and batch prefix shared), `unshared_s`,
`ratio` = unshared_s / shared_s, `packed_s` and `packed_ratio` = unshared_s /
packed_s (the trainer's default), the sharing found, and the 1-minute load
average at the end (the timings are wall-clock).
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.configs import default as default_config
from rlvr_jax.data import prompts as prompts_lib
from rlvr_jax.models import loader
from rlvr_jax.models import shared_prompt
from rlvr_jax.sampling import sampler as sampler_lib
from rlvr_jax.training import config_checks
from rlvr_jax.training import optimizer as optimizer_lib
from rlvr_jax.training import step as step_lib


def _rollout_batch(config, model, tokenizer) -> tuple[dict, int]:
  """The default run's update batch: 6 prompts x 4 sampled responses; returns (batch, P)."""
  c = config
  checked = config_checks.preflight(config)
  train = checked.sources.train
  shots = prompts_lib.draw_examples(train, k=c.data.few_shot, seed=c.data.seed)
  records = prompts_lib.draw_examples(train, k=c.rl.update_groups, seed=c.data.seed + 1)
  texts = [prompts_lib.render_prompt(
      r, template=c.data.template, instruction=c.data.instruction,
      system_prompt=c.data.system_prompt, tokenizer=tokenizer, few_shot_examples=shots)
           for r in records for _ in range(c.rl.group_size)]
  sampler = sampler_lib.Sampler(model, tokenizer, max_prompt_len=c.rl.max_prompt_len,
                                max_new_tokens=c.rl.max_new_tokens)
  out = sampler.generate(texts, key=jax.random.key(0), temperature=c.rl.temperature,
                         stop_strings=tuple(c.rl.stop_strings))
  rng = np.random.default_rng(0)
  rewards = rng.integers(0, 2, len(texts)).astype(np.float32).reshape(-1, c.rl.group_size)
  adv = (rewards - rewards.mean(1, keepdims=True)).reshape(-1)
  response_mask = np.asarray(out.response_mask, np.float32)
  batch = {"tokens": np.asarray(out.tokens, np.int32),
           "input_mask": np.asarray(out.input_mask, bool),
           "response_mask": response_mask,
           "old_logp": np.asarray(out.logp, np.float32),
           "advantages": (adv[:, None] * response_mask).astype(np.float32)}
  return batch, sampler.prompt_len


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
  args = parser.parse_args()

  c = default_config.get_config()
  model, tokenizer, _ = loader.load_model(c.model.source, dtype="float32",
                                          param_dtype="float32", remat=c.model.remat)
  batch, p = _rollout_batch(c, model, tokenizer)
  b, s = batch["tokens"].shape
  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optimizer_lib.make_optimizer(
      lr=c.optim.lr, warmup_steps=0, total_steps=16, decay=c.optim.decay,
      weight_decay=c.optim.weight_decay, grad_clip=c.optim.grad_clip, b1=c.optim.b1,
      b2=c.optim.b2, eps=c.optim.eps)
  opt_state = optimizer.init(params)
  loss_config = step_lib.LossConfig.from_config(c)
  update = step_lib.jit_update_step(graphdef, optimizer=optimizer, prompt_len=p,
                                    num_micro=c.rl.micro_batches, loss_config=loss_config,
                                    donate=False)
  plain = batch
  batch = dict(plain)
  batch["tokens"], batch["input_mask"] = shared_prompt.align_prefix(
      plain["tokens"], plain["input_mask"], prompt_len=p)
  full = shared_prompt.prompt_sharing(batch["tokens"], batch["input_mask"], prompt_len=p,
                                      group_size=c.rl.group_size)
  packed = full._replace(packed=shared_prompt.pack_capacity(
      batch["response_mask"], num_micro=c.rl.micro_batches, block=full.share, shards=1))
  variants = {"unshared": None, "groups shared": full._replace(prefix_len=0),
              "groups + prefix shared": full, "+ responses packed": packed}
  # Unshared runs the sampler's rows as they are (today's path); the shared
  # variants run them after `align_prefix` (the trainer's path).
  batches = {name: jax.device_put(plain if sharing is None else batch)
             for name, sharing in variants.items()}
  times = {name: [] for name in variants}
  losses = {}
  compile_s = {}
  for name, sharing in variants.items():
    t0 = time.perf_counter()
    _, _, metrics = update(params, rest, opt_state, batches[name], sharing=sharing)
    losses[name] = float(metrics["policy/loss"])
    compile_s[name] = time.perf_counter() - t0
  for _ in range(args.repeats):
    for name, sharing in variants.items():
      t0 = time.perf_counter()
      new_params, _, _ = update(params, rest, opt_state, batches[name], sharing=sharing)
      jax.block_until_ready(new_params)
      times[name].append(time.perf_counter() - t0)

  best = {name: min(t) for name, t in times.items()}
  print(f"update batch: {b} rows = {b // c.rl.group_size} groups x {c.rl.group_size}, "
        f"P = {p}, T = {s - p}, batch-wide prefix {full.prefix_len} tokens, "
        f"{c.rl.micro_batches} micro-batches, float32, {jax.devices()[0].platform}")
  print(f"{'variant':<24}{'positions':>10}{'best s':>9}{'median s':>10}{'first s':>9}"
        f"{'speedup':>9}{'loss':>12}")
  for name, sharing in variants.items():
    positions = b * (s - 1) if sharing is None else shared_prompt.shared_tokens(
        batch_rows=b, prompt_len=p, seq_len=s, share=sharing.share,
        prefix_len=sharing.prefix_len,
        packed_rows=sharing.packed // (s - p) * c.rl.micro_batches)
    print(f"{name:<24}{positions:>10}{best[name]:>9.3f}{np.median(times[name]):>10.3f}"
          f"{compile_s[name]:>9.1f}{best['unshared'] / best[name]:>9.2f}x"
          f"{losses[name]:>12.6f}")
  load = os.getloadavg()[0]
  print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} cores")
  print(json.dumps({
      "shared_s": round(best["groups + prefix shared"], 4),
      "unshared_s": round(best["unshared"], 4),
      "ratio": round(best["unshared"] / best["groups + prefix shared"], 3),
      "groups_only_s": round(best["groups shared"], 4),
      "packed_s": round(best["+ responses packed"], 4),
      "packed_ratio": round(best["unshared"] / best["+ responses packed"], 3),
      "share": full.share, "prefix_len": full.prefix_len, "load_avg_1m": round(load, 2)}))


if __name__ == "__main__":
  main()
