"""The report's figures (matplotlib, Agg): one function per figure, every run overlaid or in its own panel."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in Ray workers
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from fedmemes.tools.report.runs import Run

COLORS = [plt.get_cmap("tab10")(i) for i in range(10)]
BENIGN, HATEFUL = "#4c72b0", "#dd5144"
MAX_WIDTH = 24.0  # inches of a per-client figure (2,640 px at the report's 110 dpi)
MAX_LABELLED_CLIENTS = 20  # 0.9 inch per client and its labels: 20 fit in MAX_WIDTH
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False})


def _value(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


def holdout_curves(runs: list[Run]) -> Figure:
    """Hold-out AUROC and loss per round, runs overlaid, each run's best round ringed."""
    fig, (ax_auc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, run in enumerate(runs):
        rounds = [r["round"] for r in run.rounds]
        style = {"color": COLORS[i % 10], "marker": "o", "markersize": 4, "label": run.name}
        ax_auc.plot(rounds, [_value(r, "auroc") for r in run.rounds], **style)
        ax_loss.plot(rounds, [_value(r, "loss") for r in run.rounds], **style)
        best = next((r for r in run.rounds if r["round"] == run.metrics.get("best_round")), None)
        if best is not None and best.get("auroc") is not None:
            ax_auc.plot([best["round"]], [best["auroc"]], "o", ms=11, mfc="none", mec=COLORS[i % 10], mew=1.5)
    ax_auc.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax_auc.set(title="hold-out AUROC per round (ring: best round)", xlabel="round", ylabel="AUROC")
    ax_loss.set(title="hold-out loss per round", xlabel="round", ylabel="cross-entropy")
    for ax in (ax_auc, ax_loss):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    ax_auc.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return fig


def _scored(runs: list[Run], both_classes: bool) -> list[tuple[Run, np.ndarray, np.ndarray]]:
    """Return (run, prob, label) of the runs that saved test predictions (with both classes when asked)."""
    return [
        (r, r.prob, r.label)
        for r in runs
        if r.prob is not None
        and r.label is not None
        and len(r.label)
        and (not both_classes or len(set(r.label.tolist())) == 2)
    ]


def test_curves(runs: list[Run]) -> Figure | None:
    """ROC and precision-recall curves of each run's best model on test; None when no run saved test predictions."""
    scored = _scored(runs, both_classes=True)
    if not scored:
        return None
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9, 4.4))
    for i, (run, prob, label) in enumerate(scored):
        fpr, tpr, _ = roc_curve(label, prob)
        precision, recall, _ = precision_recall_curve(label, prob)
        color = COLORS[i % 10]
        ax_roc.plot(fpr, tpr, color=color, label=f"{run.name} (AUROC {auc(fpr, tpr):.3f})")
        ax_pr.plot(recall, precision, color=color, label=f"{run.name} (AP {average_precision_score(label, prob):.3f})")
    ax_roc.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="chance")
    base = float(np.mean(scored[0][2]))
    ax_pr.axhline(base, color="0.6", lw=0.8, ls="--", label=f"chance ({base:.2f} hateful)")
    for ax, title, xlabel, ylabel in (
        (ax_roc, "ROC on test (best round's model)", "false positive rate", "true positive rate"),
        (ax_pr, "precision-recall on test", "recall (hateful)", "precision (hateful)"),
    ):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    return fig


def confusion_matrices(runs: list[Run]) -> Figure | None:
    """One test confusion matrix per run at its stored threshold (0.5 when the run stored none)."""
    scored = _scored(runs, both_classes=False)
    if not scored:
        return None
    fig, axes = plt.subplots(1, len(scored), figsize=(3.6 * len(scored) + 0.4, 3.6), squeeze=False)
    for ax, (run, prob, label) in zip(axes[0], scored, strict=True):
        matrix = confusion_matrix(label, (prob > run.threshold).astype(int), labels=[0, 1])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
        for (row, col), count in np.ndenumerate(matrix):
            share = count / max(1, matrix[row].sum())
            ax.text(
                col,
                row,
                f"{count}\n{share:.0%} of row",
                ha="center",
                va="center",
                color="white" if count > matrix.max() / 2 else "black",
                fontsize=10,
            )
        ax.set_xticks([0, 1], ["benign", "hateful"])
        ax.set_yticks([0, 1], ["benign", "hateful"])
        ax.set(xlabel="predicted", ylabel="true", title=f"{run.name}\ntest, threshold {run.threshold:.2f}")
        ax.spines[:].set_visible(False)
    fig.tight_layout()
    return fig


def client_bars(run: Run) -> Figure | None:
    """Per-client training labels (stacked) and modalities (text, image, both) of one run."""
    clients = [c for c in run.metrics.get("clients") or [] if "label_counts" in c]
    if not clients:
        return None
    ids = np.arange(len(clients))
    names = [str(c["partition_id"]) for c in clients]
    few = len(clients) <= MAX_LABELLED_CLIENTS  # beyond that bar labels and ticks overlap: matplotlib's own ticks
    # Capped width: a thousand clients drew a 100,000-pixel PNG that took 0.8 GB and 36 s to render.
    fig, (ax_lab, ax_mod) = plt.subplots(1, 2, figsize=(min(MAX_WIDTH, max(10.0, 0.9 * len(clients) + 5)), 3.8))
    benign = np.array([c["label_counts"][0] for c in clients])
    hateful = np.array([c["label_counts"][1] for c in clients])
    ax_lab.bar(ids, benign, color=BENIGN, label="benign")
    bars = ax_lab.bar(ids, hateful, bottom=benign, color=HATEFUL, label="hateful")
    if few:
        shares = [f"{h / max(1, b + h):.0%} hateful" for b, h in zip(benign, hateful, strict=True)]
        ax_lab.bar_label(bars, shares, fontsize=8, padding=2)
    ax_lab.set_ylim(0, 1.45 * max(1, (benign + hateful).max()))  # room for the legend above the bars
    ax_lab.set(title="training labels per client", xlabel="client (partition id)", ylabel="memes")
    width = 0.27
    for offset, key, label, color in (
        (-width, "n_text", "has caption", "#55a868"),
        (0, "n_image", "has image", "#8172b2"),
        (width, "n_both", "both", "#937860"),
    ):
        ax_mod.bar(ids + offset, [c.get(key, 0) for c in clients], width, label=label, color=color)
    ax_mod.set_ylim(0, 1.45 * max([1] + [c.get("n_train", 0) for c in clients]))
    ax_mod.set(title="modalities per client", xlabel="client (partition id)", ylabel="memes")
    for ax in (ax_lab, ax_mod):
        if few:
            ax.set_xticks(ids, names)
        ax.legend(frameon=False, ncol=3, loc="upper center", fontsize=8.5)
    fig.suptitle(f"clients of run {run.name}", fontsize=10, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def participation(runs: list[Run]) -> Figure | None:
    """Per round: clients whose updates were aggregated, replies received, and replies dropped, one panel per run."""
    runs = [r for r in runs if any(row["round"] > 0 for row in r.rounds)]
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.8 * len(runs)), squeeze=False)
    width = 0.27
    for ax, run in zip(axes[:, 0], runs, strict=True):
        rows = [r for r in run.rounds if r["round"] > 0]
        x = np.array([r["round"] for r in rows])
        for offset, key, label, color in (
            (-width, "clients", "aggregated", "#4c72b0"),
            (0, "replies", "replies", "#55a868"),
            (width, "dropped_replies", "dropped", "#dd5144"),
        ):
            bars = ax.bar(x + offset, [r.get(key) or 0 for r in rows], width, label=label, color=color)
            ax.bar_label(bars, fontsize=8, padding=1)  # a zero (no dropped replies) shows as "0", not as nothing
        top = max([1] + [r.get(k) or 0 for r in rows for k in ("clients", "replies", "dropped_replies")])
        ax.set_ylim(0, top * 1.5)
        ax.set_xticks(x)
        ax.set(title=f"{run.name}: participation and dropped replies per round", xlabel="round", ylabel="clients")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, ncol=3, loc="upper center", fontsize=9)
    fig.tight_layout()
    return fig


def member_scores(runs: list[Run]) -> Figure | None:
    """Per round: the clients' AUROC on their own kept-back memes, global vs personal model (mean, worst decile,
    worst), with each client's score as a dot; one panel per run that has them (personalization.eval_every)."""
    runs = [r for r in runs if any(row.get("members") for row in r.rounds)]
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.6 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        rows = [r for r in run.rounds if r.get("members")]
        x = np.array([r["round"] for r in rows], dtype=float)
        for which, color, shift in (("global", "#4c72b0", -0.08), ("personal", "#dd8452", 0.08)):
            stats = [r["members"][which] for r in rows]
            for key, style, label in (
                ("mean", "-", "mean"),
                ("worst_decile", "--", "worst decile"),
                ("worst", ":", "worst"),
            ):
                ax.plot(
                    x, [_value(s, key) for s in stats], style, color=color, marker="o", ms=3, label=f"{which} {label}"
                )
            dots = [(xi + shift, c[which]) for xi, r in zip(x, rows, strict=True) for c in r["members"]["by_client"]]
            if dots:
                ax.scatter(*zip(*[(a, b) for a, b in dots if b is not None], strict=True), s=9, color=color, alpha=0.35)
        ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
        ax.set_xticks(x)
        ax.set(
            title=f"{run.name}: each client's AUROC on its own kept-back memes (dots: clients)",
            xlabel="round",
            ylabel="AUROC",
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: dots stay visible
    fig.tight_layout()
    return fig
