"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rayiqa.methods.metrics import fit_logistic, logistic_4
from rayiqa.report.scan import Histogram, Sample

CLUSTER_STYLE = {"high": ("tab:green", "^", "high cluster"), "low": ("tab:red", "v", "low cluster"),
                 "": ("tab:gray", "o", "not in a cluster")}


def _figure(width: float = 6.0, height: float = 3.6) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _sampled(sample: Sample) -> str:
    shown = len(sample.keys)
    return f"{shown} points" if shown == sample.seen else f"a uniform sample of {shown} of {sample.seen} points"


def score_histogram(hists: dict[str, Histogram], model_ids: list[str]) -> bytes:
    """Counts of the score per bin; for an ensemble, each model's s_k as an outline on the same bins."""
    fig, ax = _figure()
    total = hists["score"]
    ax.stairs(total.counts, total.edges, fill=True, alpha=0.6, label="score (ensemble mean)" if len(hists) > 1 else "score")
    for m, model in enumerate(model_ids if len(hists) > 1 else []):
        h = hists[f"model {m}"]
        ax.stairs(h.counts, h.edges, linewidth=1.5, label=f"model {m}: {model}")
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    ax.set_title(f"Score distribution ({int(total.counts.sum())} scored images)")
    ax.legend(fontsize=8)
    return _png(fig)


def scatter(sample: Sample, x: str, y: str, xlabel: str, ylabel: str, title: str) -> bytes:
    """y against x over a bounded sample of rows, coloured by TTA cluster when the sample has one."""
    fig, ax = _figure(5.0, 4.0)
    cols = sample.columns
    clusters = cols.get("cluster", np.full(len(sample.keys), "", dtype=object))
    alpha = 0.8 if len(sample.keys) < 500 else 0.3
    for name, (colour, marker, label) in CLUSTER_STYLE.items():
        keep = clusters == name
        if keep.any():
            ax.scatter(cols[x][keep], cols[y][keep], s=14, c=colour, marker=marker, alpha=alpha,
                       label=label if "cluster" in cols else None)
    if "cluster" in cols:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n({_sampled(sample)})", fontsize=10)
    return _png(fig)


def tta_batches(batches: dict[str, list[dict]]) -> bytes:
    """One line per adaptation batch: each image at the ranking score that formed the clusters
    (the base model's score when the method ranks without one), marked high / low / neither."""
    fig, ax = _figure(6.0, 1.0 + 0.45 * len(batches))
    seen = set()
    for row_no, rows in enumerate(batches.values()):
        for r in rows:
            value = r["tta_ranker_score"] if r["tta_ranker_score"] is not None else r["tta_base_score"]
            colour, marker, label = CLUSTER_STYLE[r["tta_cluster"] or ""]
            ax.scatter([value], [row_no], s=40, c=colour, marker=marker, label=None if label in seen else label)
            seen.add(label)
    ax.set_yticks(range(len(batches)), [bid[:24] for bid in batches], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ranking score")
    ax.set_title(f"First {len(batches)} adaptation batches: high / low clusters", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def mos_scatter(pred: np.ndarray, mos: np.ndarray, metrics: dict, mos_column: str) -> bytes:
    """Score against MOS with the fitted 4-parameter logistic (the curve PLCC* and RMSE* are measured on)."""
    keep = ~(np.isnan(pred) | np.isnan(mos))  # the pairs `evaluate` keeps
    pred, mos = pred[keep], mos[keep]
    fig, ax = _figure(5.0, 4.0)
    ax.scatter(pred, mos, s=14, alpha=0.8, label=f"{len(pred)} matched images")
    if "fit_error" not in metrics:
        xs = np.linspace(pred.min(), pred.max(), 200)
        with np.errstate(over="ignore"):
            ax.plot(xs, logistic_4(xs, *fit_logistic(pred, mos, 4)), "k-", label="4-parameter logistic fit")
    ax.set_xlabel("score")
    ax.set_ylabel(mos_column)
    ax.set_title(f"SRCC {metrics['srcc']:.4f}  PLCC* {metrics['plcc_logistic']:.4f}", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)
