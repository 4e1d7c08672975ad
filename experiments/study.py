r"""The reproduction study, version 2: `python -m experiments.study`.

  python -m experiments.study --workdir=runs/study
  python -m experiments.study --workdir=runs/s --config.study.methods=grpo,delta \
      --config.study.seeds=0,1 --config.data.task=chain_sum
  python -m experiments.study --config=experiments/configs/study.py:tiny --workdir=/tmp/st

Trains every method of `--config.study.methods` (GRPO, DelTA, SCRL, DelTA+SCRL)
with every seed of `--config.study.seeds` from the same config
(`experiments/configs/study.py`), and builds RELEX's model from the first
`study.relex_fraction` of each GRPO run's steps, extrapolated to its last
step (METHODS.md 4). Every model is measured by the same code on the same
held-out problems:

Outcome (`evaluation/study_stats.py`): greedy accuracy per seed, its mean and
sample std; the paired difference to GRPO on the same seed (mean over seeds)
and the exact McNemar (sign) test on the discordant pairs pooled over
problems and seeds; the same test against the base model (its verdicts
repeated once per seed), beside the count of seeds significant on their own;
pass@k at temperature 1 (`evaluation/evaluate.py`'s loop, `passk.py`'s
estimator) on the first `study.passk_problems`; the wall time of each run.

Mechanisms (`training/study_mechanisms.py`), from the same runs:
  - DelTA: mean coefficient per token class and step (the trainer's
    `delta/coef_mean/<class>` metrics);
  - SCRL: solve rate per subproblem position on `study.scrl_eval_problems`
    held-out problems asked as greedy curriculum prompts before and after
    training, and per step the share of curriculum responses that pass the
    prefix rule (`scrl/prefix_pass_frac`);
  - RELEX: per GRPO run, the rank-1 energy fraction and the R^2 of the
    linear coefficient fit (`relex/diagnostics.py`), and for two fit windows,
    from step 0 and after Adam's first step, the extrapolated model's
    held-out accuracy and its relative distance to the real final
    checkpoint, ||theta* - theta_T|| / ||theta_T - theta_0||. The headline
    (the `relex` row) is `study.relex_base_step`'s.

Writes into `--workdir`: one folder per run (the trainer's workdir) and
  study.md         the outcome table and the three mechanism tables
  study.json       every number
  study.png        training accuracy per method (mean over seeds) and
                   held-out accuracy per seed
  mechanisms.png   DelTA per class and step, SCRL per position and step,
                   RELEX per window
and ends by printing the outcome table and one JSON line {"methods": {name:
{mean, std, seeds}}, "base": accuracy}. A finished run is not run again, so
an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from typing import Any, Collection, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments.configs import study as study_config
from rlvr_jax import checkpoints
from rlvr_jax.evaluation import evaluate
from rlvr_jax.evaluation import heldout
from rlvr_jax.evaluation import study_stats
from rlvr_jax.relex import pipeline as relex_pipeline
from rlvr_jax.rewards import scorers
from rlvr_jax.rewards import scrl_blocks
from rlvr_jax.training import loop
from rlvr_jax.training import metrics as metrics_lib
from rlvr_jax.training import study_mechanisms

# method -> algo overrides of the study config; RELEX trains nothing.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "delta": {"delta": True},
    "scrl": {"advantage": "scrl"},
    "delta_scrl": {"advantage": "scrl", "delta": True},
    "relex": {},
}
RELEX_BASES = (0, 1)  # theta_0 of the two fit windows: step 0, after Adam's first step.

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags (defined only when run as a program, so that tests can
  import this module next to experiments.train, which also has --config)."""
  config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "study.py"),
      "The study config; the regime and the study's own settings are "
      "--config.study.<field>, every run field --config.<path>=<value>.")
  flags.DEFINE_string("workdir", "runs/study", "Runs, tables, plots.")
  flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/rlvr_jax/jax"),
                      "Persistent XLA compilation cache ('' = off).")


def study_methods(config: ml_collections.ConfigDict) -> list[str]:
  """`study.methods` in METHODS order ('grpo,delta' from the command line is split)."""
  given = [m.strip() for item in config.study.methods for m in str(item).split(",")
           if m.strip()]
  return [m for m in METHODS if m in given] + [m for m in given if m not in METHODS]


def relex_last_step(config: ml_collections.ConfigDict) -> int:
  """The last observed step of RELEX's window: round(fraction * steps), at least 3.

  Three steps leave the window after Adam's first step (steps 2..last) two
  checkpoints, the fewest a line is fitted to.
  """
  s = config.study
  last = max(3, round(s.relex_fraction * s.steps))
  if last >= s.steps:
    raise ValueError(
        f"--config.study.relex_fraction={s.relex_fraction} with --config.study.steps="
        f"{s.steps}: RELEX observes steps 1..{last} and has no later step to extrapolate "
        "to; the study needs at least 4 steps.")
  return last


def regime_from_flags(config: ml_collections.ConfigDict,
                      overridden: Collection[str]) -> ml_collections.ConfigDict:
  """The config with `study`'s regime copied onto the run fields (after the flags).

  Args:
    config: the parsed --config.
    overridden: the --config.<path> flags given (paths such as 'rl.steps').

  Raises:
    ValueError: a run field of the regime was given directly.
  """
  for key, path in study_config.REGIME_FIELDS.items():
    if path in overridden:
      raise ValueError(f"--config.{path}: the study's regime is set by "
                       f"--config.study.{key} (it sets {path} for every run).")
  return study_config.apply_regime(config)


def check_arguments(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the --config.study.* flag the study cannot run with."""
  s = config.study
  methods = study_methods(config)
  unknown = [m for m in methods if m not in METHODS]
  if unknown or not methods:
    raise ValueError(f"--config.study.methods: unknown {unknown} (or none given); choose "
                     f"from {list(METHODS)}.")
  if "relex" in methods and "grpo" not in methods:
    raise ValueError("--config.study.methods: relex extrapolates the grpo runs; add grpo.")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise ValueError(f"--config.study.seeds={s.seeds}: give distinct seeds.")
  for key, path in study_config.REGIME_FIELDS.items():
    section, field = path.split(".")
    if config[section][field] != s[key]:
      raise ValueError(
          f"--config.{path}={config[section][field]} differs from --config.study.{key}="
          f"{s[key]}: the study's regime is set by --config.study.{key} alone.")
  if s.passk_problems > s.eval_size or s.scrl_eval_problems > s.eval_size:
    raise ValueError(f"--config.study.passk_problems={s.passk_problems} and "
                     f"--config.study.scrl_eval_problems={s.scrl_eval_problems} must be <= "
                     f"--config.study.eval_size={s.eval_size}.")
  lengths = {m: method_config(config, m, s.seeds[0]).rl.max_new_tokens for m in methods}
  longest = max(lengths, key=lengths.get)
  if lengths[longest] > config.train.eval_max_new_tokens:
    raise ValueError(
        f"--config.train.eval_max_new_tokens={config.train.eval_max_new_tokens} is shorter "
        f"than {longest}'s training responses ({lengths[longest]} tokens: "
        "--config.rl.max_new_tokens or --config.study.scrl_max_new_tokens): its answers "
        "would be measured truncated. Every method is evaluated with one budget; make it "
        "the longest.")
  if "relex" in methods:
    relex_last_step(config)
    if s.relex_base_step not in RELEX_BASES:
      raise ValueError(f"--config.study.relex_base_step={s.relex_base_step}: one of "
                       f"{RELEX_BASES}.")


def method_config(base: ml_collections.ConfigDict, method: str, seed: int, *,
                  with_relex: bool = False) -> ml_collections.ConfigDict:
  """The study config with the method's algo fields, the seed and the checkpoints set.

  SCRL's runs take `study.scrl_max_prompt_len` / `scrl_max_new_tokens`; a
  GRPO run RELEX extrapolates keeps every step of RELEX's window.
  """
  c = ml_collections.ConfigDict(base.to_dict())
  for key, value in METHODS[method].items():
    c.algo[key] = value
  if c.algo.advantage == "scrl":  # SCRL scores its own blocks: no user reward channels.
    c.reward.fn = ""
    c.reward.channel_weights = ""
    c.rl.max_prompt_len = c.study.scrl_max_prompt_len
    c.rl.max_new_tokens = c.study.scrl_max_new_tokens
  c.rl.seed = seed
  c.train.save_every = c.rl.steps  # The last step only, beyond the dense window.
  c.train.keep = 1
  c.train.dense_window = relex_last_step(c) if with_relex else 0
  return c


def _passk(trainer: loop.Trainer, num_samples: int, num_problems: int,
           seed: int) -> dict[str, float]:
  """pass@k, avg@n and maj@n of the trainer's current params.

  n samples at temperature 1 of the first `num_problems` held-out problems,
  with the trainer's own prompts, stop strings, checker and response length.
  """
  c = trainer.config
  bench = evaluate.Benchmark(name="eval", records=list(trainer.sources.eval[:num_problems]),
                             checker=c.reward.checker)
  key = jax.random.key(seed)
  generate = lambda prompts, b: trainer.eval_sampler.generate(
      prompts, key=jax.random.fold_in(key, b), temperature=1.0,
      stop_strings=tuple(c.rl.stop_strings), num_samples=num_samples,
      params=trainer.params)
  result = evaluate.evaluate_benchmark(
      bench, generate=generate, render=trainer.render, reward_fn=trainer.eval_reward_fn,
      num_samples=num_samples, batch_size=max(1, c.train.eval_batch_size // num_samples))
  return result.metrics()


def _curriculum_eval(trainer: loop.Trainer, num_problems: int) -> dict[str, Any]:
  """Greedy curriculum responses to the first held-out problems, scored per position.

  The problems are asked with SCRL's curriculum prompt (the trainer's
  `ScrlCredit`: the problem, its subproblems, K answer blocks) and scored
  with the training's block parser and checker.

  Returns:
    {'raw_sums', 'prefix_sums', 'counts': [J] (`position_accuracy` of r and
     of R), 'malformed': share of malformed responses}.
  """
  c, credit = trainer.config, trainer.credit
  records = list(trainer.sources.eval[:num_problems])
  texts, examples = credit.prompts(records)
  g = c.rl.group_size
  texts, chains = texts[::g], [e["subproblems"] for e in examples[::g]]
  out = trainer.sampler.generate(texts, key=jax.random.key(c.rl.seed), greedy=True,
                                 stop_strings=tuple(c.rl.stop_strings), params=trainer.params)

  def check(pred: str, gold: str) -> float:
    if trainer.pool is None:
      return scorers.exact_item(gold, pred)[0]
    return float(trainer.pool.score([gold], [pred])[0][0])

  scores = scrl_blocks.score_curriculum(
      np.asarray(out.tokens)[:, trainer.prompt_len:], np.asarray(out.response_mask),
      [[s["ground_truth"] for s in chain] for chain in chains], k=c.algo.scrl_k,
      decode=functools.partial(trainer.tokenizer.decode, skip_special_tokens=True),
      check=check)
  lengths = np.asarray([len(chain) for chain in chains])
  raw, counts = study_mechanisms.position_accuracy(scores.raw, lengths)
  prefix, _ = study_mechanisms.position_accuracy(scores.rewards, lengths)
  return {"raw_sums": raw.tolist(), "prefix_sums": prefix.tolist(),
          "counts": counts.tolist(), "malformed": float(np.mean(scores.malformed))}


def _read_correct(path: str) -> list[float]:
  with open(path) as f:
    return [float(x) for x in json.load(f)["correct"]]


def _save(path: str, result: Any) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)


def run_method(base: ml_collections.ConfigDict, method: str, seed: int, workdir: str,
               base_eval: str | None, *, with_relex: bool) -> list[dict[str, Any]]:
  """Trains one (method, seed) and measures it; GRPO also yields RELEX's row.

  Args:
    base: the study config.
    method: a key of METHODS other than 'relex'.
    seed: rl.seed.
    workdir: the study's folder; the run goes to <workdir>/<method>_s<seed>.
    base_eval: the base model's eval_before.json to reuse (None: compute it).
    with_relex: for 'grpo', also extrapolate the run with RELEX.

  Returns:
    One result dict per produced model: {'method', 'seed', 'accuracy',
    'correct' [Q], 'passk', 'steps_trained', 'seconds', ...}.
  """
  s = base.study
  with_relex = with_relex and method == "grpo"
  config = method_config(base, method, seed, with_relex=with_relex)
  run_dir = os.path.join(workdir, f"{method}_s{seed}")
  os.makedirs(run_dir, exist_ok=True)
  if base_eval is not None:
    shutil.copy(base_eval, os.path.join(run_dir, "eval_before.json"))
  start = time.perf_counter()
  trainer = loop.Trainer(config, run_dir)
  try:
    curriculum = {}
    if config.algo.advantage == "scrl":  # The params are the base model's until run().
      curriculum["before"] = _curriculum_eval(trainer, s.scrl_eval_problems)
    summary = trainer.run()
    seconds = time.perf_counter() - start
    row = {
        "method": method, "seed": seed, "accuracy": summary["accuracy_after"],
        "accuracy_before": summary["accuracy_before"], "p_value": summary["p_value"],
        "correct": _read_correct(os.path.join(run_dir, "eval_after.json")),
        "steps_trained": config.rl.steps, "seconds": seconds,
        "passk": _passk(trainer, s.passk_samples, s.passk_problems, seed),
    }
    if curriculum:
      curriculum["after"] = _curriculum_eval(trainer, s.scrl_eval_problems)
      row["curriculum"] = curriculum
    results = [row]
    if with_relex:
      results.append(_relex(trainer, run_dir, seed, seconds))
  finally:
    trainer.close()
  return results


def _relex(trainer: loop.Trainer, run_dir: str, seed: int,
           grpo_seconds: float) -> dict[str, Any]:
  """RELEX from the GRPO run's first steps, extrapolated to its last step, two windows.

  For each theta_0 in RELEX_BASES the window is (theta_0, last]; each fit's
  model is evaluated on the held-out set and compared with the real final
  params. The row's headline numbers are `study.relex_base_step`'s fit.
  """
  c = trainer.config
  last = relex_last_step(c)
  final = jax.device_get(trainer.params)
  base_params = jax.device_get(checkpoints.restore_params(
      os.path.join(run_dir, "checkpoints"), 0, target=trainer.params))
  with open(os.path.join(run_dir, "eval_before.json")) as f:
    before = np.asarray(json.load(f)["correct"], np.float32)
  fits = {}
  for base_step in RELEX_BASES:
    out_dir = f"{run_dir}_relex_b{base_step}"  # RELEX refuses a folder inside the run.
    start = time.perf_counter()
    diag = relex_pipeline.run(run_dir=run_dir, window=list(range(base_step + 1, last + 1)),
                              target_steps=[c.rl.steps], output_dir=out_dir,
                              base_step=base_step)
    relex_seconds = time.perf_counter() - start
    trainer.params = checkpoints.restore_params(os.path.join(out_dir, "checkpoints"),
                                                c.rl.steps, target=trainer.params)
    result = trainer.evaluate(f"relex from step {base_step}")
    fits[str(base_step)] = {
        "window": [base_step + 1, last], "accuracy": result.accuracy,
        "correct": result.correct.tolist(),
        "p_value": heldout.mcnemar_exact(before, result.correct),
        "relative_distance": study_mechanisms.relative_distance(
            jax.device_get(trainer.params), final, base_params),
        # RELEX's own, relative to its window's base: the same as the distance from step 0.
        "relex_relative_error": diag["summary"][f"relex/step_{c.rl.steps}/relative_error"],
        "energy_fraction": diag["summary"]["relex/energy_fraction"],
        "r2": diag["summary"]["relex/r2_weighted"],
        "relex_seconds": relex_seconds,
    }
    if base_step == c.study.relex_base_step:
      passk = _passk(trainer, c.study.passk_samples, c.study.passk_problems, seed)
    if not c.study.keep_checkpoints:
      shutil.rmtree(os.path.join(out_dir, "checkpoints"), ignore_errors=True)
  head = fits[str(c.study.relex_base_step)]
  return {
      "method": "relex", "seed": seed, "accuracy": head["accuracy"],
      "accuracy_before": float(before.mean()), "p_value": head["p_value"],
      "correct": head["correct"], "steps_trained": last,
      "seconds": grpo_seconds * last / c.rl.steps + head["relex_seconds"],
      "passk": passk, "fits": fits,
      "grpo_accuracy": float(np.mean(_read_correct(os.path.join(run_dir, "eval_after.json")))),
  }


# -- tables ---------------------------------------------------------------------------


def summarize(results: Sequence[dict[str, Any]], methods: Sequence[str],
              base_correct: Sequence[float] | None = None) -> dict[str, dict[str, Any]]:
  """{method: spread, pass@k means, minutes, significant seeds, paired vs base and grpo}.

  Args:
    results: the runs' result rows (`run_method`).
    methods: the methods, in table order.
    base_correct: [Q] the base model's held-out verdicts; given, every method
      gets 'vs_base', its paired comparison with the base model pooled over
      its seeds (the base repeated once per seed).
  """
  by_method = {m: sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
               for m in methods}
  table = {}
  for method, rows in by_method.items():
    if not rows:
      continue
    entry = study_stats.seed_spread([r["accuracy"] for r in rows])
    entry.update({
        "steps_trained": rows[0]["steps_trained"],
        "minutes": float(np.mean([r["seconds"] for r in rows]) / 60),
        "minutes_seeds": [r["seconds"] / 60 for r in rows],
        "significant_seeds": sum(r["p_value"] < 0.05 and r["accuracy"] > r["accuracy_before"]
                                 for r in rows),
    })
    for key in rows[0]["passk"]:
      spread = study_stats.seed_spread([r["passk"][key] for r in rows])
      entry[key], entry[key + "_std"] = spread["mean"], spread["std"]
    if base_correct is not None:
      entry["vs_base"] = study_stats.paired_comparison(
          np.asarray([r["correct"] for r in rows]),
          np.tile(np.asarray(base_correct, np.float32), (len(rows), 1)))
    grpo = {r["seed"]: r for r in by_method.get("grpo", [])}
    if method != "grpo" and all(r["seed"] in grpo for r in rows):
      entry["vs_grpo"] = study_stats.paired_comparison(
          np.asarray([r["correct"] for r in rows]),
          np.asarray([grpo[r["seed"]]["correct"] for r in rows]))
    table[method] = entry
  return table


def format_table(table: dict[str, dict[str, Any]], base: float, num_seeds: int) -> str:
  """The Markdown outcome table (percentages; differences in points)."""
  some = next(iter(table.values()))
  ks = [k.split("/", 1)[1] for k in some if k.startswith("eval/pass@") and
        not k.endswith("_std")]
  head = (["method", "steps trained", f"greedy accuracy (mean ± std, {num_seeds} seeds)",
           "per seed", "Δ vs GRPO (mean of seeds)", "paired test vs GRPO (wins/losses, p)",
           "p<0.05 vs base", "paired test vs base (wins/losses, p)"]
          + [f"{k} (T=1)" for k in ks] + ["min / run"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines.append("| base model | 0 | " + f"{100 * base:.1f}" + " |" * (len(head) - 3) + " |")
  for method, e in table.items():
    vs = e.get("vs_grpo")
    cells = [method, str(e["steps_trained"]),
             f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}",
             " / ".join(f"{100 * a:.1f}" for a in e["seeds"]),
             f"{100 * vs['diff_mean']:+.1f}" if vs else "",
             f"{vs['wins']}/{vs['losses']}, p = {vs['p_value']:.3g}" if vs else "",
             f"{e['significant_seeds']}/{len(e['seeds'])}"]
    base_vs = e.get("vs_base")
    cells.append(f"{base_vs['wins']}/{base_vs['losses']}, p = {base_vs['p_value']:.3g}"
                 if base_vs else "")
    cells += [f"{100 * e['eval/' + k]:.1f} ± {100 * e['eval/' + k + '_std']:.1f}" for k in ks]
    cells.append(f"{e['minutes']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _metric_rows(workdir: str, results: Sequence[dict[str, Any]],
                 method: str) -> list[list[dict[str, Any]]]:
  """The metrics.jsonl rows of every seed's run of `method`."""
  return [metrics_lib.read_jsonl(os.path.join(workdir, f"{method}_s{r['seed']}",
                                              "metrics.jsonl"))
          for r in results if r["method"] == method]


def _per_step(runs: Sequence[list[dict[str, Any]]], key: str) -> tuple[list[int], list[float]]:
  """Steps with `key` and its mean over the runs that logged it there."""
  values: dict[int, list[float]] = {}
  for rows in runs:
    for row in rows:
      if row.get(key) is not None:
        values.setdefault(row["step"], []).append(row[key])
  steps = sorted(values)
  return steps, [float(np.mean(values[s])) for s in steps]


def delta_mechanism(workdir: str, results: Sequence[dict[str, Any]],
                    method: str) -> dict[str, Any]:
  """Per class: c~ per step (mean over seeds) and pooled over steps and seeds."""
  runs = _metric_rows(workdir, results, method)
  out = {}
  for name in study_mechanisms.TOKEN_CLASSES:
    pooled = {}
    for side in ("coef_mean", "coef_mean_pos", "coef_mean_neg"):
      pairs = [(row[f"delta/{side}/{name}"], row[f"delta/tokens/{name}"]) for rows in runs
               for row in rows if row.get(f"delta/{side}/{name}") is not None]
      # Sides pool with the class's token count of the step (an approximation
      # for the one-sided means; exact for coef_mean).
      pooled[side] = study_stats.weighted_mean([p[0] for p in pairs], [p[1] for p in pairs])
    tokens = sum(row.get(f"delta/tokens/{name}") or 0.0 for rows in runs for row in rows)
    steps, means = _per_step(runs, f"delta/coef_mean/{name}")
    out[name] = {**pooled, "tokens": tokens, "steps": steps, "per_step": means}
  return out


def scrl_mechanism(workdir: str, results: Sequence[dict[str, Any]],
                   method: str) -> dict[str, Any]:
  """Position solve rates before/after (pooled over seeds) and prefix shares per step."""
  rows = [r for r in results if r["method"] == method]
  out: dict[str, Any] = {}
  for when in ("before", "after"):
    cur = [r["curriculum"][when] for r in rows]
    counts = np.sum([c["counts"] for c in cur], axis=0)
    out[when] = {
        "raw": (np.sum([c["raw_sums"] for c in cur], axis=0) / np.maximum(counts, 1)).tolist(),
        "prefix": (np.sum([c["prefix_sums"] for c in cur], axis=0)
                   / np.maximum(counts, 1)).tolist(),
        "counts": counts.tolist(),
        "malformed": float(np.mean([c["malformed"] for c in cur])),
    }
  runs = _metric_rows(workdir, results, method)
  for key in ("scrl/prefix_pass_frac", "scrl/prefix_cut_frac"):
    steps, means = _per_step(runs, key)
    out[key] = {"steps": steps, "per_step": means}
  return out


def mechanism_tables(mechanisms: dict[str, Any]) -> str:
  """The Markdown tables of the mechanism measurements present."""
  parts = []
  for method in ("delta", "delta_scrl"):
    if method in mechanisms.get("delta", {}):
      d = mechanisms["delta"][method]
      lines = [f"DelTA coefficient c~ by token class ({method}; tokens with A != 0, "
               "pooled over steps and seeds)", "",
               "| class | mean c~ | A > 0 | A < 0 | tokens |", "|---|---|---|---|---|"]
      lines += [f"| {n} | {d[n]['coef_mean']:.4f} | {d[n]['coef_mean_pos']:.4f} | "
                f"{d[n]['coef_mean_neg']:.4f} | {int(d[n]['tokens'])} |" for n in d]
      parts.append("\n".join(lines))
  for method in ("scrl", "delta_scrl"):
    if method in mechanisms.get("scrl", {}):
      d = mechanisms["scrl"][method]
      lines = [f"SCRL solve rate per subproblem position on held-out curriculum prompts "
               f"({method}; greedy; r = block right, R = after the prefix rule)", "",
               "| position | problems | r before | r after | R before | R after |",
               "|---|---|---|---|---|---|"]
      for j, n in enumerate(d["before"]["counts"]):
        lines.append(f"| p{j + 1} | {int(n)} | {100 * d['before']['raw'][j]:.1f} | "
                     f"{100 * d['after']['raw'][j]:.1f} | {100 * d['before']['prefix'][j]:.1f}"
                     f" | {100 * d['after']['prefix'][j]:.1f} |")
      share = d["scrl/prefix_pass_frac"]["per_step"]
      lines.append("\nShare of curriculum responses passing the prefix rule, per step: "
                   + ", ".join(f"{100 * v:.0f}%" for v in share))
      parts.append("\n".join(lines))
  if mechanisms.get("relex"):
    lines = ["RELEX per GRPO run (rank 1, linear fit; distance = ||theta* - theta_T|| / "
             "||theta_T - theta_0||)", "",
             "| seed | GRPO final | window | energy fraction | R^2 | accuracy | distance |",
             "|---|---|---|---|---|---|---|"]
    for r in mechanisms["relex"]:
      for base_step, f in r["fits"].items():
        lines.append(f"| {r['seed']} | {100 * r['grpo_accuracy']:.1f} | steps "
                     f"{f['window'][0]}..{f['window'][1]} (theta_0 = step {base_step}) | "
                     f"{f['energy_fraction']:.4f} | {f['r2']:.4f} | "
                     f"{100 * f['accuracy']:.1f} | {f['relative_distance']:.3f} |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


# -- plots ----------------------------------------------------------------------------


def _figure(width: float, height: float, rows: int, cols: int):
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(width, height))
  backend_agg.FigureCanvasAgg(fig)
  return fig, fig.subplots(rows, cols, squeeze=False)


def plot(workdir: str, results: Sequence[dict[str, Any]], table: dict[str, dict[str, Any]],
         base: float, path: str) -> str:
  """Training accuracy per step (mean over seeds) and held-out accuracy per seed."""
  fig, axes = _figure(11, 4, 1, 2)
  curves, final = axes[0]
  for method in table:
    if method != "relex":
      steps, means = _per_step(_metric_rows(workdir, results, method), "reward/accuracy")
      curves.plot(steps, means, marker="o", markersize=3, label=method)
  curves.set(xlabel="step", ylabel="training accuracy (plain prompts, sampled)",
             title="training accuracy, mean over seeds")
  curves.grid(alpha=0.3)
  curves.legend()
  names = list(table)
  for i, method in enumerate(names):
    seeds = table[method]["seeds"]
    final.scatter([i] * len(seeds), seeds, alpha=0.6)
    final.errorbar([i], [table[method]["mean"]], yerr=[table[method]["std"]], fmt="_",
                   color="black", capsize=6, markersize=20)
  final.axhline(base, color="gray", linestyle="--", label="base model")
  final.set_xticks(range(len(names)), names)
  final.set(ylabel="held-out greedy accuracy", title="held-out accuracy per seed (bar: mean ± std)")
  final.grid(alpha=0.3)
  final.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def plot_mechanisms(mechanisms: dict[str, Any], path: str) -> str:
  """DelTA c~ per class and step, SCRL per position and step, RELEX per window."""
  fig, axes = _figure(16, 4, 1, 4)
  delta_ax, position_ax, prefix_ax, relex_ax = axes[0]
  for method, d in mechanisms.get("delta", {}).items():
    for name, e in d.items():
      delta_ax.plot(e["steps"], e["per_step"], marker="o", markersize=3,
                    label=f"{method}: {name}")
  delta_ax.axhline(1.0, color="gray", linewidth=0.8)
  delta_ax.set(xlabel="step", ylabel="mean c~ (A != 0)", title="DelTA c~ by token class")
  for method, d in mechanisms.get("scrl", {}).items():
    j = np.arange(len(d["before"]["raw"]))
    position_ax.bar(j - 0.2, d["before"]["raw"], width=0.4, label=f"{method} before")
    position_ax.bar(j + 0.2, d["after"]["raw"], width=0.4, label=f"{method} after")
    position_ax.set_xticks(j, [f"p{i + 1}" for i in j])
    for key in ("scrl/prefix_pass_frac", "scrl/prefix_cut_frac"):
      prefix_ax.plot(d[key]["steps"], d[key]["per_step"], marker="o", markersize=3,
                     label=f"{method}: {key.split('/')[1]}")
  position_ax.set(ylabel="held-out solve rate r", title="SCRL per subproblem position")
  prefix_ax.set(xlabel="step", ylabel="share of curriculum responses",
                title="SCRL prefix rule per step")
  for i, r in enumerate(mechanisms.get("relex", [])):
    relex_ax.scatter([0], [r["grpo_accuracy"]], color="black",
                     label="GRPO final" if i == 0 else None)
    for x, (base_step, f) in enumerate(r["fits"].items(), start=1):
      relex_ax.scatter([x], [f["accuracy"]], color=f"C{x}",
                       label=f"RELEX theta_0 = step {base_step}" if i == 0 else None)
  relex_ax.set(ylabel="held-out greedy accuracy", title="RELEX vs the real final model")
  relex_ax.set_xticks(range(1 + len(RELEX_BASES)),
                      ["GRPO"] + [f"from {b}" for b in RELEX_BASES])
  for ax in axes[0]:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# -- the study ------------------------------------------------------------------------


def run_study(base: ml_collections.ConfigDict, *, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) every (method, seed), then writes the tables and the plots.

  Args:
    base: the study config (`experiments/configs/study.py`): the run fields
      and `study` (regime, seeds, methods, measurement sizes).
    workdir: the study's folder.

  Returns:
    {'base': base greedy accuracy, 'methods': summarize(...), 'mechanisms',
     'runs': [...], 'table': the Markdown of study.md, 'config', 'minutes'}.
  """
  check_arguments(base)
  s = base.study
  methods = study_methods(base)
  workdir = os.path.abspath(workdir)  # orbax wants absolute checkpoint paths
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  results, base_eval = [], None
  for seed in s.seeds:
    for method in [m for m in methods if m != "relex"]:
      run_dir = os.path.join(workdir, f"{method}_s{seed}")
      path = os.path.join(run_dir, "study_result.json")
      if os.path.exists(path):
        with open(path) as f:
          produced = json.load(f)
      else:
        logging.info("study: %s seed %d", method, seed)
        produced = run_method(base, method, seed, workdir, base_eval,
                              with_relex="relex" in methods)
        _save(path, produced)
        if not s.keep_checkpoints:
          shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
      results += produced
      base_eval = base_eval or os.path.join(run_dir, "eval_before.json")
  with open(base_eval) as f:
    base_eval_json = json.load(f)
  base_accuracy = float(base_eval_json["accuracy"])
  table = summarize(results, methods, base_eval_json["correct"])
  mechanisms: dict[str, Any] = {"delta": {}, "scrl": {}, "relex": []}
  for method in methods:
    if METHODS[method].get("delta"):
      mechanisms["delta"][method] = delta_mechanism(workdir, results, method)
    if METHODS[method].get("advantage") == "scrl":
      mechanisms["scrl"][method] = scrl_mechanism(workdir, results, method)
  mechanisms["relex"] = [{k: r[k] for k in ("seed", "fits", "grpo_accuracy")}
                         for r in results if r["method"] == "relex"]
  markdown = format_table(table, base_accuracy, len(s.seeds))
  extra = mechanism_tables(mechanisms)
  document = markdown + ("\n\n" + extra if extra else "")
  with open(os.path.join(workdir, "study.md"), "w") as f:
    f.write(document + "\n")
  study = {"base": base_accuracy, "methods": table, "mechanisms": mechanisms, "runs": results,
           "table": document, "config": base.to_dict(),
           "minutes": (time.perf_counter() - start) / 60}
  _save(os.path.join(workdir, "study.json"), study)
  plot(workdir, results, table, base_accuracy, os.path.join(workdir, "study.png"))
  plot_mechanisms(mechanisms, os.path.join(workdir, "mechanisms.png"))
  return study


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  try:
    config = regime_from_flags(FLAGS.config,
                               config_flags.get_override_values(FLAGS["config"]))
    check_arguments(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  study = run_study(config, workdir=FLAGS.workdir)
  table = study["methods"]
  print(study["table"], flush=True)
  print(json.dumps({"methods": {m: {k: table[m][k] for k in ("mean", "std", "seeds")}
                                for m in table}, "base": study["base"]}), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
