"""Facts of a client split: a table for the terminal, clients.json and a bar chart for the run dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import private_files
from fedmemes.data.meme import Meme
from fedmemes.data.skew import SkewFacts

CLIENTS_JSON = "clients.json"
CLIENTS_PNG = "clients.png"


def client_facts(partition_id: int, train: list[Meme], val: list[Meme], skew: SkewFacts) -> dict[str, Any]:
    """Summarise one client's memes: sizes, label counts (after noise), modalities, skew applied."""
    return {
        "partition_id": partition_id,
        "n_train": len(train),
        "n_val": len(val),
        "label_counts": [sum(m.label == 0 for m in train), sum(m.label == 1 for m in train)],
        "n_text": sum(m.has_text for m in train),
        "n_image": sum(m.has_image for m in train),
        "n_both": sum(m.has_text and m.has_image for m in train),
        "modality": skew.modality,
        "label_noise": skew.label_noise,
        "n_flipped": skew.n_flipped,
        "n_dropped": skew.n_dropped,
    }


def format_issues(issues: dict[str, int]) -> str:
    """Return 'none' or 'bad_json=2, missing_image=1' (the per-kind counts)."""
    return ", ".join(f"{k}={n}" for k, n in issues.items()) or "none"


def format_table(facts: list[dict[str, Any]], issues: dict[str, int] | None = None, max_rows: int | None = None) -> str:
    """Return a per-client table (train memes; val = the share each client keeps back); totals cover every client."""
    head = (
        f"{'client':>6} {'train':>6} {'val':>5} {'benign':>7} {'hateful':>7} {'hate%':>6} "
        f"{'text':>6} {'image':>6} {'both':>6}  {'modality':<10} {'noise':>5} {'flipped':>7}"
    )
    lines = [head]
    for f in facts[:max_rows]:
        benign, hateful = f["label_counts"]
        share = 100.0 * hateful / max(1, f["n_train"])
        lines.append(
            f"{f['partition_id']:>6} {f['n_train']:>6} {f['n_val']:>5} {benign:>7} {hateful:>7} {share:>5.1f}% "
            f"{f['n_text']:>6} {f['n_image']:>6} {f['n_both']:>6}  {f['modality']:<10} "
            f"{f['label_noise']:>5.2f} {f['n_flipped']:>7}"
        )
    if max_rows is not None and len(facts) > max_rows:
        lines.append(f"{'...':>6} {len(facts) - max_rows} more clients in {CLIENTS_JSON}")
    total = {k: sum(f[k] for f in facts) for k in ("n_train", "n_val", "n_text", "n_image", "n_both", "n_flipped")}
    benign, hateful = sum(f["label_counts"][0] for f in facts), sum(f["label_counts"][1] for f in facts)
    lines.append(
        f"{'total':>6} {total['n_train']:>6} {total['n_val']:>5} {benign:>7} {hateful:>7} "
        f"{100.0 * hateful / max(1, total['n_train']):>5.1f}% {total['n_text']:>6} {total['n_image']:>6} "
        f"{total['n_both']:>6}  {'':<10} {'':>5} {total['n_flipped']:>7}"
    )
    if issues is not None:
        lines.append(f"data issues: {format_issues(issues)}")
    return "\n".join(lines)


def plot_label_counts(facts: list[dict[str, Any]], path: Path) -> Path:
    """Draw stacked bars of benign/hateful training memes per client into a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in Ray workers
    import matplotlib.pyplot as plt

    ids = [f["partition_id"] for f in facts]
    benign = [f["label_counts"][0] for f in facts]
    hateful = [f["label_counts"][1] for f in facts]
    # Capped width: a thousand clients must not make a 60,000-pixel image.
    fig, ax = plt.subplots(figsize=(min(24.0, max(4.0, 0.6 * len(facts) + 2)), 3.6))
    ax.bar(ids, benign, color="#4c72b0", label="benign (0)")
    ax.bar(ids, hateful, bottom=benign, color="#dd5144", label="hateful (1)")
    short = {"both": "", "text_only": "\ntext only", "image_only": "\nimage only"}
    if len(facts) <= 40:  # beyond that the labels overlap: matplotlib's default ticks
        ax.set_xticks(ids, [f"{i}{short.get(f['modality'], '')}" for i, f in zip(ids, facts, strict=True)])
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training memes")
    ax.set_title("label counts per client")
    ax.set_ylim(0, 1.2 * max([b + h for b, h in zip(benign, hateful, strict=True)] + [1]))  # room for the legend
    ax.legend(frameon=False, ncol=2, loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with private_files.private_open(path, "wb") as f:  # 0600 like every file of a run folder
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)
    return path


def write_report(facts: list[dict[str, Any]], out_dir: Path, issues: dict[str, int] | None = None) -> tuple[Path, Path]:
    """Write `clients.json` and `clients.png` into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / CLIENTS_JSON
    private_files.write_text(json_path, json.dumps({"clients": facts, "data_issues": issues or {}}, indent=2))
    return json_path, plot_label_counts(facts, out_dir / CLIENTS_PNG)


def read_client_facts(run_dir: Path) -> list[dict[str, Any]]:
    """Return the client facts a simulation recorded in `run_dir` (empty if none)."""
    path = Path(run_dir) / CLIENTS_JSON
    return json.loads(path.read_text())["clients"] if path.is_file() else []
