"""One BLAS thread for the evaluator's statistics.

The evaluator's linear algebra is on small, tall matrices: the proxy's logistic regression (Newton steps on
(labels x ~40) matrices), the control-variate tuning ((frames x a few) Gram matrices). OpenBLAS splits such products
over every core, and its threads spin-wait for each other: on a busy machine (a runner's inference threads, a
suite, a second evaluation) one (8,000 x 37) Gram product measured 74 ms with two threads and 2 ms with one, and an
evaluation of 1M predictions spent 17 s instead of 0.4 s in the proxy's fits (36 s -> 14 s in all). With one
thread the time no longer depends on the neighbours, and the figures no longer depend on the number of cores (a
product's sums are no longer split between threads: the figures moved by about 1e-13 against two threads).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

_lock = threading.Lock()
_controller: Any = None


def one_blas_thread() -> contextlib.AbstractContextManager:
    """A context in which NumPy's BLAS (OpenBLAS, MKL, BLIS) uses one thread; the previous limits come back on exit.
    Without ``threadpoolctl`` installed, a context that changes nothing."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a runtime dependency; kept optional for trimmed installs
        return contextlib.nullcontext()
    with _lock:
        if _controller is None:
            import numpy  # noqa: F401  (the BLAS to find is the one NumPy loaded)

            _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
