"""Whether a run folder may be resumed with a config, or must be refused.

A run resumes from its `--workdir` (checkpoints, metrics, evaluations). That
is only sound when the folder was written by the same experiment: another
method or learning rate would continue from the old run's state and mix
two experiments in one metrics file. `prepare_workdir` compares the new
config with the folder's `config.json`, ignoring the fields that may change
between a run and its continuation (`RESUMABLE_FIELDS`), and refuses with the
differing flags named, unless `overwrite`, which clears the folder.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
import ml_collections

from rlvr_jax import storage

# Fields a resumed run may change: how long it trains and what it evaluates,
# saves and logs; nothing that changes what a step computes.
RESUMABLE_FIELDS = (
    "rl.steps",
    "train.eval_before", "train.eval_after", "train.eval_every",
    "train.eval_batch_size", "train.eval_max_new_tokens",
    "train.save_every", "train.keep", "train.log_every", "train.tensorboard",
    "train.delta_report_steps", "train.max_skipped_steps",
    "reward.workers", "reward.timeout_s", "model.allow_long_context",
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and value and path != "data.task_kwargs":
      flat.update(_flatten(value, path + "."))
    else:
      flat[path] = value
  return flat


def config_differences(old: dict[str, Any], new: ml_collections.ConfigDict
                       ) -> dict[str, tuple[Any, Any]]:
  """{flag path: (old value, new value)} outside `RESUMABLE_FIELDS`.

  Args:
    old: a run's saved config.json, parsed.
    new: the config of the run about to start (resolved).

  Returns:
    The differing fields (a field missing on one side counts as None there).
  """
  a, b = _flatten(old), _flatten(json.loads(new.to_json()))
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)}


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, *,
                    overwrite: bool = False) -> None:
  """Clears (`overwrite`) or checks a run folder before the run writes to it.

  Args:
    workdir: the run folder (may not exist): a local path or a URI such as
      gs://bucket/run (`rlvr_jax.storage`).
    config: the run's resolved config.
    overwrite: delete the folder's contents first.

  Raises:
    ValueError: the folder holds a run of another config (the message lists
      each differing `--config.` flag with its old and new value).
  """
  path = storage.join(workdir, "config.json")
  if overwrite:
    if storage.listdir(workdir):
      logging.warning("--overwrite: clearing %s", workdir)
      storage.rmtree(workdir)
    return
  if not storage.exists(path):
    return
  try:
    old = storage.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not a readable config ({e}); pass --overwrite to start "
                     "the run folder afresh.") from e
  diff = config_differences(old, config)
  if diff:
    lines = "\n".join(f"  --config.{k}: {a!r} in the folder, {b!r} now"
                      for k, (a, b) in diff.items())
    raise ValueError(
        f"--workdir={workdir} holds a run with another config; it resumes only when "
        f"every flag but {', '.join(RESUMABLE_FIELDS)} is the same. Differing:\n{lines}\n"
        "Use another --workdir, or --overwrite to delete that run and start afresh.")
