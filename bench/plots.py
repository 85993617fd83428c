"""PNG plots for bench/run.py (matplotlib, pinned in .venv-synapse by scripts/setup-synapse.sh).

Each function writes one file and returns its name; run.py links them from the Markdown report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from media import ROW_ORDER, size_label  # noqa: E402

COLORS = {"moss": "tab:green", "synapse-postgres": "tab:blue", "synapse-sqlite": "tab:orange",
          "nginx": "black", "garage": "tab:gray", "moss-fs": "tab:green", "moss-s3": "tab:olive",
          "moss-encrypt+s3": "tab:cyan", "synapse-local": "tab:blue", "synapse-s3": "tab:purple"}
STYLE = {"nginx": "--", "garage": "--"}


PLAIN = FuncFormatter(lambda v, _: f"{v:g}")


def _ecdf(ax, samples: list[float], label: str, color: str) -> None:
    xs = sorted(samples)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", label=label, color=color)


def latency(results: dict, titles: dict, section: str, what: str, out: Path, name: str) -> str | None:
    """Cumulative distribution of one workload's latency samples, a line per server."""
    series = [(n, results[n][section]["samples_ms"]) for n in titles
              if n in results and results[n].get(section, {}).get("samples_ms")]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for n, samples in series:
        _ecdf(ax, samples, f"{titles[n]} (n={len(samples)})", COLORS.get(n, None))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(PLAIN)
    ax.xaxis.set_minor_formatter(PLAIN if _decades(series) < 1.5 else NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"{what} latency (ms, log scale)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_ylim(0, 1.02)
    for q in (0.5, 0.99):
        ax.axhline(q, color="lightgray", lw=0.8, zorder=0)
    ax.grid(True, which="both", axis="x", color="#eee")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{what} latency, cumulative distribution")
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def media_throughput(media: dict, out: Path, name: str) -> str | None:
    """Upload and download MB/s by file size (log-log), and peak RSS above idle by size."""
    rows = [r for r in ROW_ORDER if r in media.get("rows", {})]
    sizes = media.get("sizes", [])
    if not rows or not sizes:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), dpi=100)
    for ax, direction in zip(axes[:2], ("upload", "download")):
        for r in rows:
            pts = [(s, media["rows"][r]["sizes"][str(s)][direction]["mb_s"]) for s in sizes
                   if str(s) in media["rows"][r]["sizes"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE.get(r, "-"), marker="o",
                        color=COLORS.get(r), label=media["rows"][r]["title"].split(" (")[0] + _suffix(r))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)
        ax.set_xticks(sizes, [size_label(s) for s in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("file size")
        ax.set_ylabel("MB/s (median, log scale)")
        ax.set_title(f"{direction} throughput")
        ax.grid(True, which="both", color="#eee")
    ax = axes[2]
    for r in rows:
        pts = [(s, max(media["rows"][r]["sizes"][str(s)][d]["peak_above_idle_mib"] for d in ("upload", "download")))
               for s in sizes if str(s) in media["rows"][r]["sizes"]]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLE.get(r, "-"), marker="o", color=COLORS.get(r))
    ax.axhline(100, color="red", lw=0.8, ls=":")
    ax.text(sizes[0], 98, "target for moss: < idle + 100 MiB", color="red", fontsize=8, va="top")
    ax.set_ylim(bottom=0, top=max(110, ax.get_ylim()[1]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [size_label(s) for s in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("file size")
    ax.set_ylabel("MiB above idle RSS")
    ax.set_title("peak RSS during a transfer (max of up/down)")
    ax.grid(True, which="both", color="#eee")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _decades(series: list) -> float:
    import math
    lo = min(min(s) for _, s in series)
    hi = max(max(s) for _, s in series)
    return math.log10(hi / lo) if lo > 0 else 9


def _suffix(row: str) -> str:
    return {"nginx": " (fs ceiling)", "garage": " (raw S3)"}.get(row, "")
