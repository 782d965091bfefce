"""``latest.png``: one bar per (case, peer) pair, the median of the per-pair stagebox/peer
ratios, whiskers from the lowest to the highest pair, a line at 1.0 and each ratio
target's threshold marked on its bar.

Throughput ratios (higher: stagebox faster) and time ratios (lower: stagebox faster) point
opposite ways, so they get a panel each rather than sharing an axis that reads both ways.
Drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.cases import CaseResult
from benchmarks.report import pair_ratios, ratio_pairs, stats, verdict

COLOURS = {"PASS": "#2e7d32", "FALLS SHORT": "#c62828", None: "#5c6bc0"}
LEGEND = {"PASS": "meets its target", "FALLS SHORT": "falls short of its target", None: "no target"}
PANELS = {
    "throughput": "throughput ratio, stagebox / peer (higher: stagebox faster)",
    "wall_s": "time ratio, stagebox / peer (lower: stagebox faster)",
}


@dataclass(frozen=True)
class Bar:
    label: str
    ratio_of: str
    median: float
    low: float
    high: float
    pairs: int
    threshold: float | None = None
    target: str = ""
    outcome: str | None = None  # PASS / FALLS SHORT for a bar with a target


def bars(results: list[CaseResult]) -> list[Bar]:
    """A bar for each (ours, peer) pair of each case that has pair ratios (see
    report.ratio_pairs); a ratio target is on its ``pair``, by default the first."""
    found = []
    for result in results:
        if result.ratio_of is None or len(result.sides) < 2:
            continue
        pairs = ratio_pairs(result)
        for ours, peer in pairs:
            st = stats(ratios := pair_ratios(result, peer, ours))
            if st is None:
                continue
            bar = Bar(
                f"{result.name}: {ours} / {peer}",
                result.ratio_of,
                st["median"],
                st["min"],
                st["max"],
                len(ratios),
            )
            targets = [
                t for t in result.targets if t.side is None and (t.pair or pairs[0]) == (ours, peer)
            ]
            if targets:
                t = targets[0]
                _, outcome = verdict(result, t)
                bar = replace(
                    bar,
                    threshold=t.threshold,
                    target=f"{t.op} {t.threshold:g}x",
                    outcome=outcome if outcome in COLOURS else None,
                )
            found.append(bar)
    return found


def _panel(ax: Any, rows: list[Bar], title: str) -> None:
    ys = list(range(len(rows)))[::-1]
    medians = [b.median for b in rows]
    err = [[b.median - b.low for b in rows], [b.high - b.median for b in rows]]
    colours = [COLOURS[b.outcome] for b in rows]
    ax.barh(ys, medians, xerr=err, color=colours, height=0.6, capsize=3, ecolor="#333333")
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    right = max([b.high for b in rows] + [b.threshold or 0 for b in rows] + [1.0]) * 1.25
    for y, b in zip(ys, rows, strict=True):
        ax.text(b.high + right * 0.01, y, f"{b.median:.2f}x", va="center", fontsize=9)
        if b.threshold is not None:
            ax.plot([b.threshold] * 2, [y - 0.42, y + 0.42], color="#e65100", linewidth=2.5)
            ax.text(
                b.threshold, y + 0.45, f"target {b.target}", color="#e65100",
                fontsize=8, ha="center", va="bottom",
            )  # fmt: skip
    ax.set_yticks(ys, [f"{b.label} (n={b.pairs})" for b in rows], fontsize=9)
    ax.set_xlim(0, right)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def write_chart(path: Path, meta: dict[str, Any], results: list[CaseResult]) -> str | None:
    """Write the chart at ``path``; returns why not when it cannot (no matplotlib, no
    ratio to draw), after removing an older chart there."""
    path.unlink(missing_ok=True)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        return f"no chart: matplotlib not installed ({exc})"
    found = bars(results)
    if not found:
        return "no chart: no case has stagebox/peer ratios"
    groups = [(PANELS[k], [b for b in found if b.ratio_of == k]) for k in PANELS]
    groups = [(title, rows) for title, rows in groups if rows]
    heights = [len(rows) + 1.2 for _, rows in groups]
    missing = [r for r in results if r.status != "ok"]
    fig = Figure(figsize=(11, 0.5 * sum(heights) + 1.4 + 0.2 * len(missing)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (title, rows) in zip(axes[:, 0], groups, strict=True):
        _panel(ax, rows, title)
    caveat = (
        "\nquick profile: small sizes, start-up weighs on every ratio"
        if meta["mode"] == "quick"
        else ""
    )
    fig.suptitle(
        f"stagebox benchmarks ({meta['mode']}, {meta['started']} UTC): median of per-pair "
        f"ratios, whiskers min-max, dashed line 1.0{caveat}",
        fontsize=11,
    )
    footer = [f"{r.name}: {r.status} ({r.reason.strip().splitlines()[0][:110]})" for r in missing]
    if footer:
        fig.text(0.01, 0.005, "\n".join(footer), fontsize=8, va="bottom", color="#555555")
    handles = [Patch(color=COLOURS[k], label=label) for k, label in LEGEND.items()]
    fig.legend(handles=handles, loc="lower right", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.025 * len(footer), 1, 1))
    fig.savefig(path, dpi=110)
    return None
