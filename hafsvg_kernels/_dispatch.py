"""Backend dispatch shared by every op, in the spirit of xformers' operator registry.

Each op owns an :class:`Op`; each backend registers a :class:`Backend` that says

* ``unavailable()`` — why it cannot run at all on this install (``None`` when it can),
* ``refuses(*args)`` — the reasons it refuses these particular inputs (empty when it accepts),
* ``fn`` — the implementation.

``backend="auto"`` takes the first backend of the op's preference list for the inputs' device
type that is available and accepts; ``HAFSVG_BACKEND=<name>`` in the environment forces one.
An explicitly asked-for backend that cannot run raises :class:`BackendUnavailable` with its
reasons, never falls back silently.
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

    def select(self, backend: str, device_type: str, *args, **kwargs) -> Backend:
        """The backend to run: ``backend`` itself, or for ``"auto"`` the env override or the
        first accepting backend in this device type's preference order."""
        if backend == "auto":
            backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend != "auto":
            why = self.reasons(backend, *args, **kwargs)
            if why:
                raise BackendUnavailable(
                    f"{self.name}: backend {backend!r} cannot run these inputs: " + "; ".join(why)
                )
            return self.backends[backend]
        tried = []
        for name in self.preference.get(device_type, ("torch",)):
            why = self.reasons(name, *args, **kwargs)
            if not why:
                return self.backends[name]
            tried.append(f"{name}: {'; '.join(why)}")
        raise BackendUnavailable(f"{self.name}: no backend accepts these inputs ({' | '.join(tried)})")

    def __call__(self, backend: str, device_type: str, *args, **kwargs):
        return self.select(backend, device_type, *args, **kwargs).fn(*args, **kwargs)
