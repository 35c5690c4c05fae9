"""The C++ (CPU) and CUDA extension modules: prebuilt by ``setup.py``, else compiled at first use.

* :func:`load_cpu` / :func:`load_cuda` return the module (``hafsvg_kernels._C`` /
  ``hafsvg_kernels._C_cuda`` when setup.py built them for this torch and these sources, else a
  JIT build with ninja via ``torch.utils.cpp_extension.load`` into a cache folder) or raise
  :class:`ExtensionUnavailable` saying why and how to get it. The result (failures too) is cached.
* :func:`cpu_unavailable` / :func:`cuda_unavailable` answer cheaply, without compiling: ``None``
  when the module is loaded, prebuilt, or can be built on first use; else the reason.
* :func:`build_state` is the line ``python -m hafsvg_kernels.info`` prints.

Environment variables:

* ``HAFSVG_DISABLE_EXT=1``: behave as if no extension could be had (the ``cpp``/``cuda`` backends
  then say so and ``auto`` uses the others).
* ``HAFSVG_NO_JIT=1``: use a prebuilt module only, never compile at run time.
* ``TORCH_EXTENSIONS_DIR``: root of the JIT cache (default ``$XDG_CACHE_HOME/hafsvg`` or
  ``~/.cache/hafsvg``); ``MAX_JOBS``: parallel compile jobs; ``HAFSVG_VERBOSE_BUILD=1``: show
  the compiler's output; ``HAFSVG_CPU_CAPABILITY``, ``TORCH_CUDA_ARCH_LIST``: see
  :mod:`hafsvg_kernels._build_config`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shutil
import sys
import sysconfig
import threading
import time
from pathlib import Path

import torch

from . import _build_config as cfg

PREBUILT = {"cpu": "hafsvg_kernels._C", "cuda": "hafsvg_kernels._C_cuda"}
_lock = threading.Lock()
_modules: dict[str, object] = {}
_origin: dict[str, str] = {}
_errors: dict[str, str] = {}


class ExtensionUnavailable(RuntimeError):
    """The extension module cannot be had here; the message says why and how to get it."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def cache_dir(kind: str) -> Path:
    """Where the JIT build of module ``kind`` lives (per Python, torch version and, for the CPU,
    SIMD capability)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        base = Path(root) / "hafsvg"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hafsvg"
    tag = re.sub(r"[^A-Za-z0-9_.]", "_", f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}")
    return base / tag / _jit_name(kind)


def _jit_name(kind: str) -> str:
    return f"hafsvg_cpu_{cfg.cpu_capability().lower()}" if kind == "cpu" else "hafsvg_cuda"


@functools.lru_cache(maxsize=None)
def _prebuilt(kind: str):
    """(module, None) for a usable prebuilt module, else (None, why not). Cached: it reads the
    sources to hash them."""
    name = PREBUILT[kind]
    if importlib.util.find_spec(name) is None:
        return None, "not prebuilt"
    try:
        mod = importlib.import_module(name)
    except ImportError as e:  # e.g. built against another torch: undefined symbols
        return None, f"prebuilt {name} does not import ({e})"
    if getattr(mod, "torch_version", None) != cfg.torch_token():
        return None, f"prebuilt {name} was built for {getattr(mod, 'torch_version', '?')}, not {cfg.torch_token()}"
    if cfg.source_root() is not None and getattr(mod, "source_hash", None) != cfg.hash_token(kind):
        return None, f"prebuilt {name} is older than the sources in {cfg.source_root()}"
    if kind == "cpu" and getattr(mod, "cpu_capability", None) != cfg.cpu_capability():
        return None, f"prebuilt {name} targets {getattr(mod, 'cpu_capability', '?')}, this CPU {cfg.cpu_capability()}"
    return mod, None


def _jit_missing(kind: str) -> list[str]:
    """What a JIT build of ``kind`` lacks here, each with how to get it (empty: it can build)."""
    missing = []
    if _flag("HAFSVG_NO_JIT"):
        missing.append("HAFSVG_NO_JIT is set and no usable prebuilt module exists")
    if cfg.source_root() is None:
        missing.append("the C++ sources (csrc/) are not installed; reinstall hafsvg from a source checkout")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        missing.append(f"no C++ compiler ({cxx!r} not on PATH); install g++ or clang, or set CXX")
    if shutil.which("ninja") is None:
        missing.append("ninja is not on PATH; pip install ninja")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        missing.append("the Python headers (Python.h) are missing; install python3-dev")
    if kind == "cuda":
        if torch.version.cuda is None:
            missing.append(f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch")
        else:
            from torch.utils.cpp_extension import CUDA_HOME

            if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
                missing.append("nvcc not found (set CUDA_HOME to a CUDA toolkit matching torch's CUDA)")
    return missing


def _stamp(kind: str) -> str:
    return f"{cfg.source_hash(kind)} {torch.__version__} {cfg.cpu_capability() if kind == 'cpu' else ''}"


def _jit_cached(kind: str) -> bool:
    stamp = cache_dir(kind) / "hafsvg.stamp"
    try:
        return stamp.read_text() == _stamp(kind)
    except OSError:
        return False


#: A build lock (torch.utils.cpp_extension's ``lock`` file in the build folder) older than this
#: was left by a build that was killed (a build takes 1-2 minutes); torch would wait for it forever.
STALE_LOCK_S = 30 * 60


def _check_lock(build_dir: Path) -> None:
    """Remove a stale build lock, saying so; for a recent one, say that the build waits for it."""
    lock = build_dir / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
        print(f"hafsvg: removed {lock}, left {age / 60:.0f} min ago by a build that did not finish", file=sys.stderr)
    else:
        print(f"hafsvg: waiting for another process's build of the extension ({lock}; delete it if no build "
              "is running)", file=sys.stderr)  # fmt: skip


def _jit_build(kind: str):
    from torch.utils import cpp_extension

    root = cfg.source_root()
    build_dir = cache_dir(kind)
    build_dir.mkdir(parents=True, exist_ok=True)
    _check_lock(build_dir)
    fresh = not _jit_cached(kind)
    if fresh:
        what = "C++" if kind == "cpu" else "CUDA"
        print(f"hafsvg: compiling the {what} extension (first use, ~1 min) into {build_dir} ...", file=sys.stderr)
    t0 = time.perf_counter()
    sources = [str(root / s) for s in (cfg.CPU_SOURCES if kind == "cpu" else cfg.CUDA_SOURCES)]
    kwargs = dict(
        name=_jit_name(kind),
        sources=sources,
        extra_include_paths=[str(root)],
        build_directory=str(build_dir),
        verbose=_flag("HAFSVG_VERBOSE_BUILD"),
    )
    if kind == "cpu":
        mod = cpp_extension.load(
            extra_cflags=cfg.cpu_cflags(root), extra_ldflags=cfg.openmp_flags(), with_cuda=False, **kwargs
        )
    else:
        cflags, nvcc_flags = cfg.cuda_cflags(root)
        mod = cpp_extension.load(extra_cflags=cflags, extra_cuda_cflags=nvcc_flags, with_cuda=True, **kwargs)
    (build_dir / "hafsvg.stamp").write_text(_stamp(kind))
    if fresh:
        print(f"hafsvg: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return mod


def _load(kind: str):
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if kind in _errors:
            raise ExtensionUnavailable(_errors[kind])
        if _flag("HAFSVG_DISABLE_EXT"):
            raise ExtensionUnavailable("the extension is disabled by HAFSVG_DISABLE_EXT")
        mod, why_not = _prebuilt(kind)
        if mod is not None:
            _origin[kind] = f"prebuilt {mod.__file__}"
        else:
            missing = _jit_missing(kind)
            if missing:
                _errors[kind] = f"{why_not}, and it cannot be compiled here: " + "; ".join(missing)
                raise ExtensionUnavailable(_errors[kind])
            try:
                mod = _jit_build(kind)
            except Exception as e:  # compiler errors come as RuntimeError/subprocess errors
                _errors[kind] = (
                    f"compiling the {kind} extension failed ({type(e).__name__}: {str(e).strip()[-2000:]}); "
                    "HAFSVG_VERBOSE_BUILD=1 shows the compiler output"
                )
                raise ExtensionUnavailable(_errors[kind]) from e
            _origin[kind] = f"JIT-built {mod.__file__}"
        _modules[kind] = mod
        return mod


def load_cpu():
    """The CPU extension module (see the module docstring)."""
    return _load("cpu")


def load_cuda():
    """The CUDA extension module (see the module docstring)."""
    return _load("cuda")


def _unavailable(kind: str) -> str | None:
    if _flag("HAFSVG_DISABLE_EXT"):
        return "the extension is disabled by HAFSVG_DISABLE_EXT"
    if kind in _modules:
        return None
    if kind in _errors:
        return _errors[kind]
    if _prebuilt(kind)[0] is not None:
        return None
    missing = _jit_missing(kind)
    return "extension not built and cannot be compiled here: " + "; ".join(missing) if missing else None


def cpu_unavailable() -> str | None:
    """Why the CPU extension cannot be had (None: loaded, prebuilt, or buildable at first use)."""
    return _unavailable("cpu")


def cuda_unavailable() -> str | None:
    """Why the CUDA extension cannot be had (None: loaded, prebuilt, or buildable at first use)."""
    return _unavailable("cuda")


def cuda_backend_unavailable() -> str | None:
    """Why a ``cuda`` backend cannot run here: no CUDA torch, no device, or no extension."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return cuda_unavailable()


def load_refusal(loader) -> list[str]:
    """[] when the extension module loads (compiling it on first use), else [why]. Backends call it
    last in ``refuses``, which only dispatch runs (``unavailable``, which info runs, never compiles),
    so that ``auto`` moves on to the next backend when the build fails."""
    try:
        loader()
    except ExtensionUnavailable as e:
        return [str(e)]
    return []


def build_state(kind: str) -> str:
    """One line: loaded / prebuilt / JIT-cached / will JIT at first use / cannot build, and why."""
    if kind in _modules:
        return f"loaded ({_origin[kind]})"
    if kind in _errors:
        return f"cannot load: {_errors[kind]}"
    if _flag("HAFSVG_DISABLE_EXT"):
        return "disabled by HAFSVG_DISABLE_EXT"
    mod, why_not = _prebuilt(kind)
    if mod is not None:
        return f"prebuilt ({mod.__file__})"
    missing = _jit_missing(kind)
    if missing:
        return f"cannot build: {why_not}; " + "; ".join(missing)
    if _jit_cached(kind):
        return f"JIT-built, cached in {cache_dir(kind)} ({why_not})"
    return f"will JIT-compile at first use into {cache_dir(kind)} ({why_not})"
