"""`fedmemes report`: hold-out curves, test ROC/PR and confusion, client bars, participation, configs of one or more
runs."""

from typing import Any

from fedmemes.tools.report.runs import PREDICTIONS_FILE, load_run, save_test_predictions

__all__ = ["PREDICTIONS_FILE", "load_run", "save_test_predictions", "write_report", "write_report_safely"]


def __getattr__(name: str) -> Any:
    # matplotlib loads only when a report is drawn: the ServerApp imports this package for save_test_predictions.
    if name in ("write_report", "write_report_safely"):
        from fedmemes.tools.report import render

        return getattr(render, name)
    raise AttributeError(name)
