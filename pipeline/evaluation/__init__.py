"""Evaluation: production accuracy from sampled human labels, the train-to-production gap, the
champion/challenger paired test, drift, and label-free accuracy estimates.

Modules, bottom layer first (a module imports only modules of the layers below it):

* :mod:`pipeline.evaluation.result`   -- the typed figures (frozen dataclasses) and their JSON form
* :mod:`pipeline.evaluation.truth`    -- the truth rule (a frame's labels -> its class, or why none)
* :mod:`pipeline.evaluation.stats`    -- pure statistics (intervals, weighted estimators, McNemar, decisions)
* :mod:`pipeline.evaluation.drift`    -- drift tests on softmax outputs, predicted classes and image statistics
* :mod:`pipeline.evaluation.estimate` -- label-free accuracy (Average Thresholded Confidence; the one ATC fit)
* :mod:`pipeline.evaluation.evaluator` -- store in (``PredictionStore.evaluation_rows``), ``EvaluationResult`` out
* :mod:`pipeline.evaluation.report` / :mod:`~pipeline.evaluation.alerts` -- read results: plots, HTML, summary;
  alerts (log, webhook, Prometheus)

MLflow logging of a result is :func:`pipeline.tracking.log_evaluation` (the only place that calls MLflow).

Importing this package imports nothing heavy; import the submodules you need.
"""
