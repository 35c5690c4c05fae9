"""What a new user meets in the first hour: the license, what a plain install brings (ninja, and
without it a clear reason and the torch backend at once), and help texts, docstrings and README
that stand on their own (no citations of a SPEC.md the package does not ship).

The rest of the first-hour fixes are tested beside their commands: a quiet ``hafsvg profile`` and its
footnote (test_profile.py), one-line errors for HAFSVG_BACKEND, corrupt checkpoints and a run folder
that already holds a run (test_cli.py, test_train.py), and info's Triton line (test_dispatch.py)."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import hafsvg
import hafsvg_kernels
from hafsvg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (hafsvg, hafsvg_kernels)


def _env(**extra) -> dict:
    """The environment of a CLI subprocess: one thread, and ``extra`` (None removes a variable)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# --- install: license and requirements -------------------------------------------------------


def _setup_call() -> dict:
    """The keyword arguments of setup.py's ``setup(...)`` call whose values are literals."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    assert len(calls) == 1
    found = {}
    for kw in calls[0].keywords:
        try:
            found[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:  # a name such as ext_modules
            pass
    return found


def test_license_is_apache_2_and_setup_says_so():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text) > 10_000  # the whole text, not a pointer to it
    assert _setup_call()["license"] == "Apache-2.0"


def test_plain_install_brings_ninja():
    """The first-use C++ compile needs ninja: a plain ``pip install`` must bring it."""
    names = [req.split(">")[0].split("=")[0].split("<")[0].strip().lower() for req in _setup_call()["install_requires"]]
    assert "ninja" in names, names


def test_without_ninja_the_build_says_so_and_torch_runs_at_once(tmp_path):
    """No ninja on PATH (and no prebuilt module): the cpp backend says ninja is missing, ``auto``
    takes torch without trying to compile, and info says why."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("c++", "cc", "g++", "gcc"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    script = (
        "import time, torch\n"
        "from hafsvg_kernels import _ext, info, aligned_attention\n"
        "from hafsvg_kernels.attention.interface import ATTENTION\n"
        "q = torch.randn(2, 5, 4); k = torch.randn(1, 5, 4); v = torch.randn(1, 5, 3)\n"
        "t0 = time.perf_counter()\n"
        "print('chosen', ATTENTION.select('auto', 'cpu', q, k, v, 1.0, None).name)\n"
        "aligned_attention(q, k, v)\n"
        "print('seconds', time.perf_counter() - t0)\n"
        "print('why', _ext.cpu_unavailable())\n"
        "print(info.report())\n"
    )
    env = _env(PATH=str(bin_dir), TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"), HAFSVG_BACKEND=None)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    if "chosen cpp" in out:
        pytest.skip("a prebuilt C++ extension is installed: ninja is not needed")
    assert "chosen torch" in out, out
    assert float(out.split("seconds ")[1].split()[0]) < 5, out  # no compile attempt
    assert "ninja is not on PATH" in out.split("why ")[1], out
    assert "compiling" not in run.stderr, run.stderr
    assert "cannot build" in out and "ninja" in out.split("C++ ext")[1].splitlines()[0], out


# --- no SPEC citations in what users read ------------------------------------------------------


def _modules():
    for package in PACKAGES:
        yield package
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # runs the command line
                yield importlib.import_module(info.name)


def _documented(module):
    """(qualified name, docstring) of the module and of every class, function and method defined in it."""
    yield module.__name__, module.__doc__
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield f"{module.__name__}.{name}", obj.__doc__
            for attr, member in vars(obj).items():
                member = getattr(member, "__func__", member)  # classmethod, staticmethod
                if isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{attr}", member.__doc__
        elif inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", obj.__doc__


def test_no_docstring_cites_the_spec():
    cites = [name for module in _modules() for name, doc in _documented(module) if doc and "SPEC" in doc]
    assert not cites, cites


def test_no_help_text_or_readme_cites_the_spec():
    parser = build_parser()
    texts = {"hafsvg": parser.format_help()}
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        texts[name] = command.format_help()
    assert {"train", "sample", "evaluate", "profile"} <= set(texts)
    assert not [name for name, text in texts.items() if "SPEC" in text]
    readme = (ROOT / "README.md").read_text()
    assert not [line for line in readme.splitlines() if "SPEC" in line]
