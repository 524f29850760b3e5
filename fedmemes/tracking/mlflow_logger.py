"""`logger=mlflow`: params, per-round metrics and the run's files; a local store under the run dir by default."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import private_files
from fedmemes.tracking.base import Tracker, flatten

log = logging.getLogger(__name__)
RUN_ID_FILE = "mlflow_run_id"  # in the tracker's folder: the MLflow run a resume continues

MAX_PARAM_CHARS = 500  # MLflow refuses longer param values on some backends: the full config goes in as an artifact too


class MlflowLogger(Tracker):
    """Log to MLflow through an explicit client (no global active run: safe beside Flower's threads)."""

    def __init__(
        self,
        run_dir: str | Path,
        tracking_uri: str | None = None,
        folder: str = "tracking",
        experiment: str = "fedmemes",
    ) -> None:
        super().__init__(run_dir)
        # ImportError here without the `tracking` extra: build_trackers names the fix.
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (creating the store's tables) drown our round lines
            logging.getLogger(name).setLevel(logging.WARNING)
        # MLflow's SQLAlchemy store trips SQLAlchemy deprecation warnings that are MLflow's to fix, not the user's.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")

        local = (self.run_dir / folder).resolve()
        artifacts = None
        # a local store beside the run; MLflow 3 refuses plain file stores, SQLite is its local default
        if not tracking_uri:
            local.mkdir(parents=True, exist_ok=True)
            tracking_uri, artifacts = f"sqlite:///{local / 'mlflow.db'}", (local / "mlartifacts").as_uri()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        # Without artifact_location a SQLite store puts artifacts under the *current* directory's ./mlartifacts.
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(experiment, artifact_location=artifacts)
        )
        # a resumed run continues the MLflow run it started: its id is kept in the run folder
        self.id_file = self.run_dir / folder / RUN_ID_FILE
        earlier = self._earlier_run()
        self.resumed = earlier is not None
        if earlier is None:
            earlier = self.client.create_run(
                experiment_id, run_name=self.run_dir.name, tags={"fedmemes.run_dir": str(self.run_dir)}
            ).info.run_id
            self.id_file.parent.mkdir(parents=True, exist_ok=True)
            private_files.write_text(self.id_file, earlier)
        else:
            self.client.update_run(earlier, status="RUNNING")
        self.run_id: str = earlier

    def _earlier_run(self) -> str | None:
        """Return the MLflow run this run folder started, when the store still has it."""
        if not self.id_file.is_file():
            return None
        run_id = self.id_file.read_text(encoding="utf-8").strip()
        try:
            self.client.get_run(run_id)
        except Exception:  # noqa: BLE001  MlflowException: another store (tracking_uri changed), or deleted
            log.warning("MLflow run %s (%s) is not in %s: starting a new one", run_id, self.id_file, self.tracking_uri)
            return None
        return run_id

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow refuses to change a logged param: a resumed run adds only the new ones (e.g. resume=RUN itself)
        known = set(self.client.get_run(self.run_id).data.params) if self.resumed else set()
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(config).items() if k not in known]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_dict(self.run_id, config, "config_resumed.json" if self.resumed else "config.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow metric names allow '/', so 'holdout/auroc' groups the same way as in TensorBoard.
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def resume_after(self, step: int, metrics: Mapping[str, float]) -> None:
        # only the names the killed run did not log at `step`: MLflow keeps every point, a second one stays
        missing = {k: v for k, v in metrics.items() if step not in self._steps(k)}
        if missing:
            self.log_metrics(step, missing)

    def _steps(self, name: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, name)}

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
