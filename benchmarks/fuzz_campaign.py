"""Fuzz campaign: many co-batched trials per prompt, counting unique completions.

The same trial design as ``pytest --detllm-batch-fuzz`` (pytest_detllm.fuzz), run at scale:

    python benchmarks/fuzz_campaign.py --trials 200 --prompts 5                  # embedded model, CPU
    python benchmarks/fuzz_campaign.py --kernels stock --trials 20               # negative control
    python benchmarks/fuzz_campaign.py --arch llama --device cuda --dtype bfloat16 --trials 1000

Prints, per prompt, how many trials diverged from the solo run (token ids or logit hash) and how
many distinct completions were seen; exits 1 on any divergence under the invariant kernels.

``--workers N`` runs the trials in N processes (seeds seed, seed+1, ...; on a multi-GPU host
worker i takes GPU i mod count) and merges them: a small model on a GPU is host-bound, so N
processes give about N times the trials. Distinct completions are counted over the union of all
workers, so the solo runs of different processes must agree bitwise too.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn rain.",
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into Spanish and German.",
    "Summarise the plot of Romeo and Juliet.",
    "Give me a recipe for pancakes.",
    "What is 17 times 23?",
    "Describe a lighthouse at night.",
    "Why do cats purr?",
    "Write a limerick about a forgetful robot.",
    "What are the main causes of inflation?",
    "How does a bicycle stay upright?",
    "Name five rivers in Africa.",
    "Explain recursion to a ten-year-old.",
    "Draft a polite email declining a meeting.",
    "What is the boiling point of water at high altitude?",
    "Compare cats and dogs as pets.",
    "Describe the water cycle.",
    "Suggest a name for a coffee shop.",
]

# Real configs (hub unreachable): shapes of public checkpoints, scaled to ~100M parameters.
ARCHS = {
    "llama": dict(cls="LlamaConfig", vocab_size=128256, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=4096,
                  tie_word_embeddings=True),
    # head_dim 128 and a GQA group of 4: the shape whose CUDA prefill takes the Hopper Gluon attention
    "llama_d128": dict(cls="LlamaConfig", vocab_size=128256, hidden_size=1024, intermediate_size=2048,
                       num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, rope_theta=500000.0,
                       max_position_embeddings=4096, tie_word_embeddings=True),
    "qwen3": dict(cls="Qwen3Config", vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_position_embeddings=4096,
                  tie_word_embeddings=True),
    "gpt2": dict(cls="GPT2Config", vocab_size=50257, n_embd=768, n_layer=8, n_head=12, n_positions=2048),
    # The embedded SmolLM2-135M-Instruct's exact shape: its trial time needs the shape, not the
    # weights (random weights never emit EOS, so every trial runs all its tokens: the worst case).
    "smollm2": dict(cls="LlamaConfig", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                    rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True),
    # Llama-3-8B's shape, for the trial-time benchmark of an 8B model.
    "llama8b": dict(cls="LlamaConfig", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, rope_theta=500000.0,
                    max_position_embeddings=8192, tie_word_embeddings=False),
}


def build_random(arch: str, device: str, dtype: str):  # type: ignore[no-untyped-def]
    import transformers

    spec = dict(ARCHS[arch])
    cfg = getattr(transformers, spec.pop("cls"))(**spec)
    torch.manual_seed(0)
    with torch.device(device):  # born on the device: an 8B model never touches host memory
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF dir or .gguf (default: the embedded model)")
    ap.add_argument("--arch", choices=sorted(ARCHS), help="random-weight model from a real config instead")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kernels", default="invariant", choices=("invariant", "stock"))
    ap.add_argument("--trials", type=int, default=200, help="total trials, spread over the prompts")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-filler", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--stop-on-first", action="store_true", help="per prompt, stop at its first divergence")
    ap.add_argument("--check-prefill", action="store_true")
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0: the prompt samples (seeded), fuzz covers it")
    ap.add_argument("--strict", action="store_true", help="audit every generate (prefill + first decode step)")
    ap.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds (trials run round-robin)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workers", type=int, default=1, help="run the trials in this many processes and merge")
    ap.add_argument("--trial-log", action="store_true", help="print each trial's time, batch, groups and compiles")
    ap.add_argument("--cprofile", type=int, default=0, metavar="K",
                    help="afterwards, rerun K of the first prompt's trials under cProfile: the host's Python hot spots")
    ap.add_argument("--profile", type=int, default=0, metavar="K",
                    help="afterwards, rerun K of the first prompt's trials under torch.profiler and print where the time goes")
    args = ap.parse_args()
    if args.workers > 1:
        return run_workers(args)

    from pytest_detllm.completion import logit_hash
    from pytest_detllm.engine import Engine, Request
    from pytest_detllm.fuzz import FillerPool, design_trials, first_divergence
    from pytest_detllm.corpus import filler_text
    from pytest_detllm.model import load, resolve_device

    dev = resolve_device(args.device)
    if args.arch:
        model = build_random(args.arch, dev.type, args.dtype)
        from pytest_detllm.model import default_gguf, convert_gguf
        from transformers import AutoTokenizer

        # Any real tokenizer will do: ids are clamped into the model's vocabulary.
        try:
            tok = AutoTokenizer.from_pretrained(str(convert_gguf(default_gguf())))
        except Exception:  # noqa: BLE001 - GPU hosts may lack the embedded model
            tok = None
        vocab = model.config.vocab_size
        encode = (lambda s: [i % vocab for i in tok(s)["input_ids"]]) if tok else (
            lambda s: [(ord(c) * 131 + 7) % vocab for c in s])
        name = f"random {args.arch}"
    else:
        lm = load(args.model, device=args.device, dtype=args.dtype)
        model, tok, name = lm.model, lm.tokenizer, lm.name
        encode = lambda s: tok.apply_chat_template([{"role": "user", "content": s}], add_generation_prompt=True,  # noqa: E731
                                                   tokenize=True, return_dict=False)
    pool = FillerPool(encode(filler_text()))
    eng = Engine(model, pad_id=0, eos_ids=[], device=dev, invariant=args.kernels == "invariant",
                 strict=args.strict)
    per_prompt = max(1, args.trials // args.prompts)
    rng = random.Random(args.seed)
    # as the plugin's fuzz does: size the CUDA engine's cache once for the largest trial
    eng.reserve(args.max_batch, max(args.max_filler, max(len(encode(p)) for p in PROMPTS[: args.prompts]))
                + args.max_new_tokens)
    t0 = time.time()
    states = []
    for p in PROMPTS[: args.prompts]:
        req = Request(tuple(encode(p)), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                      seed=len(states) if args.temperature > 0 else None)
        solo = eng.generate([req], keep_logits=[0])[0]
        solo_key = _key(solo.token_ids, logit_hash(solo.step_logits))
        states.append({"prompt": p, "req": req, "solo": solo, "solo_key": solo_key, "div": [], "done": 0,
                       "closed": False, "seen": {solo_key},
                       "trials": design_trials(rng, per_prompt, req, pool, args.max_batch, args.max_filler)})
    timed_out = False
    compiles = [0]  # Triton specialisations compiled (or loaded from its disk cache) in this process
    compiled: list[tuple[int, str, str]] = []  # (trial, kernel, Triton's repr of the specialisation)
    if args.trial_log:
        try:
            from triton import knobs

            def _count(*_a: object, **_k: object) -> None:
                compiles[0] += 1
                fn = _k.get("fn")
                compiled.append((len(trial_s) + 1, str(getattr(fn, "name", fn)), str(_k.get("repr", ""))))

            knobs.runtime.jit_post_compile_hook = _count
        except (ImportError, AttributeError):
            pass
    trial_s: list[float] = []  # wall time of each co-batched trial (generate + compare)
    prefill = [0, 0, 0]  # static engine's grouped prefill: tokens computed, tokens of one group, groups
    for k in range(per_prompt):  # round-robin, so a time limit cuts every prompt evenly
        for st in states:
            if st["closed"]:
                continue
            if args.time_limit and time.time() - t0 > args.time_limit:
                timed_out = True
                break
            trial = st["trials"][k]
            t_trial = time.perf_counter()
            g = eng.generate(trial.requests, keep_logits=[trial.layout.slot])[trial.layout.slot]
            st["done"] += 1
            st["seen"].add(_key(g.token_ids, logit_hash(g.step_logits)))
            d = first_divergence(st["solo"], g)
            trial_s.append(time.perf_counter() - t_trial)
            if args.trial_log:
                groups = len(getattr(eng._impl, "last_prefill_groups", ())) if eng.static else 1
                print(f"trial {len(trial_s):3d}: batch {len(trial.requests):2d}, longest "
                      f"{max(len(r.input_ids) for r in trial.requests):4d}, {groups} prefill groups, "
                      f"{trial_s[-1] * 1e3:7.1f} ms, {compiles[0]} Triton compiles so far", flush=True)
            if eng.static:
                done_tok, one_tok = eng._impl.last_prefill_tokens
                prefill[0] += done_tok
                prefill[1] += one_tok
                prefill[2] += len(eng._impl.last_prefill_groups)
            if d is not None:
                st["div"].append({"trial": trial.index, "step": d.step, "tokens_differ": d.tokens_differ,
                                  "layout": trial.layout.to_json()})
                st["closed"] = args.stop_on_first
        if timed_out:
            break
    if args.trial_log and compiled:
        late = [c for c in compiled if c[0] > 3]
        print(f"compiles after trial 3: {len(late)}, by kernel: "
              f"{dict(sorted(collections.Counter(c[1] for c in late).items()))}")
        for trial_no, name, rep in late[:12]:
            print(f"  trial {trial_no}: {name}: {rep[:400]}")
    if args.profile:
        _profile(eng, states[0]["trials"][: args.profile], dev)
    if args.cprofile:
        _cprofile(eng, states[0]["trials"][: args.cprofile], dev)
    results = []
    total_div = 0
    for st in states:
        solo, req, div = st["solo"], st["req"], st["div"]
        prefill_bad = None
        if args.check_prefill:
            prefill_bad = sum(not torch.equal(g.step_logits[0], solo.step_logits[t])
                              for t, g in eng.fresh_prefills(req, solo))
        total_div += len(div)
        token_div = sum(d["tokens_differ"] for d in div)
        results.append({"prompt": st["prompt"], "trials": st["done"], "divergent_trials": len(div),
                        "token_divergent_trials": token_div, "unique_completions": len(st["seen"]),
                        "first_steps": [d["step"] for d in div][:10], "prefill_mismatches": prefill_bad,
                        "first_divergent_trial": div[0]["trial"] if div else None, "divergences": div[:5],
                        "solo": st["solo_key"], "seen": sorted(st["seen"])})
        print(f"{st['prompt'][:40]:<42} trials {st['done']:>4}  divergent {len(div):>4} (tokens {token_div:>3})  "
              f"unique {len(st['seen']):>3}" + (f"  prefill mismatches {prefill_bad}" if prefill_bad is not None else ""),
              flush=True)
    dt = time.time() - t0
    timing = _trial_timing(trial_s)
    _summary(args, f"{name} on {dev.type} {args.dtype}", results, dt, timed_out)
    if timing:
        print(f"trial time: mean {timing['mean_ms']:.1f} ms over {timing['n']} trials (first trial of each batch "
              f"bucket and cache length included: graph capture); mean of the last half {timing['mean_last_half_ms']:.1f} ms, "
              f"median {timing['median_ms']:.1f} ms, max {timing['max_ms']:.1f} ms", flush=True)
        if prefill[1]:
            timing["prefill_tokens"], timing["prefill_tokens_one_group"] = prefill[0], prefill[1]
            timing["prefill_groups_mean"] = prefill[2] / timing["n"]
            print(f"prefill: {prefill[0]} tokens computed in {timing['prefill_groups_mean']:.2f} length groups a trial "
                  f"(one left-padded group: {prefill[1]}, x{prefill[0] / prefill[1]:.3f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": name, "device": dev.type, "dtype": args.dtype,
                                               "kernels": args.kernels, **_splits(),
                                               "torch": torch.__version__,
                                               "card": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                                               "timed_out": timed_out, "results": results, "seconds": dt,
                                               "trial_timing": timing}, indent=2))
    return 1 if (total_div and args.kernels == "invariant") else 0


def _profile(eng, trials, dev) -> None:  # type: ignore[no-untyped-def]
    """Where a warm trial's wall time goes: host ops (self CPU time) and GPU kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    walls = []
    with profile(activities=acts) as prof:
        for trial in trials:
            t = time.perf_counter()
            eng.generate(trial.requests, keep_logits=[trial.layout.slot])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            walls.append(time.perf_counter() - t)
            print(f"profile trial: batch {len(trial.requests)}, longest {max(len(r.input_ids) for r in trial.requests)} "
                  f"tokens: {walls[-1] * 1e3:.1f} ms", flush=True)
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    if dev.type == "cuda":
        print(ka.table(sort_by="self_cuda_time_total" if hasattr(ka[0], "self_cuda_time_total") else "self_device_time_total",
                       row_limit=14, max_name_column_width=60))


def _cprofile(eng, trials, dev) -> None:  # type: ignore[no-untyped-def]
    """Host-side Python time of warm trials (a wait for the GPU shows as time in the call that waits)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for trial in trials:
        eng.generate(trial.requests, keep_logits=[trial.layout.slot])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    prof.disable()
    print(f"cprofile: {len(trials)} trials, {(time.perf_counter() - t) * 1e3 / len(trials):.1f} ms a trial", flush=True)
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(22)
    st.sort_stats("cumulative").print_stats(30)


def _trial_timing(trial_s: list[float]) -> dict[str, float] | None:
    if not trial_s:
        return None
    ms = [t * 1000 for t in trial_s]
    half = ms[len(ms) // 2:]
    return {"n": len(ms), "mean_ms": sum(ms) / len(ms), "mean_last_half_ms": sum(half) / len(half),
            "median_ms": sorted(ms)[len(ms) // 2], "max_ms": max(ms)}


def _splits() -> dict[str, bool]:
    """The opt-in bit sets in force, recorded with the results: split-KV attention
    (DETLLM_SPLIT_KV) and split-K matmul (DETLLM_SPLIT_K) on CUDA."""
    from pytest_detllm.invariant.flags import split_k_enabled, split_kv_enabled

    return {"split_kv": split_kv_enabled(), "split_k": split_k_enabled()}


def _key(token_ids: list[int], lhash: str) -> str:
    """One completion as a short string: tokens digest + logit hash (comparable across processes)."""
    return hashlib.sha256(repr(list(token_ids)).encode()).hexdigest()[:16] + ":" + lhash


def _summary(args: argparse.Namespace, where: str, results: list[dict], dt: float, timed_out: bool) -> None:
    total_div = sum(r["divergent_trials"] for r in results)
    flagged = sum(1 for r in results if r["divergent_trials"])
    n_trials = sum(r["trials"] for r in results)
    on = _splits()
    print(f"\n{where}, kernels={args.kernels}{' (split-KV attention)' if on['split_kv'] else ''}"
          f"{' (split-K matmul)' if on['split_k'] else ''}: {n_trials} trials over "
          f"{len(results)} prompts (batch 2..{args.max_batch}, fillers 1..{args.max_filler} tokens, "
          f"{args.max_new_tokens} new tokens): {total_div} divergent trials; prompts flagged "
          f"{flagged}/{len(results)}; {dt:.0f} s" + (" (time limit reached)" if timed_out else ""), flush=True)


def run_workers(args: argparse.Namespace) -> int:
    """Run `args.workers` copies of this script with seeds seed+i, then merge their JSON."""
    n = args.workers
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") and torch.cuda.is_available() else 0
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="detllm-campaign-"))
    procs = []
    common = _without(sys.argv[1:], ("--workers", "--seed", "--json", "--trials"))
    per_prompt = max(1, args.trials // args.prompts)
    for i in range(n):
        share = (per_prompt // n + (1 if i < per_prompt % n else 0)) * args.prompts
        child = common + ["--seed", str(args.seed + i), "--json", str(tmp / f"w{i}.json"), "--trials", str(share)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        log = open(tmp / f"w{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, __file__, *child], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait() for p, _ in procs]
    except KeyboardInterrupt:  # take the workers down too, not leave them on the GPU
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        for _, log in procs:
            log.close()
    parts = []
    for i, code in enumerate(codes):
        f = tmp / f"w{i}.json"
        if not f.exists():
            print(f"worker {i} exited {code} without results; its log:\n" + (tmp / f"w{i}.log").read_text()[-3000:])
            return 2
        parts.append(json.loads(f.read_text()))
    merged = []
    for j, first in enumerate(parts[0]["results"]):
        rows = [p["results"][j] for p in parts]
        seen = sorted(set().union(*(r["seen"] for r in rows)))
        solos = {r["solo"] for r in rows}
        div = [d for r in rows for d in r["divergences"]]
        pre = [r["prefill_mismatches"] for r in rows]
        m = {"prompt": first["prompt"], "trials": sum(r["trials"] for r in rows),
             "divergent_trials": sum(r["divergent_trials"] for r in rows) + (len(solos) - 1),
             "token_divergent_trials": sum(r["token_divergent_trials"] for r in rows),
             "unique_completions": len(seen), "solo_agrees_across_workers": len(solos) == 1,
             "prefill_mismatches": None if pre[0] is None else sum(pre),
             "first_steps": [s for r in rows for s in r["first_steps"]][:10], "divergences": div[:5],
             "trials_per_worker": [r["trials"] for r in rows], "seen": seen}
        merged.append(m)
        print(f"{m['prompt'][:40]:<42} trials {m['trials']:>4}  divergent {m['divergent_trials']:>4} "
              f"(tokens {m['token_divergent_trials']:>3})  unique {m['unique_completions']:>3}"
              + (f"  prefill mismatches {m['prefill_mismatches']}" if m["prefill_mismatches"] is not None else "")
              + ("" if m["solo_agrees_across_workers"] else "  SOLO DIFFERS ACROSS WORKERS"))
    dt = time.time() - t0
    head = parts[0]
    timed_out = any(p.get("timed_out") for p in parts)
    _summary(args, f"{head['model']} on {head['device']} {head['dtype']} ({head.get('card') or 'cpu'}), "
                   f"{n} workers", merged, dt, timed_out)
    if args.json:
        Path(args.json).write_text(json.dumps({**{k: head.get(k) for k in ("model", "device", "dtype", "kernels", "split_kv",
                                                                         "split_k", "torch")},
                                               "card": head.get("card"), "workers": n, "seeds": [args.seed + i for i in range(n)],
                                               "timed_out": timed_out, "results": merged, "seconds": dt}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)  # kept above when a worker failed, for its log
    total = sum(m["divergent_trials"] for m in merged)
    return 1 if total and args.kernels == "invariant" else 0


def _without(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(nm + "=") for nm in names):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
