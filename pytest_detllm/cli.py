"""``detllm`` command line: ``detllm coverage`` lists the ops a model runs and whether each is covered."""

from __future__ import annotations

import argparse
import sys


def _coverage(args: argparse.Namespace) -> int:
    from .engine import Engine, Request
    from .errors import DetllmError
    from .model import load
    from .strict import record

    try:
        lm = load(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                  allow_pickle=args.allow_pickle)
    except DetllmError as exc:
        print(f"detllm: {exc}", file=sys.stderr)
        return 2
    ids = tuple(lm.tokenizer(args.prompt)["input_ids"])
    filler = tuple(lm.tokenizer("A second, longer request keeps the batch padded.")["input_ids"])
    eng = Engine(lm.model, pad_id=lm.tokenizer.pad_token_id or 0, eos_ids=[], device=lm.device,
                 invariant=args.kernels == "invariant")
    # Audit a padded batch: prefill and decode steps, as the fuzz runs them.
    with record(lm.model, raise_on_violation=False) as audit:
        eng.generate([Request(ids, max_new_tokens=3), Request(filler, max_new_tokens=3)])
    print(f"detllm coverage: model={lm.name} device={lm.device.type} dtype={lm.dtype} kernels={args.kernels}")
    print(audit.coverage_table())
    missing = sorted({v.op for v in audit.violations})
    if missing:
        print(f"\nNOT covered: {', '.join(missing)}")
        return 1
    print("\nevery reduction-bearing op ran through an invariant implementation")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .model import DTYPES  # light module: no torch at import

    parser = argparse.ArgumentParser(prog="detllm", description="pytest-detllm tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cov = sub.add_parser("coverage", help="list each aten op a model runs and whether it is covered")
    cov.add_argument("--model", default=None, help="HF model dir or .gguf (default: the embedded model)")
    cov.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cov.add_argument("--dtype", default="float32", choices=DTYPES)
    cov.add_argument("--kernels", default="invariant", choices=("invariant", "stock"))
    cov.add_argument("--prompt", default="The quick brown fox")
    cov.add_argument("--trust-remote-code", action="store_true")
    cov.add_argument("--allow-pickle", action="store_true")
    args = parser.parse_args(argv)
    return _coverage(args)


if __name__ == "__main__":
    raise SystemExit(main())
