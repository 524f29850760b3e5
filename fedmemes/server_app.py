"""Flower ServerApp: build model and strategy from the config, score the hold-out every round."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from omegaconf import DictConfig, OmegaConf

from fedmemes import checkpoint, engine
from fedmemes.config import build_model, build_strategy, load_config, overrides_of
from fedmemes.history import RunHistory
from fedmemes.data.report import read_client_facts
from fedmemes.node_data import data_issues, server_data
from fedmemes.report import save_test_predictions, write_report_safely
from fedmemes.tracking import build_trackers, round_metrics

log = logging.getLogger("fedmemes")
app = ServerApp()

CLIENT_FACTS = ("partition_id", "label_0", "label_1", "val_n", "n_text", "n_image", "n_both")


def run_dir_of(cfg: DictConfig) -> Path:
    """Return the absolute run directory (Flower's processes do not share the caller's cwd)."""
    if cfg.run_dir or cfg.resume:  # resuming continues in the stopped run's own directory
        return Path(cfg.run_dir or cfg.resume).resolve()
    return (Path.cwd() / "outputs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()


class ServerRun:
    """The server's side of one run: hold-out scoring, best-round tracking, client facts."""

    def __init__(self, cfg: DictConfig, overrides: str, run_dir: Path) -> None:
        self.cfg = cfg
        self.device = engine.pick_device(cfg.device)
        torch.manual_seed(cfg.random_seed)  # the initial global model is part of the experiment: seed it
        self.model = build_model(cfg).to(self.device)
        self.val, self.test = server_data(overrides)
        self.history = RunHistory(run_dir)
        self.history.data_issues = data_issues(cfg)
        for facts in read_client_facts(run_dir):  # the split facts `fedmemes simulate` recorded
            self.history.add_client(int(facts["partition_id"]), facts)
        self.best_state = engine.trainable_state(self.model)
        self.started = time.monotonic()
        self.trained = 0
        self.replies: dict[int, dict[str, int]] = {}  # per round: replies, dropped_replies, kept_previous_model
        self.strategy = None  # set once built: its own state (e.g. FedAdam's moments) goes into each checkpoint
        self.offset = 0  # rounds done before a restart: Flower's strategy.start always counts from round 1
        self.trackers = build_trackers(cfg, run_dir)  # logger=csv|tensorboard|mlflow (none: no trackers)
        self.train_metrics: dict[str, float] = {}  # this round's averaged client metrics, for the trackers

    def resume(self, ckpt: checkpoint.Checkpoint) -> dict:
        """Continue after the checkpointed round: history, best model and strategy state come back; return the weights."""
        self.history.restore(ckpt.history)
        self.best_state, self.offset = ckpt.best_state, ckpt.server_round
        checkpoint.restore_strategy(self.strategy, ckpt.strategy)
        log.info("resuming after round %d of %d", self.offset, self.cfg.num_rounds)
        return ckpt.arrays

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Score the global model on the hold-out (the strategy's evaluate_fn), then checkpoint the round."""
        replies = self.replies.pop(server_round, {})  # keyed by the strategy's own round count
        server_round += self.offset
        if self.offset and server_round == self.offset:
            return None  # a resumed run's round 0 is the checkpointed round: scored before the restart
        self.model.load_state_dict(arrays.to_torch_state_dict())
        scores = engine.evaluate(self.model, self.val.dataset(), self.cfg.batch_size, self.device)
        scores.update(clients=self.trained, seconds=round(time.monotonic() - self.started, 1))
        scores.update(replies)
        if self.history.add_round(server_round, scores):
            self.best_state = engine.trainable_state(self.model)
        self.history.write()
        self.trackers.log_metrics(server_round, round_metrics(scores, self.train_metrics))
        if server_round > 0:
            state = {k: v.detach().cpu() for k, v in arrays.to_torch_state_dict().items()}
            checkpoint.save(self.history.run_dir, checkpoint.Checkpoint(
                server_round, state, self.history.state(), self.best_state, checkpoint.strategy_state(self.strategy)))
        log.info(
            "round %d/%d | clients %d | hold-out AUROC %.3f  acc %.3f  loss %.3f | %.0fs",
            server_round, self.cfg.num_rounds, self.trained, scores["auroc"], scores["accuracy"], scores["loss"], scores["seconds"],
        )
        return MetricRecord({k: float(v) for k, v in scores.items()})

    def aggregate_train_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Remember what clients said about their data, then average their train metrics."""
        self.trained = len(records)
        for record in records:
            metrics = next(iter(record.metric_records.values()))
            if "partition_id" in metrics:
                self.history.add_client(
                    int(metrics["partition_id"]),
                    {"n_train": int(metrics[weighting_key]), "label_counts": [int(metrics.get("label_0", 0)), int(metrics.get("label_1", 0))]},
                )
        averaged = aggregate_metricrecords(records, weighting_key)
        self.train_metrics = {k: v for k, v in averaged.items() if k not in CLIENT_FACTS}
        return MetricRecord(self.train_metrics)

    def finish(self, final: ArrayRecord) -> None:
        """Save best and final models, score the best round's model on the test split."""
        self.history.save_model("final", engine.trainable_state(self._load(final.to_torch_state_dict())))
        self.history.save_model("best", self.best_state)
        prob, label, loss = engine.predict(self._load(self.best_state), self.test.dataset(), self.cfg.batch_size, self.device)
        self.history.test = engine.classification_metrics(prob, label, loss)
        save_test_predictions(self.history.run_dir, prob, label)  # the report's ROC/PR curves and confusion matrix
        self.history.write()
        write_report_safely(self.history.run_dir)
        self.trackers.finish(max((r["round"] for r in self.history.rounds), default=0), self.history.test)
        log.info("best round %s | test AUROC %.3f on %d memes", self.history.best_round, self.history.test["auroc"], self.history.test["n"])

    def _load(self, state):
        self.model.load_state_dict(state)
        return self.model


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num_rounds` rounds of the configured strategy with server-side hold-out scoring."""
    overrides = overrides_of(context.run_config)
    cfg = load_config(overrides)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    log.info("Using device: %s | run dir %s", engine.pick_device(cfg.device).type, run_dir)
    run = ServerRun(cfg, overrides, run_dir)
    run.strategy = strategy = build_strategy(
        cfg,
        train_metrics_aggr_fn=run.aggregate_train_metrics,
        branches=run.model.branches(),  # modality_aware: the model declares each tensor's block
        reply_report_fn=run.replies.__setitem__,  # dropped-reply counts land in the round's metrics.json row
    )
    initial = run.resume(checkpoint.load(run_dir)) if cfg.resume else engine.trainable_state(run.model)
    if cfg.num_rounds <= run.offset:  # resumed after the last round: only the final scoring was left
        run.finish(ArrayRecord(initial))
        return
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=cfg.num_rounds - run.offset,
        timeout=float(cfg.server.round_timeout),  # a dead client's reply is waited for at most this long
        # round_offset: after a resume, clients seed by the true round, not the strategy's restarted count
        train_config=ConfigRecord({"lr": float(cfg.lr), "num_epochs": int(cfg.num_epochs), "round_offset": run.offset}),
        evaluate_fn=run.evaluate,
    )
    run.finish(result.arrays)
