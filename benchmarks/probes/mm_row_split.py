"""python benchmarks/probes/mm_row_split.py  (one Hopper GPU; eighteenth session: its first run, with
the cut at the end of the whole waves, made the split the default where `matmul.row_split` says)

Probe: short-K prefill whose 128x256 tiles leave a short last wave (GPT-2 c_attn at M = 4096:
288 tiles on 132 SMs, 2.18 waves, so the third wave runs 24 tiles on 132 SMs). Split the rows:
the production kernel over the rows whose tiles fill whole waves, then a second launch over the
remaining rows in smaller tiles, which spread over the card. A tile's shape never changes a
row's bits (every MatmulConfig runs the same k16 MMA chain: test_mm_every_config_same_bits), so
the output must equal detllm_kernels.mm's; printed per case, next to cuBLAS and the production
kernel in the same run (do_bench, and CUDA graphs in brackets). Since the split is the default,
the cut is `row_split`'s and the table compares its rest config with the others; `prod` splits
where the rule does (session 13's `bench_matmul.py --rowsplit` times every whole-wave cut)."""
import torch

from detllm_kernels.matmul import MatmulConfig, _launch, row_split, split_sms

from _common import mm_table

SMALL = {
    "128x256": None,  # the production config for the rest too: the cost of the second launch alone
    "128x128": MatmulConfig(128, 128, 8, 8, 4, persistent=False),
    "64x128 k128": MatmulConfig(64, 128, 8, 4, 4, persistent=False, block_k=128),
    "64x256": MatmulConfig(64, 256, 8, 8, 3, persistent=False),
}


def run(a, b, name):  # type: ignore[no-untyped-def]
    (m, k), n = a.shape, b.shape[1]
    cut = row_split(m, n, k, a.dtype, True, split_sms(a))
    if cut is None:
        raise ValueError("no row split here")
    ra = cut[0]
    out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    sa, sb, sc, sx = (0, *a.stride()), (0, *b.stride()), (0, n, 1), (0, 0, 0)
    rest = a[ra:]

    def fn() -> torch.Tensor:
        _launch(a, b, out, None, 1, ra, n, k, sa, sb, sc, sx, 1.0, 0.0, None, None)
        _launch(rest, b, out[ra:], None, 1, m - ra, n, k, sa, sb, sc, sx, 1.0, 0.0, SMALL[name], None)
        return out
    return fn


if __name__ == "__main__":
    mm_table(run, list(SMALL), lambda name: f"rows split, rest {name}")
