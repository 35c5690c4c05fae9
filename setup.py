"""Install hafsvg; prebuild the C++ (and CUDA) extension when the build environment allows.

The extension (``csrc/``) is optional at install time and never makes an install fail:

* torch not importable here (PEP 517 build isolation: pip's isolated build environment has only
  setuptools and wheel, and an unpinned torch must never be pulled into it): no prebuilt
  extension; ``hafsvg_kernels`` compiles it at first use (JIT, cached; see
  ``hafsvg_kernels/_ext.py``). To prebuild: ``pip install --no-build-isolation -e .`` with torch
  already installed.
* torch importable: ``hafsvg_kernels._C`` (CPU) is built when a C++ compiler is found, and
  ``hafsvg_kernels._C_cuda`` when nvcc (CUDA_HOME) and a CUDA build of torch are present, or
  ``HAFSVG_FORCE_CUDA=1`` (e.g. a GPU-less build machine). ``TORCH_CUDA_ARCH_LIST`` and ``MAX_JOBS``
  are honoured as for every torch extension. A failing compile is reported as a warning and the
  install goes on (the extension then JIT-compiles at first use, or the torch backends run),
  unless ``HAFSVG_BUILD_STRICT=1`` (CI), which makes it an error.
* ``HAFSVG_NO_PREBUILD=1`` skips the prebuild altogether.

The C++ sources are also copied into the package (``hafsvg_kernels/_csrc``) so that a regular
(non-editable) install can JIT-compile them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def _say(msg: str) -> None:
    print(f"hafsvg setup: {msg}", file=sys.stderr)


def _build_config():
    """hafsvg_kernels/_build_config.py, loaded by path: the package itself is not importable yet."""
    spec = importlib.util.spec_from_file_location("_hafsvg_build_config", ROOT / "hafsvg_kernels" / "_build_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class CopySources(build_py):
    """Ship csrc/ inside the package as hafsvg_kernels/_csrc (for JIT builds of regular installs)."""

    def run(self):
        super().run()
        if self.editable_mode or not CSRC.is_dir():
            return  # an editable install JIT-compiles from the checkout's csrc/
        dest = Path(self.build_lib) / "hafsvg_kernels" / "_csrc"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(CSRC, dest, ignore=shutil.ignore_patterns(".*"))


def _extensions():
    """(ext_modules, cmdclass) for the prebuilt extension, or ([], {}) with the reason printed."""
    if _flag("HAFSVG_NO_PREBUILD"):
        _say("HAFSVG_NO_PREBUILD is set: no prebuilt extension (it compiles at first use)")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # ImportError in an isolated build env; anything from a broken torch
        _say(
            f"torch is not importable here ({type(e).__name__}: {e}); the C++ extension is not prebuilt and "
            "compiles at first use. To prebuild it: pip install --no-build-isolation -e . (torch installed first)"
        )
        return [], {}
    cfg = _build_config()
    include = [str(CSRC)]
    ext_modules = []
    if shutil.which(os.environ.get("CXX", "c++")):
        ext_modules.append(
            cpp_extension.CppExtension(
                "hafsvg_kernels._C",
                [str(CSRC / s) for s in cfg.CPU_SOURCES],
                include_dirs=include,
                extra_compile_args={"cxx": cfg.cpu_cflags(CSRC)},
                extra_link_args=cfg.openmp_flags(),
            )
        )
    else:
        _say("no C++ compiler found: the C++ extension is not prebuilt")
    force_cuda = _flag("HAFSVG_FORCE_CUDA")
    if (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None) or force_cuda:
        cflags, nvcc_flags = cfg.cuda_cflags(CSRC)
        ext_modules.append(
            cpp_extension.CUDAExtension(
                "hafsvg_kernels._C_cuda",
                [str(CSRC / s) for s in cfg.CUDA_SOURCES],
                include_dirs=include,
                extra_compile_args={"cxx": cflags, "nvcc": nvcc_flags},
            )
        )
    else:
        _say("no CUDA toolkit or CPU-only torch: the CUDA extension is not prebuilt (HAFSVG_FORCE_CUDA=1 forces it)")

    class SafeBuildExt(cpp_extension.BuildExtension):
        """Builds each extension; a failure is a warning (the install goes on) unless
        HAFSVG_BUILD_STRICT=1."""

        failed: set[str] = set()

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # compiler and linker errors come as several exception types
                if _flag("HAFSVG_BUILD_STRICT"):
                    raise
                self.failed.add(ext.name)
                _say(
                    f"WARNING: building {ext.name} failed ({type(e).__name__}: {e}); installing without it. "
                    "hafsvg_kernels will try to compile it at first use; `python -m hafsvg_kernels.info` says why "
                    "not if it cannot. HAFSVG_BUILD_STRICT=1 makes this an error."
                )

        def copy_extensions_to_source(self):
            # editable installs copy each built module next to the sources; skip the failed ones
            self.extensions = [e for e in self.extensions if e.name not in self.failed]
            super().copy_extensions_to_source()

    return ext_modules, {"build_ext": SafeBuildExt}


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = CopySources

setup(
    name="hafsvg",
    version="0.1.0",
    description="SVG-LP / HAF-SVG stochastic video prediction with fused Triton and C++/CUDA kernels",
    license="Apache-2.0",
    packages=find_packages(include=["hafsvg", "hafsvg.*", "hafsvg_kernels", "hafsvg_kernels.*"]),
    # the pretrained model, its test set and model card (see MANIFEST.in for the sdist)
    package_data={"hafsvg.pretrained": ["*.pt", "*.npz", "*.md", "*.png", "*.json"]},
    python_requires=">=3.10",
    # ninja: the C++ extension compiles at first use (torch.utils.cpp_extension.load) unless prebuilt
    install_requires=["torch>=2.4", "numpy", "pillow", "tqdm", "ninja"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark", "scikit-image", "triton>=3.0", "ruff", "ninja", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["hafsvg=hafsvg.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
