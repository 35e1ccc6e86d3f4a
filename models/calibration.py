"""Post-hoc calibration fitted on the validation set: softmax temperature and the ATC threshold.

Pure functions on arrays (numpy in, float out); the temperature fit uses torch's LBFGS.

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

T_MIN, T_MAX = 0.05, 20.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """Fit the softmax temperature on validation ``logits`` ``(N, C)`` and integer ``labels`` ``(N,)``.

    Optimises ``log T`` with LBFGS on the NLL; the result is clipped to [``T_MIN``, ``T_MAX``]. Returns 1.0 for
    an empty set.
    """
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        return 1.0
    x = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    if not np.isfinite(t):
        return 1.0
    return float(np.clip(t, T_MIN, T_MAX))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def atc_threshold(scores: np.ndarray, accuracy: float) -> float:
    """Threshold ``t`` with ``mean(scores > t) == accuracy`` (as closely as the ``N`` scores allow).

    With ``k = round(accuracy * N)`` and scores sorted descending ``s_1 >= s_2 >= ...``, ``t`` is the midpoint
    of ``s_k`` and ``s_{k+1}`` (robust to float rounding between torch and ONNX Runtime); for ``k = N`` it is just
    below the smallest score, for ``k = 0`` the largest score. Ties at the boundary make the share inexact.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    n = s.size
    if n == 0:
        raise ValueError("atc_threshold needs at least one score")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    k = int(round(accuracy * n))
    if k >= n:
        return float(s[-1] - max(1e-6, 1e-6 * abs(s[-1])))
    if k <= 0:
        return float(s[0])
    return float((s[k - 1] + s[k]) / 2.0)
