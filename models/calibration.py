"""Post-hoc calibration fitted on the validation set: softmax temperature and the ATC threshold.

Pure functions on arrays (numpy in, float out); the temperature fit uses scipy's L-BFGS-B.

* Temperature scaling (Guo et al., 2017): one scalar ``T > 0`` minimising the validation NLL of
  ``softmax(logits / T)``. The exported graph's ``probs`` output applies it, so every confidence the
  runtime stores is calibrated.
* ATC, Average Thresholded Confidence (Garg et al., 2022): on the validation set pick ``t`` such that the
  share of examples whose score ``s = max calibrated prob`` is strictly above ``t`` equals the validation
  accuracy. On unlabelled production frames, ``mean(s > t)`` then estimates accuracy
  (``pipeline.evaluation.estimate.atc_estimate``).
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluation.estimate import atc_threshold  # noqa: F401 (the one ATC fitting rule; re-exported)

T_MIN, T_MAX = 0.05, 20.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """Fit the softmax temperature on validation ``logits`` ``(N, C)`` and integer ``labels`` ``(N,)``.

    Minimises the NLL over ``a = log T`` with L-BFGS-B (scipy) and the analytic gradient
    ``dNLL/da = mean_i(u_iy - sum_j p_ij u_ij)`` with ``u = logits / T``; ``T`` is kept in [``T_MIN``, ``T_MAX``].
    Returns 1.0 for an empty set.
    """
    from scipy.optimize import minimize

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {z.shape} and {y.shape}")
    if z.shape[0] == 0:
        return 1.0
    rows = np.arange(z.shape[0])

    def f(a: np.ndarray) -> tuple[float, np.ndarray]:
        u = z * np.exp(-a[0])
        u = u - u.max(axis=1, keepdims=True)
        e = np.exp(u)
        sum_e = e.sum(axis=1)
        loss = float(np.mean(np.log(sum_e) - u[rows, y]))
        p = e / sum_e[:, None]
        grad = float(np.mean(u[rows, y] - (p * u).sum(axis=1)))
        return loss, np.array([grad])

    res = minimize(f, x0=np.zeros(1), jac=True, method="L-BFGS-B",
                   bounds=[(np.log(T_MIN), np.log(T_MAX))], options={"maxiter": max_iter})
    t = float(np.exp(res.x[0]))
    return t if np.isfinite(t) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
