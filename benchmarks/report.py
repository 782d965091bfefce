"""Summaries and the result files: ``latest.md`` (for people), ``latest.json`` (raw) and
``latest.png`` (the stagebox/peer ratios, drawn by benchmarks.chart)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.cases import CaseResult, Target
from benchmarks.sides import Record
from benchmarks.workloads import MiB

METRICS: list[tuple[str, str, float]] = [  # record field, label, divisor
    ("wall_s", "wall s", 1.0),
    ("throughput", "throughput", 1.0),
    ("client_cpu_s", "CPU s, client", 1.0),
    ("server_cpu_s", "CPU s, server", 1.0),
    ("serve_cpu_s", "CPU s, stagebox serve", 1.0),  # sftp cases: the parts of "server"
    ("sshd_cpu_s", "CPU s, sshd", 1.0),
    ("moto_cpu_s", "CPU s, moto", 1.0),  # s3 case: the part of "server" moto used
    ("cpu_s", "CPU s, total", 1.0),
    ("client_peak_rss", "peak RSS MiB, client", MiB),
    ("server_peak_rss", "peak RSS MiB, server", MiB),
    ("serve_peak_rss", "peak RSS MiB, stagebox serve", MiB),
    ("sshd_peak_rss", "peak RSS MiB, sshd", MiB),
    ("moto_peak_rss", "peak RSS MiB, moto", MiB),
    # rerun: what the client read (see benchmarks.fixity)
    ("files_read", "files whose data the client read (atime moved)", 1.0),
    ("read_bytes", "client read_bytes KiB (/proc/<pid>/io)", 1024),
    ("rchar", "client rchar MiB", MiB),
    ("rchar_beyond_baseline", "client rchar KiB beyond a one-file rerun's", 1024),
    ("journal_bytes", "client journal KiB", 1024),
    # audit: what the server's audit read during the timed upload
    ("audit_read_mb_s", "audit read MB/s (server rchar beyond the upload's)", 1.0),
    ("server_read_bytes", "server read_bytes MiB (from the disk)", MiB),
    ("audits_recorded", "audits recorded during the upload", 1.0),
]


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def counted(result: CaseResult, side: str) -> list[Record]:
    return [r for r in result.runs if r["side"] == side and not r["warmup"]]


def ratio_pairs(result: CaseResult) -> list[tuple[str, str]]:
    """(ours, peer) of every ratio the case reports: its ``pairs``, or else its first side
    against each other side; the first is the one targets use unless they name another."""
    if result.pairs:
        return list(result.pairs)
    return [(result.sides[0], peer) for peer in result.sides[1:]]


def pair_ratios(
    result: CaseResult, peer: str | None = None, ours: str | None = None
) -> list[float]:
    """ours/peer of ``ratio_of`` for each counted round that has both sides; by default
    the case's first pair (the first side and the second, unless ``pairs`` says)."""
    if result.ratio_of is None or len(result.sides) < 2:
        return []
    first = ratio_pairs(result)[0]
    mine = {r["index"]: r for r in counted(result, ours or first[0])}
    theirs = {r["index"]: r for r in counted(result, peer or first[1])}
    f = result.ratio_of
    return [mine[i][f] / theirs[i][f] for i in sorted(mine.keys() & theirs.keys())]


def target_value(result: CaseResult, target: Target) -> float | None:
    """The median of the pair ratios, or the worst counted run of one side."""
    if target.side is None:
        ours, peer = target.pair or (None, None)
        s = stats(pair_ratios(result, peer, ours))
        return s["median"] if s else None
    values = [
        r[target.field] for r in counted(result, target.side) if r.get(target.field) is not None
    ]
    if not values:
        return None
    worst = max(values) if target.op == "<=" else min(values)
    return float(worst) / target.scale


def verdict(result: CaseResult, target: Target) -> tuple[float | None, str]:
    value = target_value(result, target)
    if result.status != "ok" or value is None:
        return value, result.status if result.status != "ok" else "no data"
    ok = value >= target.threshold if target.op == ">=" else value <= target.threshold
    return value, "PASS" if ok else "FALLS SHORT"


def summary(result: CaseResult) -> dict[str, Any]:
    sides = {
        side: {
            f: stats([r[f] / div for r in counted(result, side) if r.get(f) is not None])
            for f, _, div in METRICS
        }
        for side in result.sides
    }
    ratios = pair_ratios(result)
    targets = []
    for t in result.targets:
        value, outcome = verdict(result, t)
        targets.append({**asdict(t), "value": value, "result": outcome})
    others = {
        peer: {"ours": ours, "pair_ratios": r, "ratio": stats(r)}
        for ours, peer in ratio_pairs(result)[1:]
        if (r := pair_ratios(result, peer, ours))
    }
    return {
        "sides": sides,
        "pair_ratios": ratios,
        "ratio": stats(ratios),
        "other_ratios": others,
        "targets": targets,
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def case_markdown(result: CaseResult) -> list[str]:
    out = [f"### {result.title}", ""]
    if result.status == "not available":
        return [*out, f"Not available: {result.reason}", ""]
    out += [
        *(f"Note: {note}." for note in result.notes),
        f"Case took {result.duration_s:.0f} s.",
        "",
    ]
    if result.status == "failed":
        out += ["**FAILED**, partial results below:", "", "```", result.reason.strip(), "```", ""]
    s = summary(result)
    out += ["| metric | side | median | min | max | n |", "|---|---|---:|---:|---:|---:|"]
    for f, label, _ in METRICS:
        name = f"{label} ({result.unit})" if f == "throughput" else label
        for side in result.sides:
            st = s["sides"][side][f]
            if st is None:
                continue
            n = len(counted(result, side))
            out.append(
                f"| {name} | {side} | {_fmt(st['median'])} | {_fmt(st['min'])} | "
                f"{_fmt(st['max'])} | {n} |"
            )
    what = "throughput" if result.ratio_of == "throughput" else "time"
    first = ratio_pairs(result)[0] if len(result.sides) > 1 else None
    if s["ratio"] and first:
        r = s["ratio"]
        out.append(
            f"| **{first[0]}/{first[1]} {what}, per pair** | pairs | "
            f"**{r['median']:.2f}** | {r['min']:.2f} | {r['max']:.2f} | {len(s['pair_ratios'])} |"
        )
    for peer, other in s["other_ratios"].items():
        r = other["ratio"]
        out.append(
            f"| {other['ours']}/{peer} {what}, per pair | pairs | {r['median']:.2f} | "
            f"{r['min']:.2f} | {r['max']:.2f} | {len(other['pair_ratios'])} |"
        )
    out.append("")
    if s["pair_ratios"] and first:
        pairs = ", ".join(f"{x:.2f}" for x in s["pair_ratios"])
        who = "stagebox/peer" if not result.pairs else f"{first[0]}/{first[1]}"
        out += [f"Per-pair {result.ratio_of} ratios ({who}, in run order): {pairs}.", ""]
    if result.pairs:
        for peer, other in s["other_ratios"].items():
            pairs = ", ".join(f"{x:.2f}" for x in other["pair_ratios"])
            out += [f"Per-pair {result.ratio_of} ratios ({other['ours']}/{peer}): {pairs}.", ""]
    warm = [r for r in result.runs if r["warmup"]]
    if warm:
        text = ", ".join(f"{r['side']} {r['wall_s']:.2f} s" for r in warm)
        out += [f"Warm-up (not counted): {text}.", ""]
    return out


def targets_markdown(results: list[CaseResult]) -> list[str]:
    out = ["## Targets", "", "| target | case | measured | result |", "|---|---|---:|---|"]
    for result in results:
        for t in result.targets:
            value, outcome = verdict(result, t)
            measured = "-" if value is None else f"{value:.2f} {t.unit}"
            how = "median of per-pair ratios" if t.side is None else "worst run"
            out.append(f"| {t.label} | {result.name} | {measured} ({how}) | {outcome} |")
    return [*out, ""]


def write(results_dir: Path, meta: dict[str, Any], results: list[CaseResult]) -> Path:
    from benchmarks.chart import write_chart  # it draws from this module's summaries

    results_dir.mkdir(parents=True, exist_ok=True)
    chart_problem = write_chart(results_dir / "latest.png", meta, results)
    if chart_problem:
        print(chart_problem, flush=True)
    raw = {
        "meta": meta,
        "cases": [{**asdict(r), "summary": summary(r)} for r in results],
    }
    (results_dir / "latest.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    machine, versions = meta["machine"], meta["versions"]
    lines = [
        f"# stagebox benchmarks ({meta['mode']})",
        "",
        f"Run {meta['started']} (UTC), {meta['duration_s']:.0f} s, `{meta['command']}`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Versions",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in versions.items()),
        "",
        "## Method",
        "",
        *(f"- {line}" for line in meta["method"]),
        "",
        "## Cases",
        "",
        chart_problem or "![stagebox/peer ratios, median of the pairs](latest.png)",
        "",
    ]
    for result in results:
        lines += case_markdown(result)
    lines += targets_markdown(results)
    path = results_dir / "latest.md"
    path.write_text("\n".join(lines))
    return path
