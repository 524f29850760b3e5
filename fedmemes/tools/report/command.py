"""`fedmemes report RUN_DIR [RUN_DIR ...] [--out DIR]`: write report.html and report.md."""

from __future__ import annotations

import argparse

from fedmemes.bookkeeping.run_config import run_folder_problem
from fedmemes.tools.report.render import write_report


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and write the report of the given runs."""
    parser = argparse.ArgumentParser(
        prog="fedmemes report",
        description=(
            "Write report.html (one file, images inline) and report.md (+ report/*.png) for one or more run "
            "directories; several runs are overlaid and their config differences tabled."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each holds metrics.json)")
    parser.add_argument("--out", default=None, help="folder for the report (default: the first RUN_DIR)")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:  # each missing folder named first, before any file in the others is read
        if problem := run_folder_problem(run_dir, need=None):
            parser.error(problem)
    try:
        html_path, md_path = write_report(args.run_dirs, args.out)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"report: {html_path}\n        {md_path} (figures in {md_path.parent / 'report'})")


if __name__ == "__main__":
    main()
