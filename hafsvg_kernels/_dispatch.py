"""Backend dispatch shared by every op, in the spirit of xformers' operator registry.

Each op owns an :class:`Op`; each backend registers a :class:`Backend` that says

* ``unavailable()`` — why it cannot run at all on this install (``None`` when it can),
* ``refuses(*args)`` — the reasons it refuses these particular inputs (empty when it accepts),
* ``fn`` — the implementation.

``backend="auto"`` takes the first backend of the op's preference list for the inputs' device
type that is available and accepts; ``HAFSVG_BACKEND=<name>`` in the environment forces one
for every call that asks for ``auto``. An explicitly asked-for backend (or one forced by the
variable) that cannot run raises :class:`BackendUnavailable` with its reasons (and, for the
variable, its valid names), never falls back silently.

Under ``torch.compile`` nothing here is traced: the ops' compiled routes
(``attention/compiled.py``, ``recurrent/compiled.py``) pass the backend's name (``auto``
included) into a custom op whose implementation calls :meth:`Op.select` at run time. Under
autocast :meth:`Op.select_variant` lets a backend that refuses the low-precision inputs take
them upcast to float32 instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

ENV_VAR = "HAFSVG_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run the op on these inputs; the message says why."""


@dataclass(frozen=True)
class Backend:
    name: str
    fn: Callable
    unavailable: Callable[[], str | None] = lambda: None
    refuses: Callable[..., Sequence[str]] = lambda *a, **k: ()


class Op:
    """A dispatchable op: its backends and, per device type, the order ``auto`` tries them."""

    def __init__(self, name: str, preference: dict[str, Sequence[str]]):
        self.name = name
        self.preference = preference
        self.backends: dict[str, Backend] = {}

    def register(self, backend: Backend) -> None:
        self.backends[backend.name] = backend

    def reasons(self, name: str, *args, **kwargs) -> list[str]:
        """Why backend ``name`` cannot run these inputs (empty list: it can)."""
        if name not in self.backends:
            return [f"no backend named {name!r}; known: {sorted(self.backends)}"]
        b = self.backends[name]
        why = b.unavailable()
        if why:
            return [why]
        return list(b.refuses(*args, **kwargs))

    def _valid_names(self) -> str:
        """The names ``HAFSVG_BACKEND`` takes for this op: ``auto`` and its backends."""
        return ", ".join(["auto", *sorted(self.backends)])

    def select(self, backend: str, device_type: str, *args, **kwargs) -> Backend:
        """The backend to run: ``backend`` itself, or for ``"auto"`` the env override or the
        first accepting backend in this device type's preference order."""
        return self.select_variant(backend, device_type, [(args, kwargs)])[0]

    def select_variant(self, backend: str, device_type: str, variants) -> tuple[Backend, int]:
        """As :meth:`select`, over alternative argument lists ``variants`` ((args, kwargs) pairs,
        e.g. the inputs as given, then upcast to float32 for a backend that refuses their dtype
        under autocast): the backend and the index of the first variant it accepts, each
        candidate backend trying the variants in order. Errors give the first variant's reasons."""
        forced = None
        if backend == "auto":
            forced = os.environ.get(ENV_VAR, "").strip()
            backend = forced or "auto"
        if backend != "auto":
            if forced and backend not in self.backends:
                raise BackendUnavailable(
                    f"{ENV_VAR}={forced!r} names no backend; valid names: {self._valid_names()} (or unset {ENV_VAR})"
                )
            for i, (args, kwargs) in enumerate(variants):
                why = self.reasons(backend, *args, **kwargs)
                if not why:
                    return self.backends[backend], i
                if i == 0:
                    first = why
            message = f"{self.name}: backend {backend!r} cannot run these inputs: " + "; ".join(first)
            if forced:
                message = (
                    f"{ENV_VAR}={forced} forces {message}; valid names: {self._valid_names()} (unset {ENV_VAR} "
                    "to let each op take the first backend that can run)"
                )
            raise BackendUnavailable(message)
        tried = []
        for name in self.preference.get(device_type, ("torch",)):
            for i, (args, kwargs) in enumerate(variants):
                why = self.reasons(name, *args, **kwargs)
                if not why:
                    return self.backends[name], i
                if i == 0:
                    tried.append(f"{name}: {'; '.join(why)}")
        raise BackendUnavailable(f"{self.name}: no backend accepts these inputs ({' | '.join(tried)})")

    def __call__(self, backend: str, device_type: str, *args, **kwargs):
        return self.select(backend, device_type, *args, **kwargs).fn(*args, **kwargs)
