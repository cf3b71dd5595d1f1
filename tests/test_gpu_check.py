"""benchmarks/gpu_check.py, the prepared GPU readiness check, at its CPU sizes (so it cannot rot
before a GPU runs it), and its verdict's power to fail."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_llama

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_writes_its_report(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    md = (tmp_path / "gpu_check.md").read_text()
    assert report["verdict"] == {"ok": True, "problems": []}
    assert report["tests"]["returncode"] in (0, 5)  # 5: every CUDA test deselected or skipped
    assert report["tests"]["counts"].get("failed", 0) == 0
    assert set(report["models"]) == {"smollm2-135m", "llama-1b"}
    for name, m in report["models"].items():
        assert m["dtype"] == "float32"
        assert sorted(int(n) for n in m["cost"]["c"]) == [1, 2, 4, 8, 16, 32, 64]
        assert m["cost"]["c"]["1"] == 1.0 and all(v > 0 for v in m["cost"]["ms"].values())
        checks = m["equality"]["float32"]
        assert set(checks) == {"oracle_b1", "oracle_b4", "rnn_untrained_b1", "rnn_untrained_b4"}
        assert all(c["equal"] == c["rows"] for c in checks.values()), name
        assert [checks[k]["rows"] for k in sorted(checks)] == [1, 4, 1, 4]
        speed = m["speed"]
        assert speed["oracle_1x8"]["tau"] > 6.0  # the oracle's drafts are all accepted
        assert 0.99 <= speed["rnn_untrained_1x4"]["tau"] < 1.5  # random drafts: ~ the bonus
        for case, step in m["step"].items():
            # two device results per step reach the host: the beams and the chosen tokens
            assert step["handoffs_per_step"] == 2.0, case
            assert step["engine_waits_per_step"] == 0.0  # no device to wait for on a CPU
            assert step["torch_syncs_per_step"] is None
            assert set(step["split_ms"]) == {
                "drafter", "target", "rust", "transfers", "cache", "python"
            }  # fmt: skip
        assert f"## {name}" in md
    assert "| c(N) |" in md and "torch syncs" in md


def test_the_equality_check_reports_a_real_mismatch():
    """A divergence with a clear top-2 margin is a real mismatch (the verdict fails); in fp32
    even a near-tie fails, so the check cannot pass a wrong engine."""
    gc = _module()
    model = tiny_llama(seed=5)
    prompt = torch.tensor([3, 4, 5, 6])
    ref = model.generate(prompt[None], do_sample=False, max_new_tokens=6)[0, 4:].tolist()
    wrong = ref[:3] + [(ref[3] + 1) % model.config.vocab_size] + ref[4:]
    res = gc.compare(model, [prompt, prompt], [ref, ref], [ref, wrong], tie_ulps=8.0)
    assert res["rows"] == 2 and res["equal"] == 1
    assert res["divergences"][0]["position"] == 3 and res["divergences"][0]["margin"] > 0
    assert res["real_mismatches"] == 1
    report = {
        "tests": {"returncode": 0, "counts": {}, "summary": ""},
        "models": {"m": {"equality": {"float32": {"oracle_b1": res}}}},
    }
    verdict = gc.verdict(report)
    assert not verdict["ok"] and any("mismatch" in p for p in verdict["problems"])
    near = dict(res, real_mismatches=0, near_tie_divergences=1)
    report["models"]["m"]["equality"] = {"bfloat16": {"x": near}}
    assert gc.verdict(report)["ok"]  # a bf16 near-tie is rounding, not an error
    report["models"]["m"]["equality"] = {"float32": {"x": near}}
    assert not gc.verdict(report)["ok"]  # but not in fp32
