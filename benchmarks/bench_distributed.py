"""Evaluation throughput (clips/s) of :func:`hafsvg.distributed.evaluate` on 1 and 2 ranks (and more).

``python benchmarks/bench_distributed.py [--ranks 1,2] [--threads 1] [--clips 8] [--samples 10]
[--preset tiny] [--device cpu] [--json out.json]`` launches ``torchrun --standalone --nproc-per-node N``
for each N (Gloo on the CPU, NCCL on CUDA; ``--threads`` intra-op threads per rank), times the
sharded evaluation between two barriers on rank 0 (process start, imports, model and data set-up
are left out) and prints clips/s per world size with the speed-up over one rank. Run it on an
otherwise idle machine: on a CPU each rank needs its own core(s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    from hafsvg import HAFSVG, HAFSVGConfig
    from hafsvg.data import make_dataset
    from hafsvg.distributed import barrier, evaluate, init_from_env, rank, shutdown, world_size

    torch.set_num_threads(args.threads)
    device = init_from_env(args.device)
    torch.manual_seed(0)
    config = HAFSVGConfig.preset(args.preset)
    model = HAFSVG(config).to(device).eval()
    data = make_dataset(config.dataset, config.n_past + config.n_eval, train=False, length=args.clips)
    data = [data[i] for i in range(len(data))]  # generated once, outside the timing
    evaluate(model, data[: world_size()], n_samples=args.samples, seed=0)  # warm-up: one clip per rank
    barrier()
    t0 = time.perf_counter()
    evaluate(model, data, n_samples=args.samples, seed=0, batch_size=args.batch_clips)
    barrier()
    seconds = time.perf_counter() - t0
    if rank() == 0:
        Path(args.result).write_text(json.dumps({
            "world_size": world_size(), "clips": args.clips, "samples": args.samples, "preset": args.preset,
            "threads_per_rank": args.threads, "device": str(device), "seconds": seconds,
            "clips_per_s": args.clips / seconds,
        }))  # fmt: skip
    shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2", help="world sizes to run, comma-separated (default 1,2)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--batch-clips", type=int, default=1)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(r) for r in args.ranks.split(",")]:
            result = Path(tmp) / f"ranks{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   __file__, "--worker", "--result", str(result), "--threads", str(args.threads),
                   "--clips", str(args.clips), "--samples", str(args.samples), "--batch-clips", str(args.batch_clips),
                   "--preset", args.preset, "--device", args.device]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            subprocess.run(cmd, env=env, check=True)
            rows.append(json.loads(result.read_text()))
    base = rows[0]["clips_per_s"]
    print(f"{'ranks':>5}  {'seconds':>8}  {'clips/s':>8}  {'speed-up':>8}")
    for r in rows:
        print(f"{r['world_size']:>5}  {r['seconds']:>8.2f}  {r['clips_per_s']:>8.3f}  {r['clips_per_s'] / base:>7.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
