"""benchmarks/fuzz_campaign.py: the multi-process campaign merges its workers' results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_campaign_workers_merge(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fuzz_campaign.py"), "--model", str(tiny_llama_dir),
           "--trials", "8", "--prompts", "2", "--max-batch", "5", "--max-filler", "24",
           "--max-new-tokens", "3", "--workers", "2", "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 workers, kernels=invariant: 8 trials over 2 prompts" in proc.stdout
    data = json.loads(out.read_text())
    assert data["workers"] == 2 and data["seeds"] == [1234, 1235]
    for r in data["results"]:
        assert r["trials_per_worker"] == [2, 2]
        assert r["divergent_trials"] == 0 and r["unique_completions"] == 1 == len(r["seen"])
        assert r["solo_agrees_across_workers"]
