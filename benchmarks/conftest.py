"""A soft deadline for benchmark runs: ``HAFSVG_BENCH_DEADLINE`` (Unix time, seconds).

Once it has passed, the cases not yet started skip with the reason, so pytest ends normally and
writes its ``--benchmark-json`` (a run killed by ``timeout`` writes an empty file and loses every
result). ``benchmarks/gpu_session.sh`` sets it for each step, with a hard ``timeout`` after it."""

import os
import time

import pytest


def pytest_runtest_setup(item):
    deadline = os.environ.get("HAFSVG_BENCH_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("the session's time budget for this step is spent (HAFSVG_BENCH_DEADLINE)")
