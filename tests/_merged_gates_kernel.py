"""A Triton kernel for ``test_merged_gate_columns_and_split``: the merged gates' column order
(``u``, ``q`` per column) and the split of a tile coded by (row, unit, gate)."""

import triton
import triton.language as tl

from hafsvg_kernels.recurrent.triton_blocks import _gates_split, _merged_gate_columns


@triton.jit
def merged_gates_roundtrip(
    out_ptr,  # (BLOCK_B, 4H) fp32 out: i, f, g, o of units 0..H-1, each 4096 row + 4 unit + gate
    uq_ptr,  # (cdiv(H, BLOCK_N) * 4 BLOCK_N, 2) int32 out: each column's unit and gate
    H,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    n0 = tl.program_id(0) * BLOCK_N
    u, q = _merged_gate_columns(n0, BLOCK_N)
    j = tl.program_id(0) * 4 * BLOCK_N + tl.arange(0, 4 * BLOCK_N)
    tl.store(uq_ptr + 2 * j, u)
    tl.store(uq_ptr + 2 * j + 1, q)
    rows = tl.arange(0, BLOCK_B)
    acc = tl.where((u < H)[None, :], (rows[:, None] * 4096 + 4 * u[None, :] + q[None, :]).to(tl.float32), 0.0)
    unused = tl.zeros((BLOCK_B, 1), dtype=tl.float32)
    i, f, g, o = _gates_split(acc, unused, unused, unused, BLOCK_B, BLOCK_N, True)
    n = n0 + tl.arange(0, BLOCK_N)
    out = out_ptr + rows[:, None] * (4 * H) + n[None, :]
    mask = (n < H)[None, :]
    tl.store(out, i, mask=mask)
    tl.store(out + H, f, mask=mask)
    tl.store(out + 2 * H, g, mask=mask)
    tl.store(out + 3 * H, o, mask=mask)
