"""Backend dispatch: reasons, the HAFSVG_BACKEND override, the auto order, unknown names, and the
C++/CUDA extension's part in it (cpp first on CPUs when it can be had, torch otherwise; info never
compiles)."""

from __future__ import annotations

import os

import pytest
import torch

import hafsvg_kernels.attention.cpp_attention as cpp_attention
from hafsvg_kernels import ENV_VAR, BackendUnavailable, _ext, aligned_attention, info
from hafsvg_kernels.attention.interface import ATTENTION
from hafsvg_kernels.recurrent import HierarchicalGaussianLSTM
from hafsvg_kernels.recurrent.interface import GAUSSIAN_LSTM_STEP, LSTM_STEP


def qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(6, 17, 8, generator=g, dtype=dtype),
        torch.randn(2, 17, 8, generator=g, dtype=dtype),
        torch.randn(2, 17, 5, generator=g, dtype=dtype),
    )


def gaussian_args(B=3):
    m = HierarchicalGaussianLSTM(11, 4, 16, 1, 2)
    return (torch.randn(B, 11), m.init_state(B), tuple(g.weights() for g in m.groups), torch.randn(B, 4))


CPP_BUILT = _ext.cpu_unavailable() is None


def test_triton_on_cpu_without_interpreter_gives_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = ATTENTION.reasons("triton", *qkv(), 1.0, None)
    assert any("TRITON_INTERPRET=1" in w for w in why), why


def test_cuda_backend_refuses_cpu_tensors_with_reasons():
    q, k, v = qkv()
    assert any("runs on CUDA tensors" in w for w in cpp_attention.CUDA_BACKEND.refuses(q, k, v, 1.0, None))
    why = ATTENTION.reasons("cuda", q, k, v, 1.0, None)
    assert why and all(w for w in why)
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run these inputs: .+"):
        aligned_attention(q, k, v, backend="cuda")
    x, states, weights, eps = gaussian_args()
    assert GAUSSIAN_LSTM_STEP.reasons("cuda", x, states, weights, eps)


def test_cpp_refuses_other_devices_and_dtypes():
    q, k, v = qkv(torch.float16)
    why = cpp_attention.CPP_BACKEND.refuses(q, k, v, 1.0, None)
    assert any("float32/float64" in w for w in why), why
    meta = q.to("meta"), k.to("meta"), v.to("meta")
    assert any("runs on CPU tensors" in w for w in cpp_attention.CPP_BACKEND.refuses(*meta, 1.0, None))


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailable) as err:
        aligned_attention(*qkv(), backend="nope")
    for name in ("torch", "triton", "cpp", "cuda"):
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["torch", "cpp"])
def test_env_var_forces_a_backend(monkeypatch, name):
    if name == "cpp" and not CPP_BUILT:
        pytest.skip(f"C++ extension: {_ext.cpu_unavailable()}")
    monkeypatch.setenv(ENV_VAR, name)
    assert ATTENTION.select("auto", "cpu", *qkv(), 1.0, None).name == name
    assert GAUSSIAN_LSTM_STEP.select("auto", "cpu", *gaussian_args()).name == name
    # an explicit backend argument wins over the variable
    assert ATTENTION.select("torch", "cpu", *qkv(), 1.0, None).name == "torch"


def test_env_var_forcing_an_impossible_backend_raises(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailable, match="'cuda'"):
        aligned_attention(*qkv())


@pytest.mark.skipif(not CPP_BUILT, reason=f"C++ extension: {_ext.cpu_unavailable()}")
def test_auto_on_cpu_picks_cpp_when_it_can_be_had(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert ATTENTION.preference["cpu"][0] == "cpp"
    assert ATTENTION.select("auto", "cpu", *qkv(), 1.0, None).name == "cpp"
    assert GAUSSIAN_LSTM_STEP.select("auto", "cpu", *gaussian_args()).name == "cpp"
    # float16 is refused by cpp: auto moves on to torch
    assert ATTENTION.select("auto", "cpu", *qkv(torch.float16), 1.0, None).name == "torch"


def test_auto_on_cpu_falls_back_to_torch_without_the_extension(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HAFSVG_DISABLE_EXT", "1")
    assert "HAFSVG_DISABLE_EXT" in _ext.cpu_unavailable()
    assert ATTENTION.select("auto", "cpu", *qkv(), 1.0, None).name == "torch"
    assert GAUSSIAN_LSTM_STEP.select("auto", "cpu", *gaussian_args()).name == "torch"
    x = torch.randn(3, 11)
    m = HierarchicalGaussianLSTM(11, 4, 16, 1, 2)
    assert LSTM_STEP.preference["cpu"] == ("cpp", "torch")
    z, *_ = m.step(x, m.init_state(3), torch.randn(3, 4))[0]
    assert z.shape == (3, 4)


def test_auto_falls_back_when_the_build_fails(monkeypatch):
    """A compiler error at first use: auto takes torch, an explicit cpp raises with the reason."""

    def failing():
        raise _ext.ExtensionUnavailable("compiling the cpu extension failed (simulated)")

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(cpp_attention, "load_cpu", failing)
    assert ATTENTION.select("auto", "cpu", *qkv(), 1.0, None).name == "torch"
    with pytest.raises(BackendUnavailable, match="simulated"):
        aligned_attention(*qkv(), backend="cpp")


def test_info_reports_build_state_without_compiling(monkeypatch):
    def no_build(kind):
        raise AssertionError("info must not compile")

    monkeypatch.setattr(_ext, "_modules", {})
    monkeypatch.setattr(_ext, "_errors", {})
    monkeypatch.setattr(_ext, "_jit_build", no_build)
    text = info.report()
    assert "C++ ext" in text and "CUDA ext" in text
    assert "cpp" in text and "cuda" in text


def test_extension_builds_where_required():
    """CI sets HAFSVG_REQUIRE_EXT=1: there the C++ extension must load (compiling it if need be),
    so that a broken build fails instead of turning the cpp tests into skips."""
    if os.environ.get("HAFSVG_REQUIRE_EXT", "0") in ("", "0"):
        pytest.skip("HAFSVG_REQUIRE_EXT is not set (CI sets it)")
    assert _ext.cpu_unavailable() is None, _ext.cpu_unavailable()
    assert _ext.load_cpu().attention_forward is not None


def test_tf32_allowed_follows_legacy_and_new_settings():
    """The fp32 dot precision follows torch's TF32 switch, whichever API set it (in a subprocess:
    mixing the two APIs changes process-wide state that later tests would see)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import torch
        from hafsvg_kernels._triton import tf32_allowed
        seen = [tf32_allowed()]
        torch.backends.cuda.matmul.allow_tf32 = True
        seen.append(tf32_allowed())
        torch.backends.cuda.matmul.allow_tf32 = False
        seen.append(tf32_allowed())
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # the newer API (torch >= 2.9)
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            seen.append(tf32_allowed())
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            seen.append(tf32_allowed())
        print(seen)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("[False, True, False, True, False]", "[False, True, False]"), run.stdout


def test_env_var_with_an_unknown_name_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "foo")
    with pytest.raises(BackendUnavailable) as err:
        aligned_attention(*qkv())
    message = str(err.value)
    assert f"{ENV_VAR}='foo'" in message and "\n" not in message
    assert "valid names: auto, cpp, cuda, torch, triton" in message
    monkeypatch.setenv(ENV_VAR, "auto")  # "auto" is a valid value: the usual order
    assert ATTENTION.select("auto", "cpu", *qkv(), 1.0, None).name in ("cpp", "torch")


def test_env_var_forcing_an_unavailable_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailable) as err:
        GAUSSIAN_LSTM_STEP.select("auto", "cpu", *gaussian_args())
    message = str(err.value)
    assert message.startswith(f"{ENV_VAR}=cuda forces gaussian_lstm_step: backend 'cuda' cannot run")
    assert "valid names: auto, cpp, cuda, torch, triton" in message


def _info(**env):
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "hafsvg_kernels.info"], capture_output=True, text=True,
                         env={**environ, "OMP_NUM_THREADS": "1", **env}, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line.strip().startswith("triton ")][1:]  # per op


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only wording")
def test_info_says_triton_runs_cpu_tensors_only_under_the_interpreter():
    """Without a GPU, Triton is not simply "available": CPU tensors need TRITON_INTERPRET=1, which
    is for correctness, and info says so with and without the variable."""
    pytest.importorskip("triton")
    without = _info()
    assert len(without) == 3, without
    for line in without:
        assert "no CUDA device" in line and "only under TRITON_INTERPRET=1" in line and "correctness" in line, line
        assert not line.split()[1].startswith("available"), line
    with_it = _info(TRITON_INTERPRET="1")
    assert len(with_it) == 3, with_it
    for line in with_it:
        assert "available: CPU tensors through the interpreter" in line and "correctness" in line, line


def test_a_build_lock_left_by_a_killed_build_is_removed(tmp_path, capsys):
    """torch waits forever on the lock file of a build that was killed: a lock older than any
    build is removed with a message, a recent one is kept and the wait is announced."""
    import time

    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - _ext.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    _ext._check_lock(tmp_path)
    assert not lock.exists() and "did not finish" in capsys.readouterr().err
    lock.touch()
    _ext._check_lock(tmp_path)
    assert lock.exists() and "waiting for another process's build" in capsys.readouterr().err
    lock.unlink()
    _ext._check_lock(tmp_path)
    assert capsys.readouterr().err == ""

