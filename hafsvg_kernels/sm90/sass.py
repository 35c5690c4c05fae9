"""Parsing of ``cuobjdump -sass`` output: instructions, loops, loop nests and counts.

A loop is the address range [target, branch] of a backward ``BRA`` (a branch to itself, the
trap after ``EXIT``, is not a loop); several backward branches to one target make one loop.
Loops nest by containment. Counts over a range are *static* (every instruction in the range
counts once per pass, including code that a forward branch or a false predicate skips: an upper
bound on what issues). Executed counts multiply each instruction by the trip counts of the loops
around it, given as an expected loop tree (:class:`Trip`) that must have the shape of the SASS
loop nest (loops with ``optional=True`` may be absent from the SASS: the compiler removes loops
whose trip count it knows to be 0).

Code behind a semaphore (a program's atomic add on a counter that the last of the programs
sharing it to finish reads, then a predicated ``EXIT`` for the others: :func:`semaphore_exit`)
runs in one of them; with ``guard`` > 1 its executed counts are divided by ``guard`` (the report
passes the smaller of the programs sharing it and the programs on the busiest SM).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_TARGET = re.compile(r"0x([0-9a-fA-F]+)")
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"^HMMA\.(\d+)")
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4), "16832": (16, 8, 32)}


@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. "MUFU.EX2", "HGMMA.64x64x16.F32.BF16"
    operands: str
    predicated: bool


def parse(sass: str) -> list[Instr]:
    """The instructions of a one-function SASS listing, in address order."""
    out = []
    for line in sass.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        text = m.group(2)
        pm = _PRED.match(text)
        if pm:
            text = text[pm.end() :]
        op, _, rest = text.partition(" ")
        out.append(Instr(int(m.group(1), 16), op, rest.strip(), pm is not None))
    return out


@dataclasses.dataclass
class Loop:
    start: int
    end: int  # address of the (last) backward branch
    children: list = dataclasses.field(default_factory=list)


def loops(instrs: list[Instr]) -> list[Loop]:
    """The top-level loops (each with its nested loops), in address order."""
    ends: dict[int, int] = {}
    for ins in instrs:
        if not ins.opcode.startswith("BRA"):
            continue
        m = _TARGET.search(ins.operands)
        if not m:
            continue
        target = int(m.group(1), 16)
        if target < ins.addr:
            ends[target] = max(ends.get(target, 0), ins.addr)
    flat = sorted((Loop(s, e) for s, e in ends.items()), key=lambda lp: (lp.start, -lp.end))
    roots: list[Loop] = []
    stack: list[Loop] = []
    for lp in flat:
        while stack and not (stack[-1].start <= lp.start and lp.end <= stack[-1].end):
            stack.pop()
        (stack[-1].children if stack else roots).append(lp)
        stack.append(lp)
    return roots


def walk(tree: list[Loop]):
    for lp in tree:
        yield lp
        yield from walk(lp.children)


def shape(tree: list[Loop]) -> list:
    """The nest as nested lists (for messages and tests)."""
    return [shape(lp.children) for lp in tree]


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------


def mma_flops(opcode: str) -> tuple[str, int]:
    """(kind, FLOPs of one instruction as one warp issues it) for tensor-core and FMA opcodes.

    HGMMA is a warpgroup instruction: each of the 4 warps issues it and the 4 together execute
    one 64xNxK product, so one warp's share is 2*64*N*K / 4. HMMA (mma.sync) is per warp.
    FFMA: 32 lanes x 2."""
    m = _HGMMA.match(opcode)
    if m:
        mm, n, k = (int(x) for x in m.groups())
        return "wgmma", 2 * mm * n * k // 4
    m = _HMMA.match(opcode)
    if m:
        mm, n, k = _HMMA_SHAPES.get(m.group(1), (16, 8, 16))
        return "mma.sync", 2 * mm * n * k
    if opcode.startswith("FFMA") or opcode.startswith("DFMA"):
        return "fma", 64
    return "", 0


def classify(ins: Instr) -> dict:
    """The counters one instruction adds to (each of its warp's issue)."""
    c = {"instr": 1}
    op = ins.opcode
    if op.startswith("NOP"):
        return {}
    if op.startswith("MUFU"):
        c["mufu"] = 1
        if op.startswith("MUFU.EX2"):
            c["ex2"] = 1
    kind, flops = mma_flops(op)
    if kind in ("wgmma", "mma.sync"):
        c["mma"] = 1
        c["mma_flops_" + kind] = flops
    elif kind == "fma":
        c["ffma"] = 1
        c["fma_flops"] = flops
    if op.startswith(("STL", "LDL")):
        c["stl" if op.startswith("STL") else "ldl"] = 1
        c["local_bytes"] = 32 * local_width(op)
    if op.startswith(("REDG", "ATOMG")):  # global atomics (not charged by the model; reported)
        c["red"] = 1
        c["red_bytes"] = 32 * atomic_width(op)
    return c


_ATOMIC_TYPE = re.compile(r"\.(?:BF|F|U|S)(16|32|64)(?:x(\d))?(?:\.|$)")


def atomic_width(opcode: str) -> int:
    """Bytes per lane of a global atomic (``REDG.E.ADD.F32x4.FTZ.RN.STRONG.GPU``: 16;
    ``REDG.E.ADD.F32.FTZ.RN.STRONG.GPU``: 4; ``ATOMG.E.ADD.64``: 8; no type suffix: 4)."""
    m = _ATOMIC_TYPE.search(opcode)
    if m:
        return int(m.group(1)) // 8 * int(m.group(2) or 1)
    return 8 if ".64" in opcode else 4


def local_width(opcode: str) -> int:
    """Bytes per lane of a local load/store (``LDL.64``: 8; no size suffix: 4)."""
    for suffix, width in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in opcode:
            return width
    return 4


def static_counts(instrs: list[Instr], lo: int = 0, hi: int | None = None) -> Counter:
    """Counters over the instructions with lo <= addr <= hi."""
    total = Counter()
    for ins in instrs:
        if ins.addr >= lo and (hi is None or ins.addr <= hi):
            total.update(classify(ins))
    return total


def mma_kind(instrs: list[Instr]) -> str:
    """ "wgmma" (HGMMA), "mma.sync" (HMMA) or "fma" (neither): what the dots compiled to."""
    ops = {i.opcode.split(".")[0] for i in instrs}
    if "HGMMA" in ops:
        return "wgmma"
    if "HMMA" in ops:
        return "mma.sync"
    return "fma"


@dataclasses.dataclass
class Trip:
    """A loop of the source with its trip count (per program), for :func:`executed`."""

    trips: int
    children: list = dataclasses.field(default_factory=list)
    main: bool = False  # the main (score) loop: per-iteration counts are reported for it
    optional: bool = False  # may be missing from the SASS (trip count known to be 0 at compile time)


def match(sass_tree: list[Loop], expected: list[Trip]):
    """Pairs (Loop, Trip) when the SASS nest has the expected shape (optional loops may be
    missing), else None."""

    def go(ls, ts):
        if not ls and all(t.optional for t in ts):
            return []
        if not ts:
            return None
        t = ts[0]
        if ls:
            sub = go(ls[0].children, t.children)
            if sub is not None:
                rest = go(ls[1:], ts[1:])
                if rest is not None:
                    return [(ls[0], t), *sub, *rest]
        if t.optional:
            return go(ls, ts[1:])
        return None

    return go(sass_tree, expected)


@dataclasses.dataclass
class Executed:
    """Executed counters of one program, per warp (each warp issues the same stream)."""

    total: Counter
    main_per_iter: Counter | None  # per iteration of the main loop, inner loops at their trips
    main_iters: int
    matched: bool
    note: str = ""
    main_total_iters: int = 0  # main-loop iterations per program (times the trips of the loops around it)


def semaphore_exit(instrs: list[Instr]) -> int | None:
    """Address of the predicated ``EXIT`` after the last ``ATOMG`` (an atomic whose old value is
    read: the semaphore's), past which only the last program runs; None without one."""
    atom = max((i.addr for i in instrs if i.opcode.startswith("ATOMG")), default=None)
    if atom is None:
        return None
    return next((i.addr for i in instrs if i.addr > atom and i.predicated and i.opcode == "EXIT"), None)


def executed(instrs: list[Instr], expected: list[Trip], guard: int = 1) -> Executed:
    """Counters per program and warp, each instruction times the trips of the loops around it;
    with ``guard`` > 1, the code past the semaphore's exit (:func:`semaphore_exit`) divided by it.

    When the SASS nest does not have the expected shape, the fallback counts the code outside
    loops once and the innermost loop holding the most MUFU.EX2 (else the most MMA) as the main
    loop at the expected main loop's trips, everything else once (noted)."""
    cut = semaphore_exit(instrs) if guard > 1 else None
    if guard > 1 and cut is None:
        raise ValueError(f"guard {guard} given, but the SASS has no semaphore exit (ATOMG, then a predicated EXIT)")
    share = (lambda addr: 1 / guard if addr > cut else 1) if cut is not None else (lambda addr: 1)
    tree = loops(instrs)
    pairs = match(tree, expected)
    pruned_note = ""
    if pairs is None:  # retry without small loops that hold no MMA / FMA / exp (stack copies and the like)
        small = prune(instrs, tree)
        pairs = match(small, expected)
        if pairs is not None:
            pruned_note = f"{_count(tree) - _count(small)} small loop(s) without MMA/FMA/EX2 counted once"
            tree = small
    main_trip = next((t for t in _walk_trips(expected) if t.main), None)
    if pairs is None:
        inner = [lp for lp in walk(tree) if not lp.children]
        note = f"SASS loop nest {shape(tree)} does not match the expected one; main loop guessed"
        if not inner:
            return Executed(_shared_counts(instrs, share), None, 0, False, note)

        def weight(lp):
            c = static_counts(instrs, lp.start, lp.end)
            return (c["ex2"], c["mma"] + c["ffma"])

        best = max(inner, key=weight)
        trips = main_trip.trips if main_trip else 1
        per = static_counts(instrs, best.start, best.end)
        total = _shared_counts(instrs, share)
        for k, v in per.items():
            total[k] += v * (trips - 1) * share(best.start)
        return Executed(total, per, trips, False, note, trips)
    mult = {id(lp): t.trips for lp, t in pairs}
    parent_of = {}
    for lp in walk(tree):
        for ch in lp.children:
            parent_of[id(ch)] = lp
    # multiplicity: product of trips along the ancestors
    cum = {}

    def cumulative(lp):
        if id(lp) not in cum:
            p = parent_of.get(id(lp))
            cum[id(lp)] = mult.get(id(lp), 1) * (cumulative(p) if p is not None else 1)
        return cum[id(lp)]

    def weighted(lo, hi, base):
        """Counters over [lo, hi], each instruction x (its innermost loop's multiplicity / base)."""
        out = Counter()
        for ins in instrs:
            if lo <= ins.addr <= hi:
                w = _innermost_mult(ins.addr, tree, cumulative) * share(ins.addr)
                for k, v in classify(ins).items():
                    out[k] += v * w / base
        return out

    total = weighted(0, 1 << 62, 1)
    main_per = None
    iters = total_iters = 0
    for lp, t in pairs:
        if t.main:
            c = cumulative(lp)
            main_per = weighted(lp.start, lp.end, c) if c else static_counts(instrs, lp.start, lp.end)
            iters, total_iters = t.trips, c
    return Executed(total, main_per, iters, True, pruned_note, total_iters)


def _shared_counts(instrs: list[Instr], share) -> Counter:
    """Static counts, each instruction times ``share(addr)``."""
    out = Counter()
    for ins in instrs:
        for k, v in classify(ins).items():
            out[k] += v * share(ins.addr)
    return out


def prune(instrs: list[Instr], tree: list[Loop], max_instr: int = 32) -> list[Loop]:
    """The nest without leaf loops of fewer than ``max_instr`` instructions holding no MMA, FFMA or MUFU."""
    out = []
    for lp in tree:
        kids = prune(instrs, lp.children, max_instr)
        if not kids:
            c = static_counts(instrs, lp.start, lp.end)
            if c["instr"] < max_instr and not (c["mma"] or c["ffma"] or c["mufu"]):
                continue
        out.append(Loop(lp.start, lp.end, kids))
    return out


def _count(tree) -> int:
    return sum(1 for _ in walk(tree))


def _walk_trips(ts):
    for t in ts:
        yield t
        yield from _walk_trips(t.children)


def _innermost_mult(addr, tree, cumulative) -> int:
    best = None
    for lp in walk(tree):
        if lp.start <= addr <= lp.end and (best is None or lp.end - lp.start < best.end - best.start):
            best = lp
    return cumulative(best) if best is not None else 1
