"""pipeline.evaluation.blas: the evaluator's statistics run on one BLAS thread, and the limit is lifted after."""

from __future__ import annotations

from threadpoolctl import threadpool_info

from pipeline.evaluation import evaluator as ev
from pipeline.evaluation.blas import one_blas_thread
from tests.helpers.evaluation_data import StoreSpec, build_store


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_blas_thread_inside_and_the_old_limit_after():
    before = _blas_threads()
    assert before, "NumPy's BLAS not found by threadpoolctl"
    with one_blas_thread():
        assert _blas_threads() == [1] * len(before)
        with one_blas_thread():  # nested: still one, and the outer limit stands after the inner one
            assert _blas_threads() == [1] * len(before)
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_the_evaluators_statistics_run_on_one_blas_thread(monkeypatch, tmp_path):
    before, seen = _blas_threads(), []
    real = ev.Evaluator._figures

    def spy(self, *a, **k):
        seen.append(_blas_threads())
        return real(self, *a, **k)

    monkeypatch.setattr(ev.Evaluator, "_figures", spy)
    store = build_store(str(tmp_path / "s.db"), StoreSpec(n=120))
    res = ev.Evaluator(ev.EvalConfig(estimator="classical")).evaluate(store)
    store.close()
    assert res.counts.frames == 120
    assert seen == [[1] * len(before)]
    assert _blas_threads() == before
