"""Named stages of sampling (encoder, recurrent, aligner, decoder, metrics) for profiling.

Every stage is a ``torch.profiler.record_function`` range (labels ``hafsvg::<stage>`` in a
trace). With ``timing`` on, stages are also timed by wall clock with the device synchronized at
each boundary, exclusively: a stage nested in another (the aligner inside the decoder) is
subtracted from its parent, so the totals add up to the time spent inside stages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from torch.profiler import record_function


class Stages:
    """``with stages("decoder"): ...``; ``totals`` {stage: seconds} while ``timing`` is on."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.timing = False
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start, time of nested stages]

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.totals = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        with record_function(f"hafsvg::{name}"):
            if not self.timing:
                yield
                return
            self._sync()
            frame = [name, time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                yield
            finally:
                self._sync()
                self._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.totals[name] += elapsed - frame[2]
                if self._stack:
                    self._stack[-1][2] += elapsed


@contextmanager
def staged_methods(stages: Stages, targets):
    """Within the block, each call of the methods in ``targets`` ((stage name, object, method
    name) triples, e.g. ``("encoder", model.encoder, "forward")``) runs inside ``stages(name)``:
    stage times for code that has no stage calls of its own, such as :meth:`HAFSVG.sample`. The
    methods are wrapped on the instances and restored afterwards."""
    saved = []
    for name, obj, attr in targets:
        method = getattr(obj, attr)

        def wrapped(*args, _method=method, _name=name, **kwargs):
            with stages(_name):
                return _method(*args, **kwargs)

        saved.append((obj, attr, vars(obj).get(attr, _MISSING)))
        setattr(obj, attr, wrapped)
    try:
        yield
    finally:
        for obj, attr, before in reversed(saved):
            if before is _MISSING:
                delattr(obj, attr)
            else:
                setattr(obj, attr, before)


_MISSING = object()
