"""Ahead-of-time compilation of a Triton kernel for sm_90a, as its launcher would compile it.

The launcher's ``kernel[grid](*args, **meta)`` specialises the arguments before compiling:
pointers (torch allocations are 256-byte aligned) get ``tt.divisibility = 16``; an integer equal
to 1 becomes the constant 1; an integer divisible by 16 gets ``tt.divisibility = 16``; arguments
named in ``do_not_specialize`` get neither; floats are fp32, bools u1. :func:`specialize` applies
these rules (those of Triton 3.2 to 3.9's JIT) to the argument values given, so the compiled code
is the one the GPU would run for that launch. Triton 3.0/3.1's ``ASTSource(constants=...)`` API is
accepted too, without divisibility hints (noted in the result).

Resources come from ptxas' own ``-v`` log when Triton can print it (``knobs.nvidia.dump_ptxas_log``),
else from running ptxas on the PTX, and from ``cuobjdump -res-usage``; the SASS from
``cuobjdump -sass``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the runtime default; silences Triton 3.9's notice

ARCH = 90  # sm_90a: Triton appends "a" from capability 90 on


@dataclasses.dataclass(frozen=True)
class Ptr:
    """A pointer argument of element type ``dtype`` (Triton's name: "bf16", "fp32", "i64")."""

    dtype: str


def _triton_dir() -> Path | None:
    try:
        import triton
    except Exception:
        return None
    return Path(triton.__file__).parent


def find_tool(name: str) -> str | None:
    """``cuobjdump`` / ``ptxas``: Triton's bundled copy, else PATH, else /usr/local/cuda/bin."""
    tdir = _triton_dir()
    cands = []
    if tdir is not None:
        cands.append(tdir / "backends" / "nvidia" / "bin" / name)
    which = shutil.which(name)
    if which:
        cands.append(Path(which))
    cands.append(Path("/usr/local/cuda/bin") / name)
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def missing() -> str | None:
    """None when everything the analysis needs is here, else one line saying what is missing."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:
        return f"Triton's ahead-of-time compilation API is missing ({type(e).__name__}: {e})"
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: the kernels are interpreter objects and cannot be compiled; unset it"
    if find_tool("cuobjdump") is None:
        return "cuobjdump is missing (looked in Triton's backends/nvidia/bin, PATH and /usr/local/cuda/bin)"
    return None


def _int_type(v: int) -> str:
    if -(2**31) <= v < 2**31:
        return "i32"
    return "u64" if v >= 2**63 else "i64"


def specialize(value, do_specialize: bool = True):
    """(signature type, constexpr value or None, divisible by 16) of one argument value."""
    if isinstance(value, tuple):
        return tuple(specialize(v, do_specialize) for v in value)
    if isinstance(value, Ptr):
        return f"*{value.dtype}", None, True
    if value is None:
        return "constexpr", None, False
    if isinstance(value, bool):
        return "u1", None, False
    if isinstance(value, int):
        if do_specialize and value == 1:
            return "constexpr", 1, False
        return _int_type(value), None, do_specialize and value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"cannot specialise an argument of type {type(value).__name__}")


def _params(fn):
    """(name, do_not_specialize) of each parameter of a JITFunction (or an autotuner around one)."""
    fn = getattr(fn, "fn", fn) if not hasattr(fn, "arg_names") else fn
    names = list(fn.arg_names)
    dns = [bool(getattr(p, "do_not_specialize", False)) for p in getattr(fn, "params", [])] or [False] * len(names)
    return fn, names, dns


def build_source(fn, args: dict, constexprs: dict):
    """An ``ASTSource`` of ``fn`` for these runtime argument values and compile-time constants.

    Returns (source, notes): notes lists what could not be reproduced with this Triton."""
    import inspect

    from triton.compiler import ASTSource

    fn, names, dns = _params(fn)
    signature, consts, attrs = {}, {}, {}
    for i, (name, dn) in enumerate(zip(names, dns)):
        if name in constexprs:
            signature[name] = "constexpr"
            consts[(i,)] = constexprs[name]
            continue
        if name not in args:
            raise KeyError(f"{fn.__name__}: no value for argument {name!r}")
        spec = specialize(args[name], not dn)
        if isinstance(spec, tuple) and spec and isinstance(spec[0], tuple):  # a tuple argument
            signature[name] = tuple(s[0] for s in spec)
            for j, (ty, cval, div) in enumerate(spec):
                if ty == "constexpr":
                    consts[(i, j)] = cval
                elif div:
                    attrs[(i, j)] = [["tt.divisibility", 16]]
            continue
        ty, cval, div = spec
        signature[name] = ty
        if ty == "constexpr":
            consts[(i,)] = cval
        elif div:
            attrs[(i,)] = [["tt.divisibility", 16]]
    params = inspect.signature(ASTSource.__init__).parameters
    notes = []
    if "constexprs" in params:
        src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    else:  # Triton 3.0 / 3.1: constants keyed by name, AttrsDescriptor attrs (not reproduced)
        named = {names[k[0]]: v for k, v in consts.items() if len(k) == 1}
        src = ASTSource(fn=fn, signature={k: v for k, v in signature.items() if v != "constexpr"}, constants=named)
        notes.append("this Triton's ASTSource takes no divisibility attributes: compiled without them")
    return src, notes


@dataclasses.dataclass
class Compiled:
    """One compiled kernel: resources and SASS."""

    name: str
    num_warps: int
    num_stages: int
    regs: int
    spill_stores: int  # bytes, from ptxas
    spill_loads: int
    stack: int  # bytes of stack frame per thread
    local: int  # bytes of local memory per thread (cuobjdump), spills included
    shared: int  # bytes of dynamic shared memory (Triton's metadata)
    static_shared: int  # bytes of static shared memory (cuobjdump)
    sass: str
    ptxas_log: str
    notes: list
    wgmma_serialized: list  # ptxas's reasons for serializing the wgmma instructions (wgmma_serialized)


_PTXAS_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


_PTXAS_SERIAL = re.compile(
    r"\((C75\d\d)\) Potential Performance Loss: wgmma\.mma_async instructions are serialized "
    r"due to (.*?) in the function"
)


def wgmma_serialized(log: str) -> list[str]:
    """ptxas's reasons (its C75xx "Potential Performance Loss" infos) for serializing the kernel's
    wgmma instructions, e.g. ``["C7515: non wgmma instructions defining accumulator registers of a
    wgmma between start and end of the pipeline stage"]``; [] where it does not. Serialized, each
    wgmma waits for the one before it to finish: latency, which the model does not charge."""
    return sorted({f"{code}: {why}" for code, why in _PTXAS_SERIAL.findall(log)})


def parse_ptxas_log(log: str) -> dict:
    """regs, stack, spill_stores, spill_loads from a ``ptxas -v`` log (one kernel); {} if absent."""
    out = {}
    m = _PTXAS_PROPS.search(log)
    if m:
        out.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
    m = _PTXAS_REGS.search(log)
    if m:
        out["regs"] = int(m.group(1))
    return out


def _run_tool(args, data: bytes, suffix: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"k{suffix}"
        path.write_bytes(data)
        res = subprocess.run([*args, str(path)], capture_output=True, text=True, check=True, cwd=d)
        return res.stdout + res.stderr


def _ptxas_path() -> str | None:
    """The ptxas Triton itself runs for sm_90 (3.9: ``ptxas-blackwell``, a CUDA 13 ptxas)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception:
        get_ptxas = None
    if get_ptxas is not None:
        for call in (lambda: get_ptxas(ARCH), get_ptxas):
            try:
                return call().path
            except Exception:
                pass
    return find_tool("ptxas-blackwell") or find_tool("ptxas")


def _ptxas_log_separately(ptx: str) -> str:
    ptxas = _ptxas_path()
    if ptxas is None:
        return ""
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "k.ptx", Path(d) / "k.cubin"
        src.write_text(ptx)
        res = subprocess.run(
            [ptxas, "-v", f"--gpu-name=sm_{ARCH}a", str(src), "-o", str(out)], capture_output=True, text=True
        )
        return res.stdout + res.stderr


def compile_kernel(fn, args: dict, constexprs: dict, num_warps: int, num_stages: int,
                   maxnreg: int | None = None) -> Compiled:  # fmt: skip
    """Compile ``fn`` for sm_90a with these argument values / constants and launch options."""
    import triton
    from triton.backends.compiler import GPUTarget

    src, notes = build_source(fn, args, constexprs)
    opts = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        opts["maxnreg"] = maxnreg
    knobs = getattr(triton, "knobs", None)
    nv = getattr(knobs, "nvidia", None) if knobs is not None else None
    log = ""
    if nv is not None and hasattr(nv, "dump_ptxas_log"):
        comp = getattr(knobs, "compilation", None)
        old = nv.dump_ptxas_log, getattr(comp, "always_compile", None)
        buf = io.StringIO()
        try:
            nv.dump_ptxas_log = True
            if old[1] is not None:
                comp.always_compile = True  # a cached kernel would skip ptxas and its log
            with contextlib.redirect_stdout(buf):
                k = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=opts)
        finally:
            nv.dump_ptxas_log = old[0]
            if old[1] is not None:
                comp.always_compile = old[1]
        log = buf.getvalue()
    else:
        k = triton.compile(src, target=GPUTarget("cuda", ARCH, 32), options=opts)
    if "spill stores" not in log:  # cached compilation (no ptxas run) or no knob: run ptxas ourselves
        log = _ptxas_log_separately(k.asm["ptx"])
    cubin = k.asm["cubin"]
    cuobjdump = find_tool("cuobjdump")
    res = _RES.search(_run_tool([cuobjdump, "-res-usage"], cubin, ".cubin"))
    sass = _run_tool([cuobjdump, "-sass"], cubin, ".cubin")
    pl = parse_ptxas_log(log)
    regs = pl.get("regs", int(res.group(1)) if res else -1)
    md = k.metadata
    shared = md.get("shared", 0) if isinstance(md, dict) else getattr(md, "shared", 0)
    return Compiled(
        name=fn.__name__ if hasattr(fn, "__name__") else str(fn),
        num_warps=num_warps,
        num_stages=num_stages,
        regs=regs,
        spill_stores=pl.get("spill_stores", -1),
        spill_loads=pl.get("spill_loads", -1),
        stack=pl.get("stack", int(res.group(2)) if res else -1),
        local=int(res.group(4)) if res else -1,
        shared=int(shared or 0),
        static_shared=int(res.group(3)) if res else 0,
        sass=sass,
        ptxas_log=log,
        notes=notes,
        wgmma_serialized=wgmma_serialized(log),
    )
