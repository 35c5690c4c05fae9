"""A Triton kernel for ``test_minus_delta_terms_are_exact``: the dq kernel's three terms of -delta
(``_minus_delta_terms``), each row's in its own output row."""

import triton
import triton.language as tl

from hafsvg_kernels.attention.triton_attention import _minus_delta_terms


@triton.jit
def minus_delta_terms(
    delta_ptr,  # (BLOCK,) fp32 in
    out_ptr,  # (BLOCK, 16) fp32 out: the terms tile, in fp32 so that the test sees its values unrounded
    BLOCK: tl.constexpr,
):  # fmt: skip
    rows = tl.arange(0, BLOCK)
    terms = _minus_delta_terms(tl.load(delta_ptr + rows), tl.float32)
    tl.store(out_ptr + rows[:, None] * 16 + tl.arange(0, 16)[None, :], terms)
