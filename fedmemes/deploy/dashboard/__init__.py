"""The live dashboard: a static page on the status API (`/`) that polls `/status`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse

FILES = resources.files(__name__)


def _summary(run_dir: Path) -> dict[str, Any]:
    """Return the run's headline choices from config.yaml: names only, no paths or hosts."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}

    def name(key: str) -> str | None:
        target = (
            (cfg.get(key) or {}).get("_target_")
            if key != "strategy"
            else ((cfg.get("server") or {}).get("strategy") or {}).get("_target_")
        )
        return target.rsplit(".", 1)[-1] if isinstance(target, str) else None

    return {
        "num_rounds": cfg.get("num_rounds"),
        "num_clients": cfg.get("num_clients"),
        "model": name("model"),
        "strategy": name("strategy"),
        "partition": name("partition"),
    }


def mount(api: FastAPI, run_dir: Path) -> None:
    """Serve the page at `/`, its script at `/dashboard.js`, and the run's headline choices at `/dashboard/run`."""

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(FILES.joinpath("index.html").read_text())

    @api.get("/dashboard.js", include_in_schema=False)
    def script() -> FileResponse:
        with resources.as_file(FILES.joinpath("dashboard.js")) as path:
            return FileResponse(path, media_type="text/javascript")

    @api.get("/dashboard/run")
    def run_summary() -> dict[str, Any]:
        return _summary(run_dir)
