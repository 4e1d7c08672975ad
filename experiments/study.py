r"""The small-scale reproduction study: `python -m experiments.study`.

  python -m experiments.study --workdir=runs/study                # 5 methods x 3 seeds
  python -m experiments.study --seeds=0,1 --methods=grpo,delta    # a subset

Trains SmolLM2-135M-Instruct with GRPO, DelTA, SCRL and DelTA+SCRL from the
same config (`experiments/configs/study.py`: task, budget, held-out set), and
builds RELEX's model from the first 20% of each GRPO run's checkpoints,
extrapolated to the GRPO run's last step (METHODS.md 4). Every model is
measured by the same code on the same held-out problems:
  - greedy accuracy on all of them (the trainer's `eval/accuracy`; the base
    model's is computed once and shared by every run);
  - pass@k for k = 1, 2, 4, ... n from n samples at temperature 1 on the
    first `--passk_problems` of them (unbiased estimator).

Writes into `--workdir`: one folder per run (the trainer's workdir), and
  study.md      the table (mean and sample std over seeds)
  study.json    every number
  study.png     training reward per method (mean over seeds) and held-out
                accuracy per seed
and ends by printing one JSON line: {"methods": {name: {mean, std, seeds}},
"base": accuracy}. A finished run is not run again, so an interrupted study
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from rlvr_jax import checkpoints
from rlvr_jax.evaluation import evaluate
from rlvr_jax.evaluation import heldout
from rlvr_jax.relex import pipeline as relex_pipeline
from rlvr_jax.training import loop
from rlvr_jax.training import metrics as metrics_lib

# method -> algo overrides of the study config; RELEX trains nothing.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "delta": {"delta": True},
    "scrl": {"advantage": "scrl"},
    "delta_scrl": {"advantage": "scrl", "delta": True},
    "relex": {},
}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags (defined only when run as a program, so that tests can
  import this module next to experiments.train, which also has --config)."""
  config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "study.py"),
      "The shared run config; override fields with --config.<path>=<value>.")
  flags.DEFINE_string("workdir", "runs/study", "Runs, table, plot.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (rl.seed) of every method.")
  flags.DEFINE_list("methods", list(METHODS), f"Subset of {list(METHODS)}.")
  flags.DEFINE_integer("passk_samples", 4, "n samples per problem for pass@k.")
  flags.DEFINE_integer("passk_problems", 24,
                       "Held-out problems (the first ones) sampled for pass@k.")
  flags.DEFINE_bool("keep_checkpoints", False,
                    "Keep every run's checkpoints (about 6 GB a SmolLM2 run).")
  flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/rlvr_jax/jax"),
                      "Persistent XLA compilation cache ('' = off).")


def relex_window(config: ml_collections.ConfigDict) -> list[int]:
  """Steps RELEX observes: 1 .. 20% of the run (at least 2, METHODS.md 4)."""
  last = max(2, round(0.2 * config.rl.steps))
  if config.train.dense_window < last:
    raise ValueError(f"config.train.dense_window={config.train.dense_window}: RELEX needs "
                     f"every step up to {last} (20% of rl.steps={config.rl.steps}).")
  return list(range(1, last + 1))


def method_config(base: ml_collections.ConfigDict, method: str,
                  seed: int) -> ml_collections.ConfigDict:
  """The study config with the method's algo fields and the seed set."""
  c = ml_collections.ConfigDict(base.to_dict())
  for key, value in METHODS[method].items():
    c.algo[key] = value
  if c.algo.advantage == "scrl":  # SCRL scores its own blocks: no user reward channels.
    c.reward.fn = ""
    c.reward.channel_weights = ""
  c.rl.seed = seed
  return c


def _passk(trainer: loop.Trainer, num_samples: int, num_problems: int,
           seed: int) -> dict[str, float]:
  """pass@k, avg@n and maj@n of the trainer's current params.

  n samples at temperature 1 of the first `num_problems` held-out problems,
  with the trainer's own prompts, stop strings, checker and response length.
  """
  c = trainer.config
  bench = evaluate.Benchmark(name="eval", records=trainer.sources.eval[:num_problems],
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


def _save(path: str, result: dict[str, Any]) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=1)
  os.replace(path + ".tmp", path)


def run_method(base: ml_collections.ConfigDict, method: str, seed: int, workdir: str,
               base_eval: str | None, *, with_relex: bool, passk_samples: int,
               passk_problems: int) -> list[dict[str, Any]]:
  """Trains one (method, seed) and measures it; GRPO also yields RELEX's row.

  Args:
    base: the study config.
    method: a key of METHODS other than 'relex'.
    seed: rl.seed.
    workdir: the study's folder; the run goes to <workdir>/<method>_s<seed>.
    base_eval: the base model's eval_before.json to reuse (None: compute it).
    with_relex: for 'grpo', also extrapolate the run with RELEX.
    passk_samples: n samples per problem for pass@k.
    passk_problems: held-out problems (the first ones) sampled for pass@k.

  Returns:
    One result dict per produced model: {'method', 'seed', 'accuracy',
    'passk', 'steps_trained', 'seconds', ...}.
  """
  config = method_config(base, method, seed)
  run_dir = os.path.join(workdir, f"{method}_s{seed}")
  os.makedirs(run_dir, exist_ok=True)
  if base_eval is not None:
    shutil.copy(base_eval, os.path.join(run_dir, "eval_before.json"))
  start = time.perf_counter()
  trainer = loop.Trainer(config, run_dir)
  try:
    summary = trainer.run()
    seconds = time.perf_counter() - start
    results = [{
        "method": method, "seed": seed, "accuracy": summary["accuracy_after"],
        "accuracy_before": summary["accuracy_before"], "p_value": summary["p_value"],
        "steps_trained": config.rl.steps, "seconds": seconds,
        "passk": _passk(trainer, passk_samples, passk_problems, seed),
    }]
    if method == "grpo" and with_relex:
      results.append(_relex(trainer, run_dir, seed, seconds, passk_samples, passk_problems))
  finally:
    trainer.close()
  return results


def _relex(trainer: loop.Trainer, run_dir: str, seed: int, grpo_seconds: float,
           passk_samples: int, passk_problems: int) -> dict[str, Any]:
  """RELEX from the GRPO run's first 20%, extrapolated to its last step."""
  c = trainer.config
  window = relex_window(c)
  out_dir = run_dir + "_relex"  # RELEX refuses a folder inside the run.
  start = time.perf_counter()
  diag = relex_pipeline.run(run_dir=run_dir, window=window, target_steps=[c.rl.steps],
                            output_dir=out_dir)
  relex_seconds = time.perf_counter() - start
  trainer.params = checkpoints.restore_params(os.path.join(out_dir, "checkpoints"),
                                              c.rl.steps, target=trainer.params)
  result = trainer.evaluate("relex")
  with open(os.path.join(run_dir, "eval_before.json")) as f:
    before = np.asarray(json.load(f)["correct"], np.float32)
  train_seconds = grpo_seconds * window[-1] / c.rl.steps
  return {
      "method": "relex", "seed": seed, "accuracy": result.accuracy,
      "accuracy_before": float(before.mean()),
      "p_value": heldout.mcnemar_exact(before, result.correct),
      "steps_trained": window[-1], "seconds": train_seconds + relex_seconds,
      "relex_seconds": relex_seconds,
      "relative_error": diag["summary"][f"relex/step_{c.rl.steps}/relative_error"],
      "passk": _passk(trainer, passk_samples, passk_problems, seed),
  }


def summarize(results: Sequence[dict[str, Any]],
              methods: Sequence[str]) -> dict[str, dict[str, Any]]:
  """{method: {mean, std, seeds, pass@k means, ...}} over the seeds' results."""
  table = {}
  for method in methods:
    rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
    if not rows:
      continue
    acc = np.asarray([r["accuracy"] for r in rows])
    entry = {
        "mean": float(acc.mean()),
        "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "seeds": [float(a) for a in acc],
        "steps_trained": rows[0]["steps_trained"],
        "minutes": float(np.mean([r["seconds"] for r in rows]) / 60),
        "significant_seeds": sum(r["p_value"] < 0.05 and r["accuracy"] > r["accuracy_before"]
                                 for r in rows),
    }
    for key in rows[0]["passk"]:
      values = np.asarray([r["passk"][key] for r in rows])
      entry[key] = float(values.mean())
      entry[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    table[method] = entry
  return table


def format_table(table: dict[str, dict[str, Any]], base: float, num_seeds: int) -> str:
  """The Markdown table of the study (percentages)."""
  some = next(iter(table.values()))
  ks = [k.split("/", 1)[1] for k in some if k.startswith("eval/pass@") and
        not k.endswith("_std")]
  head = (["method", "steps trained", f"greedy accuracy (mean ± std, {num_seeds} seeds)",
           "per seed", "p<0.05 vs base"] + [f"{k} (T=1)" for k in ks] + ["min / run"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines.append("| base model | 0 | " + f"{100 * base:.1f}" + " | | |" + " |" * len(ks) + " |")
  for method, e in table.items():
    cells = [method, str(e["steps_trained"]),
             f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f}",
             " / ".join(f"{100 * a:.1f}" for a in e["seeds"]),
             f"{e['significant_seeds']}/{len(e['seeds'])}"]
    cells += [f"{100 * e['eval/' + k]:.1f} ± {100 * e['eval/' + k + '_std']:.1f}" for k in ks]
    cells.append(f"{e['minutes']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(workdir: str, results: Sequence[dict[str, Any]], table: dict[str, dict[str, Any]],
         base: float, path: str) -> str:
  """Training accuracy per step (mean over seeds) and held-out accuracy per seed."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  fig = figure.Figure(figsize=(11, 4))
  backend_agg.FigureCanvasAgg(fig)
  curves, final = fig.subplots(1, 2)
  for method in table:
    if method == "relex":
      continue
    runs = [metrics_lib.read_jsonl(os.path.join(workdir, f"{method}_s{r['seed']}",
                                                "metrics.jsonl"))
            for r in results if r["method"] == method]
    steps = sorted({row["step"] for rows in runs for row in rows if "reward/accuracy" in row})
    means = [np.mean([row["reward/accuracy"] for rows in runs for row in rows
                      if row["step"] == s and "reward/accuracy" in row]) for s in steps]
    curves.plot(steps, means, marker="o", markersize=3, label=method)
  curves.set_xlabel("step")
  curves.set_ylabel("training accuracy (plain prompts, sampled)")
  curves.set_title("training accuracy, mean over seeds")
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
  final.set_ylabel("held-out greedy accuracy")
  final.set_title("held-out accuracy per seed (bar: mean ± std)")
  final.grid(alpha=0.3)
  final.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def check_arguments(base: ml_collections.ConfigDict, methods: Sequence[str]) -> None:
  """Raises ValueError (naming the flag) for methods or a config the study can't run."""
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS)}.")
  if "relex" in methods and "grpo" not in methods:
    raise ValueError("--methods: relex extrapolates the grpo runs; add grpo.")
  if "relex" in methods:
    relex_window(base)


def run_study(base: ml_collections.ConfigDict, *, workdir: str, seeds: Sequence[int],
              methods: Sequence[str], passk_samples: int = 4,
              passk_problems: int = 24, keep_checkpoints: bool = False) -> dict[str, Any]:
  """Runs (or resumes) every (method, seed), then writes the table and the plot.

  Args:
    base: the study config.
    workdir: the study's folder.
    seeds: rl.seed of each repetition.
    methods: keys of METHODS ('relex' needs 'grpo').
    passk_samples: n samples per problem for pass@k.
    passk_problems: held-out problems (the first ones) sampled for pass@k.
    keep_checkpoints: keep each run's orbax checkpoints (and RELEX's); by
      default they are deleted once the run is measured (a SmolLM2 run
      keeps 4 checkpoints with optimizer state, about 6 GB).

  Returns:
    {'base': base greedy accuracy, 'methods': summarize(...), 'runs': [...],
     'table': the Markdown table}.
  """
  check_arguments(base, methods)
  workdir = os.path.abspath(workdir)  # orbax wants absolute checkpoint paths
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  results, base_eval = [], None
  for seed in seeds:
    for method in [m for m in METHODS if m in methods and m != "relex"]:
      run_dir = os.path.join(workdir, f"{method}_s{seed}")
      path = os.path.join(run_dir, "study_result.json")
      if os.path.exists(path):
        with open(path) as f:
          produced = json.load(f)
      else:
        logging.info("study: %s seed %d", method, seed)
        produced = run_method(base, method, seed, workdir, base_eval,
                              with_relex="relex" in methods, passk_samples=passk_samples,
                              passk_problems=passk_problems)
        _save(path, produced)
        if not keep_checkpoints:
          shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
          shutil.rmtree(os.path.join(run_dir, "relex", "checkpoints"), ignore_errors=True)
      results += produced
      base_eval = base_eval or os.path.join(run_dir, "eval_before.json")
  with open(base_eval) as f:
    base_accuracy = float(json.load(f)["accuracy"])
  table = summarize(results, [m for m in METHODS if m in methods])
  markdown = format_table(table, base_accuracy, len(seeds))
  with open(os.path.join(workdir, "study.md"), "w") as f:
    f.write(markdown + "\n")
  study = {"base": base_accuracy, "methods": table, "runs": results, "table": markdown,
           "config": base.to_dict(), "minutes": (time.perf_counter() - start) / 60}
  _save(os.path.join(workdir, "study.json"), study)
  plot(workdir, results, table, base_accuracy, os.path.join(workdir, "study.png"))
  return study


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}: integers expected.") from e
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
  try:
    check_arguments(FLAGS.config, FLAGS.methods)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  study = run_study(FLAGS.config, workdir=FLAGS.workdir, seeds=seeds, methods=FLAGS.methods,
                    passk_samples=FLAGS.passk_samples, passk_problems=FLAGS.passk_problems,
                    keep_checkpoints=FLAGS.keep_checkpoints)
  table = study["methods"]
  print(study["table"], flush=True)
  print(json.dumps({"methods": {m: {k: table[m][k] for k in ("mean", "std", "seeds")}
                                for m in table}, "base": study["base"]}), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
