"""Assemble the report: PNGs under <out>/report/, report.md linking them, report.html with them inline."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml
from matplotlib.figure import Figure

from fedmemes.bookkeeping import private_files
from fedmemes.tools.report import plots
from fedmemes.tools.report.runs import Run, config_differences, load_run, run_names

log = logging.getLogger(__name__)
FIGURE_DIR = "report"
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:8px 0}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto;max-height:480px}.note{color:#666;font-size:13px}"""


@dataclass
class Section:
    """A heading, an optional note, figures (file name, PNG bytes) and tables (header, rows)."""

    title: str
    note: str = ""
    figures: list[tuple[str, bytes]] | None = None
    tables: list[tuple[list[str], list[list[Any]]]] | None = None
    code: list[tuple[str, str]] | None = None  # (summary, text)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _summary_rows(runs: list[Run]) -> list[list[Any]]:
    rows = []
    for run in runs:
        best = next((r for r in run.rounds if r["round"] == run.metrics.get("best_round")), {})
        test = run.metrics.get("test") or {}
        rows.append(
            [
                run.name,
                str(run.path),
                max((r["round"] for r in run.rounds), default=None),
                run.metrics.get("best_round"),
                best.get("auroc"),
                test.get("auroc"),
                test.get("accuracy"),
                test.get("f1_macro"),
                test.get("n"),
                sum(r.get("dropped_replies") or 0 for r in run.rounds),
            ]
        )
    return rows


def _recipe_section(runs: list[Run]) -> Section:
    """Each candidate recipe's trial (server.recipes): hold-out AUROC per round, and the one chosen."""
    rows = []
    for run in runs:
        record = run.metrics["recipes"]
        for name, trial in record["candidates"].items():
            curve = " ".join(_fmt(a) for a in trial["holdout_auroc"])
            chosen = "chosen" if name == record["chosen"] else ""
            rows.append([run.name, name, trial["overrides"], curve, trial["best"], chosen])
    stops = [
        f"{run.name} stopped after round {run.metrics['stopped_early']}"
        for run in runs
        if run.metrics.get("stopped_early")
    ]
    return Section(
        "Recipe search on the hold-out",
        tables=[(["run", "recipe", "overrides", "hold-out AUROC per trial round", "best", ""], rows)],
        note="Each recipe trained from the same seeded model, scored on the hold-out only; the run went on from the "
        "chosen one's trial. " + ("; ".join(stops) + " (server.patience)." if stops else ""),
    )


def _sections(runs: list[Run]) -> list[Section]:
    first = runs[0]
    model = first.config.get("model", {}).get("_target_", "?").rsplit(".", 1)[-1] if first.config else "?"
    sections = [
        Section(
            "Summary",
            tables=[
                (
                    [
                        "run",
                        "directory",
                        "rounds",
                        "best round",
                        "best hold-out AUROC",
                        "test AUROC",
                        "test accuracy",
                        "test F1 (macro)",
                        "test memes",
                        "dropped replies",
                    ],
                    _summary_rows(runs),
                )
            ],
            note="Test scores are the best hold-out round's model; accuracy and F1 at the run's threshold."
            if len(runs) > 1
            else f"model {model}; test scores are the best hold-out round's model.",
        )
    ]
    sections.append(
        Section("Hold-out AUROC and loss per round", figures=[("holdout.png", _png(plots.holdout_curves(runs)))])
    )
    if searched := [run for run in runs if run.metrics.get("recipes")]:
        sections.append(_recipe_section(searched))
    test_figs = [
        (name, _png(fig))
        for name, fig in (
            ("test_curves.png", plots.test_curves(runs)),
            ("confusion.png", plots.confusion_matrices(runs)),
        )
        if fig is not None
    ]
    sections.append(
        Section(
            "Test: ROC, precision-recall, confusion matrix",
            figures=test_figs,
            note="" if test_figs else "No run saved test_predictions.csv (runs made before fedmemes saved it).",
        )
    )
    client_figs = [
        (f"clients_{i}.png", _png(fig)) for i, run in enumerate(runs) if (fig := plots.client_bars(run)) is not None
    ]
    sections.append(
        Section(
            "Clients: labels and modalities",
            figures=client_figs,
            note="" if client_figs else "metrics.json has no per-client facts.",
        )
    )
    fig = plots.participation(runs)
    sections.append(
        Section(
            "Participation and dropped replies per round",
            figures=[("participation.png", _png(fig))] if fig else [],
            note="aggregated: clients whose update went into the model; dropped: replies refused by the checks.",
        )
    )
    if (members := plots.member_scores(runs)) is not None:  # personalization.eval_every: per-member AUROC
        sections.append(
            Section(
                "Per member: global vs personal model on each client's kept-back memes",
                figures=[("members.png", _png(members))],
                note="AUROC on each client's own kept-back share; worst decile: the 10th percentile over clients.",
            )
        )
    diffs = config_differences(runs) if len(runs) > 1 else []
    tables = [(["config key", *[r.name for r in runs]], [[k, *values] for k, values in diffs])] if diffs else []
    note = (
        ("Keys whose values differ between the runs." if diffs else "The runs' configs are the same.")
        if len(runs) > 1
        else ""
    )
    sections.append(
        Section(
            "Config",
            note=note,
            tables=tables,
            code=[(f"{r.name}: config.yaml", yaml.safe_dump(r.config, sort_keys=False)) for r in runs],
        )
    )
    return sections


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if isinstance(v, (int, float)) else ""}">{html.escape(_fmt(v))}</td>' for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _render(title: str, sections: list[Section]) -> tuple[str, str]:
    parts = [
        "<!doctype html><html><head><meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    md = [f"# {title}", ""]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        if s.note:
            parts.append(f"<p class='note'>{html.escape(s.note)}</p>")
            md += [s.note, ""]
        for header, rows in s.tables or []:
            parts.append(_html_table(header, rows))
            md += [_md_table(header, rows), ""]
        for name, png in s.figures or []:
            parts.append(f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
            md += [f"![{name}]({FIGURE_DIR}/{name})", ""]
        for summary, text in s.code or []:
            parts.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
            md += [f"<details><summary>{summary}</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>", ""]
    parts.append("</body></html>")
    return "\n".join(parts), "\n".join(md)


def write_report(run_dirs: list[Path | str], out: Path | str | None = None) -> tuple[Path, Path]:
    """Write report.html (images inline) and report.md (+ report/*.png) for one or more runs; return both paths."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("fedmemes report: give at least one RUN_DIR")
    runs = [load_run(p, name) for p, name in zip(paths, run_names(paths), strict=True)]
    out = Path(out).expanduser().resolve() if out else runs[0].path
    sections = _sections(runs)
    title = f"fedmemes report: {runs[0].name}" if len(runs) == 1 else f"fedmemes report: {len(runs)} runs"
    figure_dir = out / FIGURE_DIR
    figure_dir.mkdir(parents=True, exist_ok=True)
    # In a run folder the report is 0600 like every run file (it quotes config.yaml and metrics.json); --out DIR
    # elsewhere is a report made to be shared: written with the usual mode (the umask's).
    private = any(out == r.path for r in runs)
    for s in sections:
        for name, png in s.figures or []:
            _write(figure_dir / name, png, private)
    page, markdown = _render(title, sections)
    _write(out / "report.html", page.encode("utf-8"), private)
    _write(out / "report.md", markdown.encode("utf-8"), private)
    return out / "report.html", out / "report.md"


def _write(path: Path, data: bytes, private: bool) -> None:
    if private:
        private_files.write_bytes(path, data)
    else:
        path.write_bytes(data)


def write_report_safely(run_dir: Path) -> Path | None:
    """Write a finished run's report; log, never raise, when that fails (the run itself succeeded)."""
    try:
        html_path, _ = write_report([run_dir])
    except Exception as err:  # noqa: BLE001  a report bug must not turn a finished federation into a failed one
        log.warning("report not written (%s: %s); retry with: fedmemes report %s", type(err).__name__, err, run_dir)
        return None
    log.info("report: %s (and report.md)", html_path)
    return html_path
