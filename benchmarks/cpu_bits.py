"""Do the CPU invariant mode's bits depend on the ISA code path or the thread count?

    python benchmarks/cpu_bits.py [--layers 30] [--threads 1,2,N] [--gguf PATH] [--model DIR]
                                  [--json-out FILE] [--full-grid]

For each cell — an ATen CPU capability (ATEN_CPU_CAPABILITY: default, avx2, avx512, as far as the
CPU supports them) and an MKL setting (none, MKL_CBWR=..., MKL_ENABLE_INSTRUCTIONS=...), each in a
fresh process because both must be set before torch is imported — it runs the invariant mode
(pytest_detllm's Engine) at every thread count: greedy generation of one prompt alone ("solo")
and co-batched with two fillers of other lengths ("batched"), and prints the xxh3-128 logit hash
of each. Models: a seeded random-weight model with SmolLM2-135M's config (weights drawn with
numpy's PCG64, so they are the same on every machine; --layers cuts the depth), plus optionally
the real SmolLM2 (--gguf PATH needs the `gguf` package; --model DIR takes a converted HF dir).
By default the capabilities are run with MKL as found and the MKL settings with the machine's
own capability (two independent axes: ATen's vector kernels vs the GEMM); --full-grid crosses them.

Prints a table, one JSON line per (model, cell, threads) and a verdict; --json-out keeps it all.
Needs torch, transformers, numpy, xxhash; no network, no GPU (CUDA is hidden from the children).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# SmolLM2-135M(-Instruct)'s architecture, hard-coded so no config file is needed.
SMOLLM2_135M: dict[str, Any] = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
    tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
    hidden_act="silu", attention_bias=False, mlp_bias=False, head_dim=64,
    bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
WEIGHT_SEED = 20261125
PROMPT_LEN, FILLER_LENS, NEW_TOKENS = 24, (40, 7), 8
MKL_VARIANTS: list[dict[str, str]] = [
    {}, {"MKL_CBWR": "COMPATIBLE"}, {"MKL_CBWR": "AVX2"},
    {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
]


# ----------------------------------------------------------------------------- child side
def _token_ids(n: int, seed: int) -> tuple[int, ...]:
    import random

    rng = random.Random(seed)
    return tuple(rng.randrange(100, 49000) for _ in range(n))


def _random_model(layers: int) -> Any:
    """SmolLM2-135M's config with `layers` layers and weights from numpy's PCG64 (machine-independent)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(SMOLLM2_135M, num_hidden_layers=layers)
    for k in ("architectures", "model_type"):
        cfg.pop(k)
    config = LlamaConfig(**cfg)
    with torch.device("meta"):  # skip torch's own (slow, ISA-dependent) random init
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").eval()
    model.tie_weights()  # to_empty may untie lm_head from the embedding; tie before filling
    rotary = type(model.model.rotary_emb)(config=config)  # its buffers, computed for real
    model.model.rotary_emb = rotary
    others = [n for n, _ in model.named_buffers() if not n.startswith("model.rotary_emb.")]
    if others:
        raise RuntimeError(f"random model: buffers left uninitialised: {others}")
    rng = np.random.default_rng(WEIGHT_SEED)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = rng.standard_normal(p.numel(), dtype=np.float32).reshape(p.shape)
            # Norm gains near 1, matrices ~N(0, 0.02^2) as in Llama's init.
            p.copy_(torch.from_numpy(1.0 + 0.1 * noise if p.dim() == 1 else 0.02 * noise))
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("random model: lm_head is not tied to the embedding")
    return model


def _real_model(gguf: str | None, model_dir: str | None) -> Any:
    sys.path.insert(0, str(ROOT))
    from pytest_detllm.model import load

    return load(model_dir if model_dir else gguf, device="cpu", dtype="float32").model


def _weights_hash(model: Any) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _mkl_code_path() -> str:
    """MKL's own banner line (it names the code path, e.g. '... AVX2 enabled processors')."""
    import torch

    r, w = os.pipe()
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(w, 1)
    try:
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            torch.mm(torch.ones(8, 8), torch.ones(8, 8))
        import ctypes

        ctypes.CDLL(None).fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(w)
        os.close(saved)
    text = os.read(r, 65536).decode(errors="replace")
    os.close(r)
    for line in text.splitlines():
        if line.startswith("MKL_VERBOSE") and "architecture" in line:
            return line[len("MKL_VERBOSE "):].strip()
    return "no MKL banner" if not text else text.splitlines()[0][:200]


def child(spec: dict[str, Any]) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from pytest_detllm.completion import logit_hash
    from pytest_detllm.engine import Engine, Request

    info = {"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "mkl": _mkl_code_path()}
    prompt = Request(_token_ids(PROMPT_LEN, 1), max_new_tokens=NEW_TOKENS)
    fillers = [Request(_token_ids(n, 10 + n), max_new_tokens=NEW_TOKENS) for n in FILLER_LENS]
    batch = [fillers[0], prompt, fillers[1]]  # the prompt in the middle, left-padded
    results = []
    for label in spec["models"]:
        t0 = time.time()
        model = (_random_model(spec["layers"]) if label.startswith("random")
                 else _real_model(spec.get("gguf"), spec.get("model_dir")))
        eng = Engine(model, pad_id=2, eos_ids=[], device=torch.device("cpu"), invariant=True)
        wh = _weights_hash(model)
        for t in spec["threads"]:
            torch.set_num_threads(t)
            t1 = time.time()
            solo = eng.generate([prompt])[0]
            co = eng.generate(batch)[1]
            results.append({
                "model": label, "weights": wh, "threads": t, "torch_threads": torch.get_num_threads(),
                "solo": logit_hash(solo.step_logits), "batched": logit_hash(co.step_logits),
                "tokens": solo.token_ids, "tokens_equal": solo.token_ids == co.token_ids,
                "seconds": round(time.time() - t1, 2),
            })
        info.setdefault("load_seconds", {})[label] = round(time.time() - t0, 2)
    print("RESULT " + json.dumps({**info, "results": results}), flush=True)


# ----------------------------------------------------------------------------- parent side
def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^(flags|Features)\s*:\s*(.*)$", text, re.M)
    return set(m.group(2).split()) if m else set()


def capabilities(flags: set[str]) -> list[str]:
    """ATEN_CPU_CAPABILITY values this CPU can run (x86: torch needs these flags for each)."""
    caps = ["default"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        if {"avx2", "fma"} <= flags:
            caps.append("avx2")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            caps.append("avx512")
    return caps


def cpu_name() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m.group(1).strip() if m else platform.processor()
    except OSError:
        return platform.processor()


def run_cell(env_extra: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **env_extra)
    for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS"):
        if k not in env_extra:
            env.pop(k, None)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"cell {env_extra} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=30, help="layers of the random model (default 30)")
    ap.add_argument("--threads", default="1,2,N", help="comma list; N = all logical CPUs (default 1,2,N)")
    ap.add_argument("--gguf", help="also run the real SmolLM2 from this .gguf ('embedded': the installed one)")
    ap.add_argument("--model", dest="model_dir", help="also run this Hugging Face model directory")
    ap.add_argument("--no-random", action="store_true", help="skip the random-weight model")
    ap.add_argument("--full-grid", action="store_true", help="every capability x every MKL setting")
    ap.add_argument("--json-out", help="write every cell and the verdict here")
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0

    ncpu = os.cpu_count() or 1
    threads = sorted({ncpu if t.strip().upper() == "N" else int(t) for t in args.threads.split(",")})
    models = [] if args.no_random else [f"random-smollm2-135m-config-{args.layers}L"]
    gguf = args.gguf
    if gguf == "embedded":
        sys.path.insert(0, str(ROOT))
        from pytest_detllm.model import default_gguf

        gguf = str(default_gguf())
    if gguf or args.model_dir:
        models.append("smollm2-135m-instruct")
    spec = {"layers": args.layers, "threads": threads, "models": models, "gguf": gguf,
            "model_dir": args.model_dir}
    flags = cpu_flags()
    caps = capabilities(flags)
    mkl = list(MKL_VARIANTS) + ([{"MKL_CBWR": "AVX512"}] if "avx512" in caps else [])
    cells: list[dict[str, str]] = []
    if args.full_grid:
        cells = [dict({"ATEN_CPU_CAPABILITY": c}, **m) for c in caps for m in mkl]
    else:
        cells = [{"ATEN_CPU_CAPABILITY": c} for c in caps] + [m for m in mkl if m]
        cells.insert(0, {})  # as found: the machine's own choice for both
    machine = {"cpu": cpu_name(), "arch": platform.machine(), "logical_cpus": ncpu,
               "isa_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sve", "asimd")))}
    print(f"# {machine['cpu']} ({machine['arch']}, {ncpu} logical CPUs); ISA flags: {' '.join(machine['isa_flags'])}")
    print(f"# models: {', '.join(models)}; threads {threads}; {len(cells)} cells", flush=True)
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    out_cells = []
    for env_extra in cells:
        res = run_cell(env_extra, spec)
        out_cells.append({"env": env_extra, **res})
        setting = " ".join(f"{k}={v}" for k, v in env_extra.items() if k != "ATEN_CPU_CAPABILITY") or "-"
        for r in res["results"]:
            row = {"model": r["model"], "aten_env": env_extra.get("ATEN_CPU_CAPABILITY", "-"),
                   "capability": res["capability"], "mkl_setting": setting, "mkl_path": res["mkl"],
                   "threads": r["threads"], "solo": r["solo"], "batched": r["batched"],
                   "equal": r["solo"] == r["batched"], "tokens_equal": r["tokens_equal"],
                   "weights": r["weights"], "torch": res["torch"], "seconds": r["seconds"]}
            rows.append(row)
            print("CELL " + json.dumps(row), flush=True)

    print()
    hdr = f"{'model':<34} {'ATen env':<8} {'capability':<10} {'MKL setting':<30} {'thr':>3}  {'solo hash':<32}  {'batched hash':<32} equal"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<34} {r['aten_env']:<8} {r['capability']:<10} {r['mkl_setting']:<30} {r['threads']:>3}  "
              f"{r['solo']:<32}  {r['batched']:<32} {'yes' if r['equal'] else 'NO'}")
    verdict: dict[str, Any] = {"machine": machine, "seconds": round(time.time() - t0, 1)}
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        groups: dict[str, list[str]] = {}
        for r in mine:
            groups.setdefault(r["solo"], []).append(f"{r['capability']}/{r['mkl_setting']}/t{r['threads']}")
        verdict[model] = {
            "solo_equals_batched_everywhere": all(r["equal"] for r in mine),
            "distinct_solo_hashes": len(groups),
            "same_bits_across_threads": all(
                len({r["solo"] for r in mine if r["aten_env"] == a and r["mkl_setting"] == s}) == 1
                for a, s in {(r["aten_env"], r["mkl_setting"]) for r in mine}),
            "groups": groups,
        }
    print("\nVERDICT " + json.dumps(verdict))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"verdict": verdict, "rows": rows, "cells": out_cells}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
