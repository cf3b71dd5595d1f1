"""`redrafter bench` smoke tests (2 prompts, 8 tokens; the fast path, cost curve), bench-core."""

from __future__ import annotations

import json

import pytest
import torch

import redrafter_rs as rr
from helpers import tiny_llama
from redrafter_rs.bench import core as bench_core
from redrafter_rs.bench import reference
from redrafter_rs.bench import report as bench_report
from redrafter_rs.bench import runner as bench
from redrafter_rs.cli import build_parser
from redrafter_rs.engine import fastpath

FIELDS = ("tokens_per_s", "speedup", "speedup_total", "tau", "greedy_equal", "time_split")


class CharTokenizer:
    """A stand-in tokenizer for the tiny model: one token per character (mod the vocabulary)."""

    chat_template = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, return_tensors: str = "pt"):
        ids = torch.tensor([[2 + ord(c) % (self.vocab_size - 2) for c in text]])
        return type("Encoding", (), {"input_ids": ids})()


def _check_outputs(report: dict, paths: dict) -> None:
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    saved = json.loads(paths["json"].read_text())
    assert saved["methods"].keys() == report["methods"].keys()
    for name, summary in saved["methods"].items():
        assert all(f in summary for f in FIELDS), name
        assert summary["greedy_equal"] == summary["prompts"], name  # lossless, every method
    table = paths["md"].read_text()
    assert all(f"| {name} |" in table for name in saved["methods"])


@pytest.mark.slow
def test_bench_tiny_model_jsonl(tmp_path):
    model = tiny_llama(seed=3)
    torch.manual_seed(0)
    drafter = rr.RecurrentDrafter.for_target(model).eval()
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"prompt number {i}", "category": "ab"[i % 2]} for i in range(5)]
    rows.append({"turns": ["a chat turn", "second turn"], "category": "b"})
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    config = bench.BenchConfig(
        prompts=str(prompts),
        num_prompts=3,
        max_new_tokens=8,
        grid=((1, 3), (2, 4)),
        tree_grid=((2, 4, 3),),
        fast=True,
        cost_sizes=(1, 4, 16),
        oracle=True,
        threads=1,
    )
    setup = bench.Setup(model, CharTokenizer(96), drafter, "random (test)")
    setup.draft_models = {"self": rr.DraftModelDrafter(model)}  # the target drafts for itself
    report = bench.run_bench(config, setup, log=lambda s: None)
    paths = bench_report.write_reports(report, tmp_path / "out")
    _check_outputs(report, paths)
    names = set(report["methods"])
    assert {"draftmodel-self_1x3", "draftmodel-self_2x4+fast"} <= names
    assert report["methods"]["draftmodel-self_1x3"]["acceptance_per_depth"] == [1.0, 1.0]
    assert {"hf_greedy", "plain_loop", "redrafter_2x4", "oracle_1x3", "hf_prompt_lookup"} <= names
    assert {"hf_greedy+fast", "plain_loop+fast", "redrafter_2x4+fast"} <= names
    assert "hf_assisted" in report["skipped"]
    fast = report["fast"]
    assert fast["accelerated"]["layers"] == 15  # 2 layers x 7 + the LM head
    curve = fast["cost_curve"]
    assert set(curve) == {"stock", "fast"} and all(
        list(c["ms"]) == [1, 4, 16] for c in curve.values()
    )
    assert all(c["c"][1] == 1.0 and min(c["ms"].values()) > 0 for c in curve.values())
    assert fast["floor_ms"] == pytest.approx(
        fast["weight_bytes"] / fast["read_bandwidth_gbs"] / 1e6
    )
    # the Rust kernel sums each row alone: a token's logits do not depend on the tree around it
    # beyond attention's own order, so the plain-vs-tree difference stays at rounding level
    assert fast["tree_vs_plain_max_abs_logit_diff_fast"] < 1e-4
    assert "Verification cost" in paths["md"].read_text()
    plain = report["methods"]["plain_loop+fast"]["vs_fast_plain"]
    assert plain["speedup_total"] == pytest.approx(1.0)
    assert {"retrieval_1x8", "redrafter+retrieval_1x3", "redrafter+retrieval_2x4"} <= names
    for name in ("redrafter_2x4n3", "redrafter+retrieval_2x4n3"):  # best-nodes trees
        recs = [r for r in report["records"] if r["method"] == name]
        assert len(recs) == 3 and all(r["equal"] for r in recs)
        assert all(set(r["shapes"]) == {"2x4n3"} for r in recs)
    for name in ("redrafter_auto", "redrafter+retrieval_auto"):  # the policy, up to 2x4
        recs = [r for r in report["records"] if r["method"] == name]
        assert len(recs) == 3 and all(r["equal"] for r in recs)
        shapes = [s for r in recs for s in r["shapes"]]
        assert sum(n for r in recs for n in r["shapes"].values()) == sum(r["steps"] for r in recs)
        assert all(int(W) <= 2 and int(L) <= 4 for W, L in (s.split("x") for s in shapes))
    both = report["methods"]["redrafter+retrieval_2x4"]["sources"]
    assert set(both) == {"retrieval", "rnn"} and both["rnn"]["steps"] > 0
    alone = report["methods"]["retrieval_1x8"]
    assert set(alone["sources"]) == {"retrieval"}
    # retrieval is the only source: every accepted draft token is one of its matches
    steps = sum(r["steps"] for r in report["records"] if r["method"] == "retrieval_1x8")
    assert alone["tau"] == pytest.approx(1.0 + alone["sources"]["retrieval"]["matched"] / steps)
    assert "τ of its own beams" in paths["md"].read_text()
    assert report["methods"]["oracle_2x4"]["acceptance_per_depth"] == [1.0, 1.0, 1.0]
    assert report["methods"]["hf_greedy"]["tau"] == pytest.approx(1.0)
    assert set(report["by_category"]["plain_loop"]) == {"a", "b"}
    assert {r["category"] for r in report["records"]} == {"a", "b"}
    assert not fastpath.is_accelerated(model)  # the bench unpatches what it patched


@pytest.mark.slow
def test_bench_default_model_two_prompts(smollm, tmp_path):
    """The issue's smoke test: the default model, MT-Bench, 2 prompts, 8 new tokens."""
    from redrafter_rs.assets import load_default_drafter

    model, tok = smollm
    setup = bench.Setup(model, tok, load_default_drafter(model), "default")
    config = bench.BenchConfig(
        num_prompts=2, max_new_tokens=8, grid=((2, 3),), fast=True, threads=1, cost_sizes=(1, 8)
    )
    report = bench.run_bench(config, setup, log=lambda s: None)
    paths = bench_report.write_reports(report, tmp_path)
    _check_outputs(report, paths)
    assert report["methods"]["plain_loop"]["time_split"]["target"] > 0.5
    assert report["fast"]["max_abs_logit_diff"] < 1e-3
    assert report["fast"]["cost_curve"]["fast"]["ms"][8] > 0


def test_cli_parses_bench_flags():
    args = build_parser().parse_args(
        ["bench", "--num-prompts", "20", "--grid", "1x4,4x5", "--threads", "1", "--fast"]
    )
    assert args.grid == ((1, 4), (4, 5)) and args.num_prompts == 20 and args.fast
    assert args.retrieval and args.retrieval_grid == bench.DEFAULT_RETRIEVAL_GRID
    assert args.adaptive
    args = build_parser().parse_args(
        ["bench", "--no-retrieval", "--retrieval-grid", "2x6", "--no-adaptive"]
    )
    assert not args.retrieval and args.retrieval_grid == ((2, 6),) and not args.adaptive
    assert args.tree_grid == ()
    args = build_parser().parse_args(["bench", "--tree-grid", "4x4n3,4x5N9"])
    assert args.tree_grid == ((4, 4, 3), (4, 5, 9))
    for bad in (["--grid", "4by5"], ["--tree-grid", "4x4"], ["--tree-grid", "4x4n0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", *bad])
    assert bench.spread(list(range(80)), 4) == [0, 20, 40, 60]


# ---- bench-core -------------------------------------------------------------------------------
def test_bench_core_rust_matches_reference_sizes():
    """The timed Rust path and the reference build the same trees and accept the same paths on
    bench-core's inputs, and the rows report those trees' sizes."""
    sizes = ((1, 4, 4), (8, 4, 4))
    rows = bench_core.run(with_step=False, sizes=sizes)
    assert [(r["B"], r["W"], r["L"]) for r in rows] == list(sizes)
    for row in rows:
        beams = bench_core.make_beams(row["B"], row["W"], row["L"])
        tree = rr.pack_beams(beams, bench_core.VOCAB)
        ref = reference.pack_beams(torch.from_numpy(beams))
        assert row["N"] == tree.max_nodes == int(ref.num_nodes.max())
        assert torch.equal(torch.from_numpy(tree.num_nodes), ref.num_nodes)
        choice = bench_core.make_choice(tree)
        got = rr.accept(tree, beams, choice)
        want = reference.accept(ref, torch.from_numpy(beams), torch.from_numpy(choice))
        for name in ("best_beam", "num_accepted", "path", "tokens", "bonus"):
            assert torch.equal(torch.from_numpy(getattr(got, name)), getattr(want, name)), name
        assert row["speedup"] == pytest.approx(row["reference_us"] / row["rust_us"])
    assert "| 8 | 4 | 4 |" in bench_core.markdown(rows)
