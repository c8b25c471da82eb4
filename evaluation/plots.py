"""PNG plots for evaluation reports (matplotlib's Agg canvas; no display, no pyplot state).

- ``confusion_png``: row-normalised intent confusion matrix, labels grouped by domain;
- ``confidence_png``: histogram of intent confidence for correct vs incorrect predictions.

Both take the JSON tables of ``evaluation.tables`` and write the PNG atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

from findial import tracking

CELL_INCHES = 0.24
DPI = 120


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    path = tracking.atomic_write_bytes(path, buf.getvalue())
    return path


def _groups(domains: list[str]) -> list[tuple[str, int, int]]:
    """(domain, first index, last index + 1) of each run of equal domains."""
    out: list[tuple[str, int, int]] = []
    for i, d in enumerate(domains):
        if out and out[-1][0] == d:
            out[-1] = (d, out[-1][1], i + 1)
        else:
            out.append((d, i, i + 1))
    return out


def confusion_png(confusion: dict, path: str | Path, title: str = "Intent confusion (rows: gold, normalised)") -> Path:
    """Row-normalised heat map of ``tables.intent_confusion``; cells show the row percentage.

    Gold rows carry their turn counts; the diagonal (correct predictions) is framed in green.
    """
    labels, columns, matrix = confusion["labels"], confusion["columns"], confusion["matrix"]
    n_rows, n_cols = max(len(labels), 1), max(len(columns), 1)
    fig = _figure(max(5.0, 2.6 + CELL_INCHES * n_cols), max(4.0, 2.2 + CELL_INCHES * n_rows))
    ax = fig.add_subplot(1, 1, 1)
    if not labels:
        ax.text(0.5, 0.5, "no user turn with a gold intent", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    norm = [[c / (sum(row) or 1) for c in row] for row in matrix]
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    font = 7 if max(n_rows, n_cols) <= 30 else 6
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=font)
    ax.set_yticks(range(len(labels)), [f"{lab} ({sum(r)})" for lab, r in zip(labels, matrix)], fontsize=font)
    ax.set_xlabel("predicted intent", fontsize=8)
    ax.set_ylabel("gold intent (turns)", fontsize=8)
    from matplotlib.patches import Rectangle

    for i, row in enumerate(norm):
        if i < len(columns) and columns[i] == labels[i]:  # frame the diagonal: the correct predictions
            ax.add_patch(Rectangle((i - 0.4, i - 0.4), 0.8, 0.8, fill=False, edgecolor="#2e7d32", linewidth=0.8))
        for j, v in enumerate(row):
            if matrix[i][j]:
                ax.text(
                    j,
                    i,
                    f"{round(100 * v)}",
                    ha="center",
                    va="center",
                    fontsize=font - 1,
                    color="white" if v > 0.55 else "#123",
                )
    for _, b, _ in _groups(confusion["domains"])[1:]:
        ax.axhline(b - 0.5, color="#888", linewidth=0.6)
        ax.axvline(b - 0.5, color="#888", linewidth=0.6)  # columns start with the same labels
    groups = _groups(confusion["domains"])
    top = ax.secondary_xaxis("top")
    top.set_xticks([(s + e - 1) / 2 for _, s, e in groups], [d or "?" for d, _, _ in groups], fontsize=7)
    top.tick_params(length=0)
    cbar = fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    cbar.ax.tick_params(labelsize=7)
    cbar.set_label("share of the gold row", fontsize=7)
    ax.set_title(title, fontsize=10, pad=18)
    return _save(fig, path)


def confidence_png(
    summary: dict, path: str | Path, title: str = "Intent confidence: correct vs incorrect predictions"
) -> Path:
    """Side-by-side bars per confidence bin from ``tables.confidence_summary``."""
    edges, good, bad = summary["edges"], summary["correct"], summary["incorrect"]
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
    left = edges[:-1]
    ax.bar(
        [x + width * 0.05 for x in left],
        good,
        width=width * 0.45,
        align="edge",
        color="#2e7d32",
        label=f"correct ({summary['n_correct']})",
    )
    ax.bar(
        [x + width * 0.5 for x in left],
        bad,
        width=width * 0.45,
        align="edge",
        color="#c62828",
        label=f"incorrect ({summary['n_incorrect']})",
    )
    ax.set_xlim(0, 1)
    ax.set_xticks(edges)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("confidence of the predicted intent", fontsize=8)
    ax.set_ylabel("user turns", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)
