"""RELEX diagnostics: printed table, JSON and PNG (METHODS.md section 4).

Per tensor (one layer slice of a stacked parameter is one tensor, named
`layers/mlp/up/kernel[3]`): the energy fraction of the top component
lambda_1 / trace(G), the R^2 of each coefficient fit, the coefficient
trajectories with their fitted lines and predicted values, and, for each
target step that has a real checkpoint, the relative error
||theta* - theta_ref|| / ||theta_ref - theta_0|| next to the same number for
simply stopping at the last observed step, ||theta_{s_R} - theta_ref|| /
||theta_ref - theta_0||.

Whole model, from (sum, denominator) pairs over tensors: energy fraction
sum lambda_1 / sum trace; lambda_1-weighted mean R^2 of the top component
(tensors with an undefined R^2 left out of both sums); relative errors
sqrt(sum squared error / sum squared real change).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

from etils import epath
import numpy as np

from rlvr_jax import storage
from rlvr_jax.relex import fit as fit_lib

# Tensors plotted when none are named: the ones with the largest sigma_1.
_DEFAULT_PLOTTED = 4


def tensor_names(name: str, num_layers: int, stacked: bool) -> list[str]:
  """Names of the RELEX tensors of one parameter (one per layer if stacked)."""
  return [f"{name}[{l}]" for l in range(num_layers)] if stacked else [name]


def _ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator > 0 else math.nan


def _json_safe(value: Any) -> Any:
  """NumPy to Python, NaN/inf to None (JSON has no NaN)."""
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return _json_safe(value.tolist())
  if hasattr(value, "__array__"):
    return _json_safe(np.asarray(value))
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def summarize(
    fits: Mapping[str, Sequence[fit_lib.TensorFit]],
    *,
    stacked: Mapping[str, bool],
    base_step: int,
    target_steps: Sequence[int],
    errors: Mapping[int, Mapping[str, np.ndarray]],
) -> dict[str, Any]:
  """All diagnostics as one JSON-ready dict.

  Args:
    fits: {parameter name: one TensorFit per layer (one if not stacked)}.
    stacked: {parameter name: whether it is stacked over layers}.
    base_step: step of theta_0.
    target_steps: the extrapolation targets.
    errors: {target step with a real checkpoint: {parameter name: [L, 3] sums
      from `relex.extrapolate_region`}}.

  Returns:
    {'summary': flat slash-keyed model-level numbers, 'tensors': {tensor
     name: per-tensor numbers}, 'base_step', 'steps', 'target_steps'}.
  """
  tensors = {}
  top, total, r2_sum, r2_weight, at_base = 0.0, 0.0, 0.0, 0.0, 0
  model_errors = {s: np.zeros(3) for s in errors}
  steps = None
  for name, layer_fits in fits.items():
    names = tensor_names(name, len(layer_fits), stacked[name])
    for layer, (tensor, fit) in enumerate(zip(names, layer_fits)):
      steps = fit.steps
      r2 = fit.r2
      entry = {
          "energy_fraction": _ratio(fit.eigenvalues[0], fit.trace),
          "eigenvalues": fit.eigenvalues,
          "spectrum": fit.spectrum,
          "trace": fit.trace,
          "active": fit.active,
          "coefficients": fit.coefficients,
          "fit_center": fit.center,
          "fit_poly": fit.poly,
          "r2": r2,
          "predicted": {s: fit.predict_coefficients(s) for s in target_steps},
      }
      top += fit.eigenvalues[0]
      total += fit.trace
      at_base += int(not fit.active[0])
      if np.isfinite(r2[0]):
        r2_sum += fit.eigenvalues[0] * r2[0]
        r2_weight += fit.eigenvalues[0]
      for step, per_param in errors.items():
        sums = per_param[name][layer]
        model_errors[step] += sums
        entry.setdefault("relative_error", {})[step] = math.sqrt(
            _ratio(sums[0], sums[1]))
        entry.setdefault("last_observed_relative_error", {})[step] = (
            math.sqrt(_ratio(sums[2], sums[1])))
      tensors[tensor] = entry
  summary = {
      "relex/energy_fraction": _ratio(top, total),
      "relex/energy_top_sum": top,
      "relex/energy_total_sum": total,
      "relex/r2_weighted": _ratio(r2_sum, r2_weight),
      "relex/tensors": len(tensors),
      "relex/tensors_at_base": at_base,
  }
  for step, sums in model_errors.items():
    summary[f"relex/step_{step}/relative_error"] = math.sqrt(
        _ratio(sums[0], sums[1]))
    summary[f"relex/step_{step}/last_observed_relative_error"] = math.sqrt(
        _ratio(sums[2], sums[1]))
  return _json_safe({
      "summary": summary,
      "tensors": tensors,
      "base_step": base_step,
      "steps": steps,
      "target_steps": list(target_steps),
  })


def format_table(diagnostics: Mapping[str, Any]) -> str:
  """Model summary plus one line per parameter (layers pooled)."""
  lines = [f"{k}: {v}" for k, v in diagnostics["summary"].items()]
  groups: dict[str, list[dict[str, Any]]] = {}
  for tensor, entry in diagnostics["tensors"].items():
    groups.setdefault(tensor.split("[")[0], []).append(entry)
  reference_steps = sorted({s for e in diagnostics["tensors"].values()
                            for s in e.get("relative_error", {})}, key=int)
  header = f"{'parameter':32s} {'n':>4s} {'energy':>7s} {'R2 min':>7s}"
  header += "".join(f" {'err@' + s:>10s}" for s in reference_steps)
  lines += ["", header]
  for name, entries in groups.items():
    top = sum(e["eigenvalues"][0] for e in entries)
    total = sum(e["trace"] for e in entries)
    r2 = [e["r2"][0] for e in entries if e["r2"][0] is not None]
    line = (f"{name:32s} {len(entries):4d} {_ratio(top, total):7.4f} "
            f"{min(r2) if r2 else math.nan:7.4f}")
    for s in reference_steps:
      errs = [e["relative_error"][s] for e in entries
              if e["relative_error"][s] is not None]
      line += f" {max(errs) if errs else math.nan:10.4f}"
    lines.append(line)
  return "\n".join(lines)


def write_json(diagnostics: Mapping[str, Any],
               path: str | epath.Path) -> None:
  """Writes the diagnostics dict as JSON (NaN written as null)."""
  epath.Path(path).write_text(json.dumps(_json_safe(diagnostics), indent=1))


def plot(diagnostics: Mapping[str, Any], path: str | epath.Path, *,
         tensors: Sequence[str] = ()) -> list[str]:
  """PNG: energy fractions, R^2, coefficient trajectories, relative errors.

  Args:
    diagnostics: the dict of `summarize`.
    path: the PNG file to write.
    tensors: tensors whose trajectories are drawn; by default the ones with
      the largest sigma_1. Unknown names are a ValueError.

  Returns:
    The names of the plotted tensors.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  entries = diagnostics["tensors"]
  unknown = sorted(set(tensors) - set(entries))
  if unknown:
    raise ValueError(f"plot tensors {unknown} are not RELEX tensors; names "
                     f"look like {list(entries)[:3]}.")
  chosen = list(tensors) or sorted(
      entries, key=lambda n: -entries[n]["eigenvalues"][0])[:_DEFAULT_PLOTTED]
  steps = np.asarray(diagnostics["steps"], np.float64)
  targets = np.asarray(diagnostics["target_steps"], np.float64)
  fig, axes = plt.subplots(2, 2 + max(1, len(chosen) // 2 + len(chosen) % 2),
                           figsize=(16, 8), squeeze=False)
  names = list(entries)
  energy = [entries[n]["energy_fraction"] for n in names]
  r2 = [entries[n]["r2"][0] for n in names]
  axes[0, 0].plot([np.nan if e is None else e for e in energy], ".")
  axes[0, 0].set(title="energy fraction of top component",
                 xlabel="tensor index", ylim=(0, 1.05))
  r2 = np.array([np.nan if v is None else v for v in r2])
  axes[1, 0].plot(r2, ".")
  axes[1, 0].set(title="R^2 of the top coefficient fit", xlabel="tensor index",
                 ylim=(min(0.0, np.nanmin(r2)) if np.isfinite(r2).any()
                       else 0.0, 1.02))
  error_ax = axes[0, 1]
  reference_steps = sorted({s for e in entries.values()
                            for s in e.get("relative_error", {})}, key=int)
  for s in reference_steps:
    for key, style in (("relative_error", "."), ("last_observed_relative_error",
                                                 "x")):
      values = [entries[n][key][s] for n in names]
      error_ax.plot([np.nan if v is None else v for v in values], style,
                    label=f"{key} @ {s}")
  error_ax.set(title="relative error vs real checkpoint", xlabel="tensor index")
  if reference_steps:
    error_ax.legend(fontsize=7)
  spectra = np.array([np.asarray(entries[n]["spectrum"]) / entries[n]["trace"]
                      for n in names if entries[n]["trace"] > 0])
  if len(spectra):
    k = np.arange(1, spectra.shape[1] + 1)
    low, median, high = np.percentile(spectra, [10, 50, 90], axis=0)
    axes[1, 1].fill_between(k, np.maximum(low, 1e-16), np.maximum(high, 1e-16),
                            alpha=0.3, label="10-90% of tensors")
    axes[1, 1].plot(k, np.maximum(median, 1e-16), "o-", ms=3, label="median")
    axes[1, 1].legend(fontsize=7)
  axes[1, 1].set(title="spectrum lambda_k / trace(G)", xlabel="k",
                 yscale="log")
  line_steps = np.linspace(min(steps.min(), targets.min()),
                           max(steps.max(), targets.max()), 100)
  for ax, name in zip(axes[:, 2:].T.ravel(), chosen):
    entry = entries[name]
    for r, (coeffs, poly) in enumerate(zip(entry["coefficients"],
                                           entry["fit_poly"])):
      ax.plot(steps, coeffs, "o", ms=3, label=f"c_{r + 1}")
      ax.plot(line_steps, np.polynomial.polynomial.polyval(
          line_steps - entry["fit_center"], poly), "-", lw=1)
      ax.plot(targets, [entry["predicted"][str(int(s))][r] for s in targets],
              "*", ms=9)
    ax.set(title=name, xlabel="step")
    ax.legend(fontsize=7)
  for ax in axes[:, 2:].T.ravel()[len(chosen):]:
    ax.axis("off")
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=90)  # local or gs://
  plt.close(fig)
  return chosen
