"""End-to-end applications over both sides of shadowcam: the demo story and the benchmark.

They sit above :mod:`pipeline` (the runtime) and :mod:`models` (training) and may use both; only the CLI
(:mod:`pipeline.commands`) imports them. Their configs live in :mod:`apps.config`, which imports neither torch
nor the runtime, so ``shadowcam --help`` stays fast and works on a runtime-only install.
"""
