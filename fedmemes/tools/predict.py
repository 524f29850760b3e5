"""Score new memes with a finished run's model, rebuilt from RUN_DIR/config.yaml and its saved tensors."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from safetensors.torch import load_file

from fedmemes.bookkeeping import run_config
from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.config import build_model
from fedmemes.data.features import build_tensors
from fedmemes.data.meme import DataIssue, Meme
from fedmemes.data.rows import ON_ERROR
from fedmemes.federation import engine
from fedmemes.tools.predict_inputs import Inputs, read_input, run_split, single

MODELS = ("best", "final")
CHUNK = 256  # memes turned into tensors and scored at a time: bounded memory, a progress bar that moves


@dataclass
class RunModel:
    """A run's model, ready to score: the same encoders, image size and caption handling as in training."""

    run_dir: Path
    cfg: DictConfig
    model: torch.nn.Module
    encoder: Any
    which: str
    threshold: float
    metrics: dict[str, Any]
    device: torch.device

    def score(self, memes: list[Meme], cache_dir: str | Path | None = None, progress: bool = False) -> np.ndarray:
        """Return P(hateful) per meme; tensors come from the training data path (build_tensors)."""
        cache = Path(cache_dir) if cache_dir else Path(os.environ.get("FEDMEMES_CACHE") or self.cfg.cache_dir)
        probs = []
        with _bar(len(memes), progress, "scoring memes") as bar:
            for start in range(0, len(memes), CHUNK):
                chunk = memes[start : start + CHUNK]
                tensors = build_tensors(chunk, self.encoder, self.cfg.image_size, cache)
                probs.append(engine.predict(self.model, tensors.dataset(), int(self.cfg.batch_size), self.device)[0])
                bar.update(len(chunk))
        return np.concatenate(probs) if probs else np.zeros(0)

    def score_uncached(self, memes: list[Meme]) -> np.ndarray:
        """Score without leaving feature files behind (the service: every request is new)."""
        with tempfile.TemporaryDirectory(prefix="fedmemes-serve-") as tmp:
            return self.score(memes, cache_dir=tmp)


def _bar(total: int, progress: bool, desc: str) -> Any:
    """Return a tqdm bar on stderr, silent when it is not a terminal (logs, pipes, CI)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="meme", file=sys.stderr, disable=not (progress and sys.stderr.isatty()))


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> RunModel:
    """Rebuild the run's model from config.yaml and `<which>.safetensors`; take the hold-out threshold from
    metrics.json."""
    run_dir = Path(run_dir).expanduser().resolve()
    if which not in MODELS:
        raise ValueError(f"--model must be one of {MODELS}, got {which!r}")
    config, weights = run_dir / "config.yaml", run_dir / f"{which}.safetensors"
    if not config.is_file():
        raise FileNotFoundError(
            f"{config} not found: RUN_DIR must be a run directory (outputs/<date>/<time>); `fedmemes runs` lists them"
        )
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} not found: the run did not finish (`fedmemes runs` shows its status; "
            f"resume it with `fedmemes simulate resume={run_dir}`)"
        )
    cfg = run_config.load(run_dir)  # a run folder is data: RunConfigError names a key that could run code
    torch.manual_seed(int(cfg.random_seed))  # the constructor draws weights; every trainable one is then overwritten
    model = build_model(cfg)
    model.load_state_dict(load_file(weights))
    dev = engine.pick_device(device)
    model.to(dev).eval()
    metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).is_file() else {}
    threshold = (metrics.get("test") or {}).get("threshold")
    return RunModel(
        run_dir,
        cfg,
        model,
        instantiate(cfg.model.text_encoder),
        which,
        float(threshold) if threshold is not None else 0.5,
        metrics,
        dev,
    )


def summarise(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC on probabilities; accuracy and macro-F1 at the threshold and at 0.5."""
    return engine.threshold_metrics(prob, label, math.nan, threshold)


def write_predictions(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write rows as JSONL (.jsonl/.json) or CSV (.csv), chosen by the extension."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        import csv

        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["id", "p_hateful", "pred"]
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    elif out.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(f"--out {out}: the extension picks the format; use .jsonl or .csv")
    return out


def predict(
    run: RunModel, inputs: Inputs, threshold: float | None = None, progress: bool = True
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Score the inputs; return the output rows and, per split with labels, AUROC/accuracy/F1."""
    t = run.threshold if threshold is None else threshold
    prob = run.score(inputs.memes, progress=progress)
    rows: list[dict[str, Any]] = []
    several = len(set(inputs.split)) > 1
    ocr = any(m.text_source != "given" for m in inputs.memes)  # dataset.ocr read some captions: say which
    for meme, p, labelled, split in zip(inputs.memes, prob, inputs.labelled, inputs.split, strict=True):
        row: dict[str, Any] = {"id": meme.id, "p_hateful": round(float(p), 6), "pred": int(p > t)}
        if ocr:
            row["text_source"] = meme.text_source
        if any(inputs.labelled):
            row["label"] = meme.label if labelled else None
        if several:
            row["split"] = split
        rows.append(row)
    scores = {}
    for split in dict.fromkeys(inputs.split):
        keep = np.array([s == split and lab for s, lab in zip(inputs.split, inputs.labelled, strict=True)], dtype=bool)
        if keep.any():
            label = np.array([m.label for m in inputs.memes])[keep]
            scores[split] = summarise(prob[keep], label, t)
    return rows, scores


def _report_issues(issues: list[DataIssue]) -> None:
    """Print skipped rows as file:line: kind: detail (as training reports them), to stderr."""
    if not issues:
        return
    from fedmemes.data.meme import count_kinds

    print(
        f"{len(issues)} data issue(s); these rows were skipped (or kept with a modality marked missing), never "
        "scored as 0:",
        file=sys.stderr,
    )
    for issue in issues[:20]:
        print(f"  {issue}", file=sys.stderr)
    if len(issues) > 20:
        print(f"  ... and {len(issues) - 20} more", file=sys.stderr)
    print("issues per kind: " + ", ".join(f"{k}={n}" for k, n in count_kinds(issues).items()), file=sys.stderr)


def format_scores(split: str, s: dict[str, float]) -> str:
    """One line of scores: AUROC, then accuracy/F1 at the threshold and at 0.5."""
    auroc = "n/a (one class)" if s["auroc"] != s["auroc"] else f"{s['auroc']:.4f}"
    return (
        f"{split}: n={s['n']}  AUROC {auroc}  |  threshold {s['threshold']:.3f}: accuracy {s['accuracy']:.3f}  "
        f"F1 {s['f1_macro']:.3f}  |  at 0.5: accuracy {s['accuracy_at_0.5']:.3f}  F1 {s['f1_macro_at_0.5']:.3f}"
    )


def _input_problem(args: argparse.Namespace) -> str | None:
    """Say what is wrong with what `fedmemes predict` was given to score, or None when it is one usable thing."""
    given = [
        what
        for what, on in (
            (f"INPUT {args.input}", args.input is not None),
            ("--text/--image", args.text is not None or args.image is not None),
            (f"--run-split {args.run_split}", args.run_split is not None),
        )
        if on
    ]
    if not given:
        return (
            "nothing to score: give INPUT (a jsonl or a folder of them), --text TEXT --image PATH, "
            "or --run-split test|dev"
        )
    if len(given) > 1:
        return f"give one thing to score, not {' and '.join(given)}"
    if args.text is not None and args.image is None:
        return "--text needs --image PATH too: one meme is a caption and its picture"
    if args.image is not None and args.text is None:
        return "--image needs --text TEXT too: one meme is a caption and its picture"
    if args.text is not None and not args.text.strip():
        return "--text is empty: give the meme's caption"
    if args.image is not None and not Path(args.image).expanduser().is_file():
        return f"--image {args.image}: no such file"
    if args.input is not None and not Path(args.input).expanduser().exists():
        return f"INPUT {args.input}: no such file or folder (a jsonl in the original layout, or a folder of them)"
    return None


def main(argv: list[str] | None = None) -> None:
    """`fedmemes predict RUN_DIR INPUT [--out FILE] [--model best|final] [--threshold T]`."""
    p = argparse.ArgumentParser(prog="fedmemes predict", description="Score memes with a finished run's model.")
    p.add_argument("run_dir", help="a run directory (config.yaml + best/final.safetensors)")
    p.add_argument(
        "input", nargs="?", help="a jsonl in the original layout (images relative to its folder) or such a folder"
    )
    p.add_argument("--text", help="one meme's caption (with --image)")
    p.add_argument("--image", help="one meme's image file (with --text)")
    p.add_argument(
        "--run-split", choices=("test", "dev"), help="score the run's own hold-out split exactly as the server held it"
    )
    p.add_argument("--out", help="output file: .jsonl or .csv (default predictions-<input>.jsonl; one meme: printed)")
    p.add_argument(
        "--model", choices=MODELS, default="best", help="the best round's model (default) or the last round's"
    )
    p.add_argument(
        "--threshold", type=float, help="P(hateful) above which pred=1 (default: the run's hold-out threshold)"
    )
    p.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="skip",
        help="bad rows: skip and report (default), keep_text/keep_image, or raise",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    if problem := run_config.run_folder_problem(args.run_dir) or _input_problem(args):
        p.error(problem)  # the run folder first: a mistyped path is the likeliest mistake
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".jsonl", ".json", ".ndjson"):
        p.error(f"--out {args.out}: the extension picks the format; use .jsonl or .csv")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold must be in [0, 1], got {args.threshold}")
    try:
        run = load_run(args.run_dir, args.model, args.device)
        t = run.threshold if args.threshold is None else args.threshold
        source = (
            "--threshold"
            if args.threshold is not None
            else (
                "picked on the hold-out (dev) split, metrics.json"
                if "threshold" in (run.metrics.get("test") or {})
                else "0.5: this run's metrics.json has no hold-out threshold"
            )
        )
        print(f"model: {run.run_dir / (run.which + '.safetensors')}  threshold {t:.3f} ({source})", flush=True)
        if args.input is not None:
            inputs, name = read_input(args.input, args.on_error), Path(args.input).stem
        elif args.run_split:
            inputs, name = run_split(run.cfg, args.run_split), args.run_split
        else:
            inputs, name = single(args.text, args.image), ""
        _report_issues(inputs.issues)
        if not inputs.memes:
            raise ValueError("no usable meme left to score; fix the rows above")
        rows, scores = predict(run, inputs, args.threshold)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # DataError and state mismatches name the fix
        raise SystemExit(f"error: {e}") from None
    if not name and not args.out:
        print(json.dumps(rows[0]))
        return
    out = write_predictions(rows, Path(args.out or f"predictions-{name}.jsonl"))
    print(f"{len(rows)} memes scored -> {out}" + (f"; {len(inputs.issues)} issue(s) above" if inputs.issues else ""))
    for split, s in scores.items():
        print(format_scores(split, s))


if __name__ == "__main__":
    main()
