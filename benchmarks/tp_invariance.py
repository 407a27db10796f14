"""Is a tensor-parallel (TP=2) model batch invariant under the invariant kernels?

    torchrun --nproc-per-node 2 benchmarks/tp_invariance.py [--trials 20] [--json FILE]

transformers' ``tp_plan="auto"`` shards a random-weight Llama (a real config's shape, scaled down;
no hub) over the ranks: column-parallel q/k/v/gate/up, row-parallel o/down whose partial outputs
are summed across ranks by an all-reduce. Each trial runs one prompt alone and co-batched with
random fillers (random batch size, position and lengths, left padded), under
``pytest_detllm.batch_invariant()`` and, as the control, with stock kernels, and compares the
prompt row's logits at every position bitwise. Rank 0 prints the verdict.

Why it should hold at TP=2: each rank's local products are row-invariant (our kernels), and an
all-reduce over two ranks adds two numbers per element, a + b == b + a in IEEE arithmetic, so
the order NCCL picks cannot matter. With three or more ranks a ring or tree all-reduce adds
partial sums in an order that may depend on the element's position in the buffer, and the
buffer's size is the batch's: invariance is then not guaranteed by construction.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CFG = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
           num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
           bos_token_id=1, eos_token_id=2, pad_token_id=0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-filler", type=int, default=512)
    ap.add_argument("--json")
    ap.add_argument("--path", default="/tmp/detllm-tp-model")
    args = ap.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    from transformers import AutoModelForCausalLM, LlamaConfig

    if rank == 0 and not Path(args.path, "config.json").exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(LlamaConfig(**CFG), dtype=torch.bfloat16).save_pretrained(args.path)
    dist.barrier()
    model = AutoModelForCausalLM.from_pretrained(args.path, tp_plan="auto", dtype=torch.bfloat16).eval()
    w = model.model.layers[0].self_attn.q_proj.weight
    local = tuple((w.to_local() if hasattr(w, "to_local") else w).shape)
    if rank == 0:  # proof that the weights really are sharded (a silent no-op would look invariant too)
        print(f"q_proj weight: global {tuple(w.shape)}, local on rank 0 {local} ({type(w).__name__})", flush=True)
    from pytest_detllm import batch_invariant

    rng = random.Random(1234)  # same on every rank: every rank must see the same batch
    vocab = CFG["vocab_size"]
    prompt = [rng.randrange(3, vocab) for _ in range(37)]

    def run(rows: list[list[int]], slot: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), position_ids=pos.cuda()).logits
        return out[slot, width - len(rows[slot]):].float().cpu()

    result: dict[str, dict[str, int]] = {}
    for mode in ("invariant", "stock"):
        ctx = batch_invariant("cuda") if mode == "invariant" else torch.autocast("cuda", enabled=False)
        with ctx:
            solo = run([prompt], 0)
            div = 0
            for _ in range(args.trials):
                b = rng.randint(2, args.max_batch)
                slot = rng.randrange(b)
                rows = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, args.max_filler))] for _ in range(b)]
                rows[slot] = prompt
                div += not torch.equal(run(rows, slot), solo)
        result[mode] = {"trials": args.trials, "divergent": div}
        if rank == 0:
            print(f"TP={world} {mode:<9}: {div}/{args.trials} co-batched trials differ from the solo run "
                  f"(batch 2..{args.max_batch}, fillers 1..{args.max_filler} tokens, bf16, "
                  f"{torch.cuda.get_device_name()})", flush=True)
    if rank == 0 and args.json:
        Path(args.json).write_text(json.dumps({"world": world, "card": torch.cuda.get_device_name(),
                                               "torch": torch.__version__, "config": CFG,
                                               "q_proj_local_shape": local, **result}, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
