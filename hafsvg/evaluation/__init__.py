"""Evaluating and measuring models: best-of-N reports with confidence intervals and baselines
(:mod:`.report`), the per-stage profiler (:mod:`.profile`) and benchmark reports
(:mod:`.bench_report`). The frame metrics themselves are :mod:`hafsvg.metrics`."""
