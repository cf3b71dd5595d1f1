"""`redrafter bench` reports: per-method summaries (speed, tau, acceptance, quantiles), the
machine description, Markdown tables, the plot and the files written (docs/design.md §12)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from redrafter_rs._common import tau_of

PHASES = ("drafter", "target", "rust", "cache", "transfer", "other")  # the engine's time split


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def _method_summary(recs: list[dict], base: dict[int, dict]) -> dict:
    tps = [r["tokens_per_s"] for r in recs]
    speed = [r["tokens_per_s"] / base[r["prompt"]]["tokens_per_s"] for r in recs]
    p25, med, p75 = _quantiles(tps)
    s25, smed, s75 = _quantiles(speed)
    total_tokens = sum(r["new_tokens"] for r in recs)
    total_time = sum(r["time_s"] for r in recs)
    base_rate = sum(base[r["prompt"]]["new_tokens"] for r in recs) / sum(
        base[r["prompt"]]["time_s"] for r in recs
    )
    out = {
        "prompts": len(recs),
        "tokens_per_s": {"median": med, "p25": p25, "p75": p75},
        "speedup": {"median": smed, "p25": s25, "p75": s75},
        "speedup_total": (total_tokens / total_time) / base_rate,
        "new_tokens": total_tokens,
        "time_s": total_time,
        "greedy_equal": sum(r["equal"] for r in recs),
        "greedy_equal_stock": sum(r.get("equal_stock", r["equal"]) for r in recs),
        "tau": None,
        "acceptance_per_depth": None,
        "time_split": None,
    }
    steps = sum(r.get("steps", 0) for r in recs)
    if steps:  # accepted draft tokens: verified tokens past each step's bonus token
        out["tau"] = tau_of(sum(r["verified_tokens"] for r in recs) - steps, steps)
    hists = [r["accepted_hist"] for r in recs if "accepted_hist" in r]
    if hists:
        hist = [sum(col) for col in zip(*hists, strict=True)]
        n = max(sum(hist), 1)
        out["acceptance_per_depth"] = [sum(hist[d:]) / n for d in range(1, len(hist))]
    sources = [r["sources"] for r in recs if "sources" in r]
    if sources:
        out["sources"] = _source_summary(sources)
    shapes: dict[str, int] = {}
    for r in recs:
        for shape, n in r.get("shapes", {}).items():
            shapes[shape] = shapes.get(shape, 0) + n
    if len(shapes) > 1:  # the adaptive methods: steps per tree shape the policy chose
        out["shapes"] = dict(sorted(shapes.items(), key=lambda kv: -kv[1]))
    phases = [r["phases_s"] for r in recs if "phases_s" in r]
    if phases:
        wall = sum(r["time_s"] for r in recs if "phases_s" in r)
        out["time_split"] = {p: sum(ph[p] for ph in phases) / wall for p in PHASES}
    return out


def _source_summary(per_record: list[dict]) -> dict:
    """Per draft source, over a method's records: steps it proposed in, draft tokens of the
    accepted path its own beams held (`matched`), τ it would have had alone on those steps,
    and the share of steps where it held the whole accepted path (`wins`)."""
    out = {}
    for name in sorted({k for rec in per_record for k in rec}):
        steps = sum(rec[name]["steps"] for rec in per_record if name in rec)
        matched = sum(rec[name]["matched"] for rec in per_record if name in rec)
        wins = sum(rec[name]["wins"] for rec in per_record if name in rec)
        out[name] = {
            "steps": steps,
            "matched": matched,
            "tau": tau_of(matched, steps) if steps else None,
            "win_rate": wins / steps if steps else None,
        }
    return out


def summarize(config, setup, methods, skipped, records, fl_info) -> dict:
    base = {r["prompt"]: r for r in records if r["method"] == "hf_greedy"}
    by_method = {m.name: [r for r in records if r["method"] == m.name] for m in methods}
    summary = {name: _method_summary(recs, base) for name, recs in by_method.items() if recs}
    fast_plain = {r["prompt"]: r for r in records if r["method"] == "plain_loop+fast"}
    for name, recs in by_method.items():  # against the same fast forward without speculation
        if fast_plain and recs:
            rate = sum(r["new_tokens"] for r in recs) / sum(r["time_s"] for r in recs)
            ref = fast_plain.values()
            ref_rate = sum(r["new_tokens"] for r in ref) / sum(r["time_s"] for r in ref)
            speed = [r["tokens_per_s"] / fast_plain[r["prompt"]]["tokens_per_s"] for r in recs]
            summary[name]["vs_fast_plain"] = {
                "speedup_total": rate / ref_rate,
                "speedup_median": statistics.median(speed),
            }
    categories = sorted({r["category"] for r in records})
    by_category = {
        name: {
            c: _method_summary([r for r in recs if r["category"] == c], base) for c in categories
        }
        for name, recs in by_method.items()
        if recs and len(categories) > 1
    }
    return {
        "config": asdict(config),
        "machine": machine_info(),
        "model": _model_label(config.model),
        "drafter": setup.drafter_label,
        "notes": setup.notes,
        "methods": summary,
        "by_category": by_category,
        "skipped": skipped,
        "fast": fl_info,
        "records": records,
    }


def _model_label(name: str) -> str:
    from redrafter_rs.models import DEFAULT_MODEL

    return DEFAULT_MODEL if name == "default" else name


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }


# ---- reports ------------------------------------------------------------------------------
def _fmt(x, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def markdown_table(report: dict) -> str:
    """The per-method table: tokens/s, speedup, τ, acceptance, time split, equality."""
    head = (
        "| method | tok/s median [p25, p75] | speedup median [p25, p75] | speedup (total) | τ "
        "| acceptance per depth | drafter / target / rust / cache / transfer / other "
        "| greedy-equal | vs plain_loop+fast (total) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, s in report["methods"].items():
        t, sp = s["tokens_per_s"], s["speedup"]
        acc = s["acceptance_per_depth"]
        split = s["time_split"]
        rows.append(
            f"| {name} | {t['median']:.1f} [{t['p25']:.1f}, {t['p75']:.1f}] "
            f"| {sp['median']:.2f}x [{sp['p25']:.2f}, {sp['p75']:.2f}] "
            f"| {s['speedup_total']:.2f}x | {_fmt(s['tau'])} "
            f"| {' '.join(f'{a:.2f}' for a in acc) if acc else '-'} "
            f"| {' / '.join(f'{100 * split[p]:.0f}%' for p in PHASES) if split else '-'} "
            f"| {s['greedy_equal']}/{s['prompts']} (stock {s['greedy_equal_stock']}) "
            f"| {_fmt((s.get('vs_fast_plain') or {}).get('speedup_total'))}x |"
        )
    return head + "\n".join(rows) + "\n"


def markdown_report(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    lines = [
        f"# redrafter bench: {report['model']}",
        "",
        f"{mach['date']}; {mach['cpu']}, {mach['cores']} cores, torch threads "
        f"{mach['torch_threads']}, GPU {mach['gpu'] or 'none'}; torch {mach['torch']}, "
        f"transformers {mach['transformers']}.",
        f"Drafter: {report['drafter']}. Prompts: {cfg['prompts'] or 'MT-Bench first turns'} "
        f"({len({r['prompt'] for r in report['records']})} prompts, {cfg['warmup']} warm-up "
        f"excluded), max_new_tokens {cfg['max_new_tokens']}, dtype {cfg['dtype']}, "
        f"device {cfg['device']}, greedy, batch 1.",
        "",
        markdown_table(report),
    ]
    if report["skipped"]:
        lines += ["Skipped: " + "; ".join(f"`{k}`: {v}" for k, v in report["skipped"].items())]
    lines += [f"Note: {n}" for n in report["notes"]]
    for name, m in report["methods"].items():
        if "shapes" in m:
            total = sum(m["shapes"].values())
            used = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in m["shapes"].items())
            lines += [f"Shapes `{name}` chose (share of its {total} steps): {used}"]
    if report.get("fast"):
        lines += ["", fast_section(report["fast"])]
    lines += ["", source_table(report), category_table(report)]
    return "\n".join(lines) + "\n"


def fast_section(fast: dict) -> str:
    """The fast path: kernel, Δlogit checks, the cost curve c(N) and the bandwidth floor."""
    acc = fast["accelerated"]
    lines = [
        f"`+fast`: {acc['layers']} linear layers on the {acc['kernel']} kernel ({acc['isa']}, "
        f"{acc['threads']} threads). max |Δlogit| fast vs stock: "
        f"{fast.get('max_abs_logit_diff', float('nan')):.2e}; plain step vs the same token "
        "inside a tree: stock "
        f"{fast.get('tree_vs_plain_max_abs_logit_diff_stock', float('nan')):.2e}, fast "
        f"{fast.get('tree_vs_plain_max_abs_logit_diff_fast', float('nan')):.2e}.",
    ]
    curve = fast.get("cost_curve")
    if curve:
        sizes = list(next(iter(curve.values()))["ms"])
        lines += [
            "",
            f"Verification cost (context 200, forward + LM head on N rows): weights "
            f"{fast['weight_bytes'] / 1e6:.0f} MB, read bandwidth {fast['read_bandwidth_gbs']:.1f}"
            f" GB/s, floor {fast['floor_ms']:.1f} ms; plain step / floor: "
            + ", ".join(f"{a} {v:.2f}x" for a, v in fast["plain_step_over_floor"].items()),
            "",
            "| arm | " + " | ".join(f"N={n}" for n in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for arm, c in curve.items():
            cells = [f"{c['ms'][n]:.1f} ms ({c['c'][n]:.2f})" for n in sizes]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def source_table(report: dict) -> str:
    """Per draft source of the multi-source methods: steps it proposed in, the τ it would have
    had alone on them, and how often it held the whole accepted path."""
    rows = [
        f"| {name} | {src} | {v['steps']} | {_fmt(v['tau'])} | {_fmt(v['win_rate'])} |"
        for name, s in report["methods"].items()
        for src, v in (s.get("sources") or {}).items()
    ]
    if not rows:
        return ""
    head = (
        "| method | source | steps proposed | τ of its own beams | whole path held |\n"
        "|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def category_table(report: dict) -> str:
    """τ / median speedup per method (rows) and prompt category (columns)."""
    by_cat = report["by_category"]
    if not by_cat:
        return ""
    cats = list(next(iter(by_cat.values())))
    head = "| τ / speedup | " + " | ".join(cats) + " |\n|---|" + "---|" * len(cats) + "\n"
    rows = []
    for name, per in by_cat.items():
        if name == "hf_greedy":
            continue
        cells = [f"{_fmt(per[c]['tau'])} / {per[c]['speedup']['median']:.2f}x" for c in cats]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def plot(report: dict, path: Path) -> None:
    """Speedup (median, p25-p75 whiskers) and τ per method, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    s = [report["methods"][n] for n in names]
    med = [x["speedup"]["median"] for x in s]
    err = [
        [m - x["speedup"]["p25"] for m, x in zip(med, s, strict=True)],
        [x["speedup"]["p75"] - m for m, x in zip(med, s, strict=True)],
    ]
    tau = [x["tau"] or 0.0 for x in s]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8), sharey=True)
    y = range(len(names))
    ax1.barh(y, med, xerr=err, color="tab:blue", capsize=3)
    ax1.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax1.set_yticks(list(y), names)
    ax1.invert_yaxis()
    ax1.set_xlabel("speedup vs hf_greedy (median, p25-p75)")
    ax2.barh(y, tau, color="tab:orange")
    ax2.set_xlabel("τ (tokens per target forward)")
    fig.suptitle(f"redrafter bench: {report['model']}, drafter {report['drafter']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(report: dict, out: str | Path) -> dict[str, Path]:
    """bench.json, bench.md and bench.png under `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    paths["md"].write_text(markdown_report(report), encoding="utf-8")
    plot(report, paths["png"])
    return paths


# ---- command line -------------------------------------------------------------------------
