"""CPU generation cost of the invariant mode and of strict mode, against stock, in one run.

    python benchmarks/bench_cpu.py [--threads 1] [--model PATH]

Prints ms per generated token (decode) and prefill ms at batch 1 and 8, for stock kernels, the
invariant mode, and the invariant mode with strict auditing, plus the ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median per mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from pytest_detllm.engine import Engine, Request
    from pytest_detllm.model import load

    lm = load(args.model)
    rng = random.Random(0)
    print(f"model {lm.name}, torch {torch.__version__}, {args.threads} thread(s), "
          f"prompt {args.prompt_len} tokens, {args.new} new tokens, median of {args.repeats}")
    rows = []
    for bsz in (1, 8):
        reqs = [Request(tuple(rng.randrange(100, 40000) for _ in range(args.prompt_len)), max_new_tokens=args.new)
                for _ in range(bsz)]
        prefill_only = [Request(r.input_ids, max_new_tokens=1) for r in reqs]
        modes = ("stock", "invariant", "strict")
        engines = {}
        for mode in modes:
            eng = Engine(lm.model, pad_id=2, eos_ids=[], device=lm.device, invariant=mode != "stock",
                         strict=mode == "strict")
            eng.generate(prefill_only)  # warm up (tier calibration, allocator)
            engines[mode] = eng
        pre: dict[str, list[float]] = {m: [] for m in modes}
        tot: dict[str, list[float]] = {m: [] for m in modes}
        # Rounds interleave the modes, so a drift of this shared box moves every mode alike
        # instead of landing in one mode's block (and in the ratio).
        for _ in range(args.repeats):
            for mode in modes:
                eng = engines[mode]
                t = time.perf_counter(); eng.generate(prefill_only); pre[mode].append(time.perf_counter() - t)
                t = time.perf_counter(); eng.generate(reqs); tot[mode].append(time.perf_counter() - t)
        res = {}
        for mode in modes:
            p, tt = statistics.median(pre[mode]), statistics.median(tot[mode])
            res[mode] = (p * 1e3, (tt - p) / (args.new - 1) * 1e3, tt * 1e3)
        for mode, (p, d, tt) in res.items():
            rows.append((bsz, mode, p, d, tt, d / res["stock"][1], res["invariant"][1], res["invariant"][2]))
    # "vs invariant" is strict mode's overhead: per decode token, and on the whole generate call
    # (prefill + every step), which is what a test pays.
    print(f"{'batch':>5} {'kernels':<10} {'prefill ms':>10} {'ms/token':>9} {'generate ms':>11} {'vs stock':>9} "
          f"{'vs invariant (token)':>20} {'vs invariant (generate)':>23}")
    for bsz, mode, p, d, tt, r, inv, inv_tt in rows:
        print(f"{bsz:>5} {mode:<10} {p:>10.1f} {d:>9.1f} {tt:>11.1f} {r:>8.2f}x {d / inv:>19.3f}x {tt / inv_tt:>22.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
