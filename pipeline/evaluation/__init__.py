"""Evaluation: production accuracy from sampled human labels, the train-to-production gap, the
champion/challenger paired test, drift, and label-free accuracy estimates.

Modules:

* :mod:`pipeline.evaluation.stats`    -- pure statistics (intervals, weighted estimators, McNemar, decisions)
* :mod:`pipeline.evaluation.drift`    -- drift tests on softmax outputs, predicted classes and image statistics
* :mod:`pipeline.evaluation.estimate` -- label-free accuracy (Average Thresholded Confidence)
* :mod:`pipeline.evaluation.evaluator` / ``report`` -- the I/O edge: store in, MLflow out

Importing this package imports nothing heavy; import the submodules you need.
"""
