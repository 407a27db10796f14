"""``detllm`` command line: ``detllm coverage`` lists the ops a model runs and whether each is covered;
``detllm cache`` shows what the plugin keeps on disk and prunes or clears it."""

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


def _cache(args: argparse.Namespace) -> int:
    import shutil

    from ._cache import PRUNED, cache_root, describe, prune_models, user_cache
    from .report import plural

    root = cache_root()
    if args.prune:
        gone = prune_models()
        print(f"detllm cache: removed {plural(len(gone), 'folder')} ({', '.join(PRUNED)}) from {root / 'models'}")
        return 0
    if args.clear:
        models = [(p, size) for p, _kind, size in describe(root) if p.parent.name == "models"]
        for p, _size in models:
            shutil.rmtree(p, ignore_errors=True)
        print(f"detllm cache: removed {plural(len(models), 'folder')} ({sum(s for _p, s in models) / 1e6:.0f} MB) "
              f"from {root / 'models'}; the next load converts again")
        return 0
    rows = describe(root)
    print(f"detllm cache: {root} (DETLLM_CACHE_DIR moves it)"
          + (f"; test environments under {user_cache()}" if user_cache() != root else ""))
    for p, kind, size in rows:
        print(f"  {size / 1e6:9.0f} MB  {p.parent.name}/{p.name}  [{kind}]")
    print(f"  {sum(size for _p, _k, size in rows) / 1e6:9.0f} MB  in {plural(len(rows), 'item')}; "
          "`detllm cache --prune` removes the older releases' copies and stale scratch")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .model import DTYPES  # light module: no torch at import

    parser = argparse.ArgumentParser(prog="detllm", description="pytest-detllm tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    cov = sub.add_parser("coverage", help="list each aten op a model runs and whether it is covered")
    cov.add_argument("--model", default=None, help="HF model dir, .gguf, or org/name in the local HF cache (default: the embedded model)")
    cov.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cov.add_argument("--dtype", default="float32", choices=DTYPES)
    cov.add_argument("--kernels", default="invariant", choices=("invariant", "stock"))
    cov.add_argument("--prompt", default="The quick brown fox")
    cov.add_argument("--trust-remote-code", action="store_true")
    cov.add_argument("--allow-pickle", action="store_true")
    cache = sub.add_parser("cache", help="what the plugin keeps on disk (converted models); prune or clear it")
    what = cache.add_mutually_exclusive_group()
    what.add_argument("--prune", action="store_true",
                      help="remove copies older releases keyed by install path, and scratch of killed conversions")
    what.add_argument("--clear", action="store_true", help="remove every converted model (rebuilt on the next load)")
    args = parser.parse_args(argv)
    return _cache(args) if args.cmd == "cache" else _coverage(args)


if __name__ == "__main__":
    raise SystemExit(main())
