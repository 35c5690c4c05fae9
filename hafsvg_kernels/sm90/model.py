"""Device constants, occupancy, the modeled time of compiled code, and the physical floor.

Device (H100 SXM, sm_90; the constants the project pins for floors and models): 132 SMs at
1.755 GHz; dense bf16 tensor rate 989 TFLOP/s; HBM 3.35 TB/s; 16 MUFU.EX2 lanes per clock per
SM; 4 warp-instructions issued per clock per SM.

Modeled time of one launch = the largest of five bounds, each for the busiest SM, which runs
``ceil(grid / 132)`` programs (programs spread evenly; a grid under 132 leaves SMs idle):

* issue: executed warp-instructions (SASS, every instruction of every warp, loops at their trip
  counts) / (4 per clock x 1.755 GHz);
* SFU: executed MUFU warp-instructions (all MUFU ops: EX2, RCP, LG2 share the unit) x 32 lanes /
  (16 per clock x 1.755 GHz);
* tensor: executed MMA FLOPs (from the SASS shapes, padding included) / the per-SM rate of the
  instruction kind: wgmma bf16 989/132 TFLOP/s; wgmma tf32 half that; mma.sync (HMMA) **assumed
  half** the wgmma rate of its type (Hopper runs mma.sync well below wgmma; the factor is an
  assumption, not a measurement); plus every FFMA's FLOPs at 128 lanes x 2 per clock: the fp32
  "ieee" dots (alone, never above the issue bound, which counts the same instructions), and in the
  tensor-core kernels the softmax's FFMAs (one per score), added to the MMA time as if the FMA
  pipes and the tensor cores never overlapped (conservative: asynchronous wgmma overlaps them, as
  FlashAttention-3 arranges; e.g. 58 of DCGAN 32^2's 590 µs of dK/dV tensor time, bf16);
* bandwidth: the launch's HBM bytes / 3.35 TB/s for the whole GPU (K/V shared by a clip's samples
  and the recurrent weights are counted once: perfect L2 reuse assumed);
* local: register spills, the executed local loads and stores (``LDL``/``STL``, 32 lanes x their
  width) through L1 at an **assumed** 128 bytes per clock per SM (one 32-bit warp access per
  clock; the L1 of an H100 SM, not one of the pinned constants), best case: it takes every spill
  as an L1 hit, though a few KB of stack per thread, times the resident threads, overflow L1 to
  L2. Without it a spilling kernel was modeled as if each local access cost one issue slot.

Not modeled: latency (memory, barriers, MMA pipeline), so a kernel with few warps per SM or a
serial chain is modeled faster than it runs; bank conflicts; L2 bandwidth; the overlap between
kernels. Static counts include instructions that a forward branch or a false predicate skips:
straight-line code behind a branch not taken counts once per pass (the attention kernels' masked
tail block, not run when N is a multiple of the block, overstates the issue time at small N).
Launch latency is reported apart (launch count, and an assumed 2.5 us per launch), never in the
modeled time nor in the floor.

Physical floor of an op = max(minimal HBM bytes / 3.35 TB/s, useful FLOPs / matrix
rate, useful exps / (16 x 132 x 1.755 GHz)), with the useful (unpadded) FLOPs and the matrix rate
989 TFLOP/s for bf16; for fp32 (the launchers use IEEE fp32 dots by default: torch disallows TF32)
the CUDA-core FMA rate 132 x 128 x 2 x 1.755 GHz = 59.3 TFLOP/s. Ratio to floor = floor / modeled
(1 = at the floor).
"""

from __future__ import annotations

import math

SMS = 132
CLOCK = 1.755e9
BF16_TENSOR = 989e12
HBM = 3.35e12
EX2_PER_CLK = 16
ISSUE_PER_CLK = 4
FP32_FMA = SMS * ISSUE_PER_CLK * 32 * 2 * CLOCK  # 4 warp-instructions x 32 lanes x 2 FLOPs
LAUNCH_LATENCY_ASSUMED = 2.5e-6
L1_BYTES_PER_CLK = 128  # per SM, assumed (local memory traffic of spills)

#: per-GPU rates of the MMA kinds, by operand type
MMA_RATES = {
    ("wgmma", "bf16"): BF16_TENSOR,
    ("wgmma", "fp32"): BF16_TENSOR / 2,  # tf32
    ("mma.sync", "bf16"): BF16_TENSOR / 2,  # assumption
    ("mma.sync", "fp32"): BF16_TENSOR / 4,  # assumption (tf32 mma.sync)
}

# SM limits (sm_90)
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_CTA = 1024
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32


def ctas_per_sm(regs: int, num_warps: int, shared: int) -> int:
    """Resident CTAs per SM: registers (allocated per warp in units of 256), shared memory (1 KiB
    reserved per CTA), warps, CTAs."""
    regs_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (regs_warp * num_warps)
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_CTA)
    return max(0, min(by_regs, by_smem, MAX_WARPS_PER_SM // num_warps, MAX_CTAS_PER_SM))


def bounds(per_program: dict, num_warps: int, programs: int, bytes_: float, dtype: str) -> dict:
    """The five bounds (seconds) of one launch from per-program, per-warp executed counters."""
    busiest = math.ceil(programs / SMS)
    warp_instr = per_program.get("instr", 0) * num_warps * busiest
    mufu_lanes = per_program.get("mufu", 0) * num_warps * busiest * 32
    tensor = 0.0
    for kind in ("wgmma", "mma.sync"):
        flops = per_program.get("mma_flops_" + kind, 0) * num_warps * busiest
        if flops:
            tensor += flops / (MMA_RATES[(kind, dtype)] / SMS)
    fma = per_program.get("fma_flops", 0) * num_warps * busiest / (FP32_FMA / SMS)
    return {
        "issue_s": warp_instr / (ISSUE_PER_CLK * CLOCK),
        "sfu_s": mufu_lanes / (EX2_PER_CLK * CLOCK),
        "tensor_s": tensor + fma,
        "bandwidth_s": bytes_ / HBM,
        "local_s": per_program.get("local_bytes", 0) * num_warps * busiest / (L1_BYTES_PER_CLK * CLOCK),
    }


def modeled(b: dict) -> tuple[float, str]:
    """(time, name of the largest bound)."""
    name = max(b, key=b.get)
    return b[name], name.removesuffix("_s")


def floor(flops: float, exps: float, bytes_: float, dtype: str) -> tuple[float, str, dict]:
    """(floor seconds, the bound that sets it, all three) of an op."""
    rate = BF16_TENSOR if dtype == "bf16" else FP32_FMA
    parts = {"bytes_s": bytes_ / HBM, "flops_s": flops / rate, "exps_s": exps / (EX2_PER_CLK * SMS * CLOCK)}
    name = max(parts, key=parts.get)
    return parts[name], name.removesuffix("_s"), parts


def waves(programs: int, per_sm: int) -> float:
    """Full waves of the grid at ``per_sm`` resident CTAs per SM."""
    return programs / (SMS * per_sm) if per_sm else float("inf")
