"""RELEX's fit of one tensor: top eigenpairs of its Gram and a line per component.

METHODS.md section 4 steps 3-4, pure NumPy in float64 on an [R, R] Gram (the
Gram itself is accumulated by `relex.relex.accumulate_gram`):

  G u_r = lambda_r u_r, sigma_r = sqrt(lambda_r)    top r eigenpairs
  c_r   = sigma_r u_r                               c_{r,t} = <D_t, v_r>
  c_r  ~ a_r s + b_r                                least squares with
                                                    intercept on the TRUE
                                                    step numbers s_t
  w     = sum_r (c*_r / sigma_r) u_r                theta* = theta_0 + D^T w
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Fit name (flag `fit`) -> polynomial degree of the coefficient trajectory.
FITS = {"linear": 1, "quadratic": 2}

# A component r is used only if lambda_r > _RTOL * trace(G): below that the
# eigenpair is float64 rounding of the Gram, and a tensor whose deltas are all
# zero (trace 0) stays at theta_0 (METHODS.md 4 step 3, "sigma ~ 0").
_RTOL = 1e-10


def top_eigenpairs(gram: np.ndarray, *, rank: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The `rank` largest eigenpairs of a symmetric PSD Gram (METHODS.md 4.3).

  Signs are fixed so that the largest-magnitude entry of each eigenvector is
  positive (first such entry on ties); the extrapolation does not depend on
  the sign, the plotted coefficients do.

  Args:
    gram: [R, R] float64, symmetric.
    rank: r, 1 <= r <= R.

  Returns:
    (lambda [Rk] descending; u [R, Rk] orthonormal columns; all R eigenvalues
     descending), eigenvalues clipped at 0.
  """
  R = gram.shape[0]
  if gram.shape != (R, R):
    raise ValueError(f"gram must be square, got shape {gram.shape}.")
  if not 1 <= rank <= R:
    raise ValueError(f"rank={rank} must be in [1, R={R}].")
  spectrum, eigenvectors = np.linalg.eigh(gram)
  spectrum = np.maximum(spectrum[::-1], 0.0)
  eigenvectors = eigenvectors[:, ::-1][:, :rank]
  pivot = np.argmax(np.abs(eigenvectors), axis=0)
  signs = np.where(eigenvectors[pivot, np.arange(rank)] < 0, -1.0, 1.0)
  return spectrum[:rank], eigenvectors * signs, spectrum


def fit_polynomial(steps: np.ndarray, values: np.ndarray, *, degree: int
                   ) -> tuple[np.ndarray, float, float, float]:
  """Least squares c(s) = sum_k p_k (s - m)^k with intercept (METHODS.md 4.4).

  The steps are centred at their mean m for conditioning; the fit is the
  same line (or parabola) as on raw steps.

  Args:
    steps: [R] true step numbers.
    values: [R] coefficients c_t.
    degree: 1 (linear) or 2 (quadratic); needs R > degree distinct steps.

  Returns:
    (p [degree + 1] lowest power first, m, residual sum of squares,
     total sum of squares around the mean of `values`).
  """
  steps = np.asarray(steps, np.float64)
  values = np.asarray(values, np.float64)
  if steps.shape != values.shape or steps.ndim != 1:
    raise ValueError(f"steps {steps.shape} and values {values.shape} must be "
                     "equal-length vectors.")
  if len(np.unique(steps)) <= degree:
    raise ValueError(f"a degree-{degree} fit needs more than {degree} distinct "
                     f"steps, got {steps.tolist()}.")
  center = float(np.mean(steps))
  design = np.vander(steps - center, degree + 1, increasing=True)
  coeffs = np.linalg.lstsq(design, values, rcond=None)[0]
  residual = values - design @ coeffs
  ss_res = float(residual @ residual)
  deviation = values - np.mean(values)
  return coeffs, center, ss_res, float(deviation @ deviation)


def evaluate_polynomial(coeffs: np.ndarray, center: float,
                        step: float) -> float:
  """sum_k p_k (step - m)^k for coefficients from `fit_polynomial`."""
  return float(np.polynomial.polynomial.polyval(step - center, coeffs))


@dataclasses.dataclass(frozen=True)
class TensorFit:
  """Spectrum and coefficient fits of one tensor (one layer slice).

  Attributes:
    steps: [R] true step numbers of the window.
    eigenvalues: [Rk] lambda_r of G, descending.
    eigenvectors: [R, Rk] u_r.
    spectrum: [R] all eigenvalues of G, descending.
    trace: trace(G) = sum of all R eigenvalues (total energy).
    active: [Rk] whether component r is used (lambda_r > rtol * trace).
    center: m, the step mean the polynomials are centred at.
    poly: [Rk, degree + 1] fitted p_k of c_r(s), lowest power first.
    ss_res: [Rk] residual sum of squares of each fit.
    ss_tot: [Rk] total sum of squares of each c_r around its mean.
  """

  steps: np.ndarray
  eigenvalues: np.ndarray
  eigenvectors: np.ndarray
  spectrum: np.ndarray
  trace: float
  active: np.ndarray
  center: float
  poly: np.ndarray
  ss_res: np.ndarray
  ss_tot: np.ndarray

  @property
  def sigma(self) -> np.ndarray:
    """[Rk] singular values sqrt(lambda_r)."""
    return np.sqrt(self.eigenvalues)

  @property
  def coefficients(self) -> np.ndarray:
    """[Rk, R] c_r = sigma_r u_r (zero rows for inactive components)."""
    return np.where(self.active[:, None],
                    self.sigma[:, None] * self.eigenvectors.T, 0.0)

  @property
  def r2(self) -> np.ndarray:
    """[Rk] R^2 = 1 - ss_res / ss_tot of each fit; NaN when ss_tot = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(self.ss_tot > 0, 1.0 - self.ss_res / self.ss_tot, np.nan)

  def predict_coefficients(self, target_step: float) -> np.ndarray:
    """[Rk] c*_r = fitted c_r(s*); 0 for inactive components."""
    return np.array([
        evaluate_polynomial(p, self.center, target_step) if on else 0.0
        for p, on in zip(self.poly, self.active)])

  def weights(self, target_step: float) -> np.ndarray:
    """[R] w = sum_r (c*_r / sigma_r) u_r, so theta* = theta_0 + D^T w."""
    sigma = np.where(self.active, self.sigma, 1.0)
    return self.eigenvectors @ (self.predict_coefficients(target_step) / sigma)


def fit_tensor(gram: np.ndarray, steps: Sequence[int], *, rank: int,
               fit: str) -> TensorFit:
  """Top-r spectrum of G and a fitted trajectory per component (METHODS 4.3-4).

  Args:
    gram: [R, R] float64 Gram of the tensor's deltas.
    steps: [R] true step numbers of the rows of D.
    rank: r, components kept (flag `rank`).
    fit: a key of FITS (flag `fit`).

  Returns:
    The TensorFit.
  """
  if fit not in FITS:
    raise ValueError(f"fit={fit!r}; choose one of {sorted(FITS)}.")
  steps = np.asarray(steps, np.float64)
  if gram.shape != (len(steps), len(steps)):
    raise ValueError(f"gram shape {gram.shape} does not match {len(steps)} "
                     "steps.")
  eigenvalues, eigenvectors, spectrum = top_eigenpairs(gram, rank=rank)
  trace = float(np.trace(gram))
  active = eigenvalues > _RTOL * trace
  coefficients = np.sqrt(eigenvalues)[:, None] * eigenvectors.T
  fits = [fit_polynomial(steps, c, degree=FITS[fit]) for c in coefficients]
  return TensorFit(
      steps=steps, eigenvalues=eigenvalues, eigenvectors=eigenvectors,
      spectrum=spectrum, trace=trace, active=active, center=fits[0][1],
      poly=np.stack([f[0] for f in fits]),
      ss_res=np.array([f[2] for f in fits]),
      ss_tot=np.array([f[3] for f in fits]))
