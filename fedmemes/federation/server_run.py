"""The server's side of one run: hold-out scoring every round, the best round, patience, checkpoints, test scores."""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from omegaconf import DictConfig
from torch import nn

from fedmemes.bookkeeping import checkpoint
from fedmemes.bookkeeping.history import RunHistory
from fedmemes.bookkeeping.run_steps import EXIT_NOTHING_AGGREGATED
from fedmemes.config import build_model
from fedmemes.data.report import read_client_facts
from fedmemes.federation import engine
from fedmemes.federation.node_datasets import data_issues, server_data
from fedmemes.federation.personalization import member_spread
from fedmemes.privacy import server_dp
from fedmemes.privacy.secagg import CLIENTS_KEY
from fedmemes.tools.report import save_test_predictions, write_report_safely
from fedmemes.tracking import build_trackers, numbers, round_metrics

log = logging.getLogger(__name__)

CLIENT_FACTS = (
    "partition_id",
    "label_0",
    "label_1",
    "val_n",
    "n_text",
    "n_image",
    "n_both",
    "global_auroc",
    "personal_auroc",
)


class EarlyStop(Exception):
    """Raised from the hold-out scoring when `server.patience` rounds passed without a better AUROC."""

    # Flower's strategy.start has no stop hook: the exception leaves its loop, main() catches it.


class ServerRun:
    """The server's side of one run: hold-out scoring, best-round tracking, client facts."""

    def __init__(self, cfg: DictConfig, overrides: str, run_dir: Path) -> None:
        self.cfg = cfg
        self.device = engine.pick_device(cfg.device)
        self.amp = engine.autocast_dtype(cfg.get("amp", "auto"), self.device)  # hold-out scoring under autocast too
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
        self.replies: dict[
            int, dict[str, Any]
        ] = {}  # per round: replies, dropped_replies, kept_previous_model, sampled node ids
        self.partitions: list[int] = []  # the partitions whose replies were aggregated in the latest round
        self.strategy: Any = None  # set once built: its own state (e.g. FedAdam's moments) goes into each checkpoint
        self.offset = 0  # rounds done before a restart: Flower's strategy.start always counts from round 1
        self.trackers = build_trackers(cfg, run_dir)  # logger=csv|tensorboard|mlflow (none: no trackers)
        self.train_metrics: dict[str, float] = {}  # this round's averaged client metrics, for the trackers
        self.latest = self.best_state  # the latest round's global model (set each round by evaluate)
        # this round's per-member AUROCs on the clients' kept-back memes, by node: (partition, global, personal)
        self.members: dict[int, tuple[Any, float, float]] = {}
        # the run's id for client-side files (fedmemes/bookkeeping/client_state.py): kept across resumes, unlike
        # Flower's run_id
        self.run_key = secrets.token_hex(8)

    def resume(self, ckpt: checkpoint.Checkpoint) -> dict[str, Any]:
        """Continue after the checkpointed round: history, best model and strategy state come back; return the
        weights."""
        self.history.restore(ckpt.history)
        self.best_state, self.offset = ckpt.best_state, ckpt.server_round
        self.run_key = str(ckpt.setup.get("run_key") or self.run_key)  # older checkpoints: clients start afresh
        checkpoint.restore_strategy(self.strategy, ckpt.strategy)
        # killed between that round's checkpoint and its log: the trackers get the round they missed
        self.trackers.resume_after(self.offset, ckpt.setup.get("tracked") or {})
        log.info("resuming after round %d of %d", self.offset, self.cfg.num_rounds)
        return ckpt.arrays

    def record(self, server_round: int, facts: dict[str, Any]) -> None:
        """Add facts (reply counts, sampled node ids) to a round's metrics.json row."""
        self.replies.setdefault(server_round, {}).update(facts)

    def scored(self, server_round: int) -> bool:
        """Whether this round scores the hold-out: round 0, every server.eval_every-th round, and the last."""
        every = max(1, int(self.cfg.server.get("eval_every", 1) or 1))
        return server_round == 0 or server_round % every == 0 or server_round >= self.cfg.num_rounds

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Score the global model on the hold-out (the strategy's evaluate_fn), then checkpoint the round."""
        replies = self.replies.pop(server_round, {})  # keyed by the strategy's own round count
        server_round += self.offset
        if self.offset and server_round == self.offset:
            return None  # a resumed run's round 0 is the checkpointed round: scored before the restart
        self.model.load_state_dict(arrays.to_torch_state_dict())
        scored = self.scored(server_round)
        scores: dict[str, Any] = (
            engine.evaluate(self.model, self.val.dataset(), self.cfg.batch_size, self.device, self.amp)
            if scored
            else {}
        )
        scores.update(clients=self.trained, seconds=round(time.monotonic() - self.started, 1))
        scores.update(replies)
        if self.members:
            scores["members"] = member_spread(self.members)
            self.members = {}
        if server_round > 0:
            scores["partitions"] = list(self.partitions)
            scores.update(server_dp.spent(self.strategy))  # strategy=dp_fixed: Flower's accountant, after this round
        if self.history.add_round(server_round, scores):
            self.best_state = engine.trainable_state(self.model)
        self.history.write()
        tracked = numbers(round_metrics(scores, self.train_metrics))
        # the latest round's global model: the checkpoint's, and final.safetensors after an early stop
        self.latest = {k: v.detach().cpu() for k, v in arrays.to_torch_state_dict().items()}
        if server_round > 0:  # tracked: what the trackers log next, again after a resume if a kill came in between
            checkpoint.save(
                self.history.run_dir,
                checkpoint.Checkpoint(
                    server_round,
                    self.latest,
                    self.history.state(),
                    self.best_state,
                    checkpoint.strategy_state(self.strategy),
                    {**checkpoint.setup_of(self.cfg), "run_key": self.run_key, "tracked": tracked},
                ),
            )
        # logged after the checkpoint: a resume (after the checkpointed round) never trains a logged round again, so
        # no tracker gets a second point for it (MLflow cannot delete one)
        self.trackers.log_metrics(server_round, tracked)
        if scored and self.patience_spent(server_round):  # an unscored round (server.eval_every) decides nothing
            log.info(
                "round %d/%d | hold-out AUROC %.3f | no better hold-out AUROC than round %s for %d rounds "
                "(server.patience): stopping, the best round's model is kept",
                server_round,
                self.cfg.num_rounds,
                scores["auroc"],
                self.history.best_round,
                server_round - (self.history.best_round or 0),
            )
            self.history.stopped_early = server_round
            self.history.write()
            raise EarlyStop
        if replies.get("kept_previous_model"):
            log.warning(
                "round %d/%d | no reply aggregated (%d of %d dropped): the global model is unchanged%s",
                server_round,
                self.cfg.num_rounds,
                replies.get("dropped_replies", 0),
                replies.get("replies", 0),
                "".join(f"\n  {why}" for why in replies.get("dropped", [])[:5]),
            )
        if not scored:
            log.info(
                "round %d/%d | clients %d | hold-out not scored (server.eval_every) | %.0fs%s",
                server_round,
                self.cfg.num_rounds,
                self.trained,
                scores["seconds"],
                server_dp.note(scores),
            )
            return None
        log.info(
            "round %d/%d | clients %d | hold-out AUROC %.3f  acc %.3f  loss %.3f | %.0fs%s",
            server_round,
            self.cfg.num_rounds,
            self.trained,
            scores["auroc"],
            scores["accuracy"],
            scores["loss"],
            scores["seconds"],
            server_dp.note(scores),
        )
        return MetricRecord({k: float(v) for k, v in scores.items() if not isinstance(v, (list, dict))})

    def patience_spent(self, server_round: int) -> bool:
        """Whether `server.patience` rounds have passed since the best hold-out round (never before the last)."""
        patience = self.cfg.server.get("patience")
        best = self.history.best_round
        return (
            bool(patience)
            and best is not None
            and server_round - best >= patience
            and server_round < self.cfg.num_rounds
        )

    def record_node(self, node_id: int, metrics: dict[str, Any]) -> None:
        """Remember what a node said about its data and its site policy, under the id Flower gave it (its
        partition_id is only its claim)."""
        facts: dict[str, Any] = {
            k: metrics[k]
            for k in ("partition_id", "n_text", "n_image", "n_both", "val_n", "site", "policy_sha256")
            if k in metrics
        }
        facts["n_train"] = metrics.get("num-examples")
        if "personal_auroc" in metrics:  # personalization.eval_every, where the site shares it (member_auroc)
            self.members[int(node_id)] = (
                metrics.get("partition_id"),
                metrics["global_auroc"],
                metrics["personal_auroc"],
            )
        if "label_0" in metrics:  # only where the site's policy shares label counts
            facts["label_counts"] = [metrics["label_0"], metrics.get("label_1", 0)]
        earlier = self.history.nodes.get(int(node_id), {}).get("policy_sha256")
        if "policy_sha256" in facts and facts["policy_sha256"] != earlier:
            log.info("node %d is site %r, site policy sha256 %s", node_id, facts.get("site"), facts["policy_sha256"])
        self.history.add_node(node_id, facts)

    def aggregate_train_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Average the clients' train metrics (their data facts arrive per node through record_node)."""
        # a secure aggregate (server.secagg) is one reply holding secagg_clients clients' sum
        self.trained = sum(int(cast(int, next(iter(r.metric_records.values())).get(CLIENTS_KEY, 1))) for r in records)
        self.partitions = sorted(
            int(cast(int, m["partition_id"]))
            for r in records
            if "partition_id" in (m := next(iter(r.metric_records.values())))
        )
        averaged = aggregate_metricrecords(records, weighting_key)
        # Clients send scalar metrics only (the reply checks require it), so every average is a float.
        self.train_metrics = {k: cast(float, v) for k, v in averaged.items() if k not in (*CLIENT_FACTS, CLIENTS_KEY)}
        return MetricRecord(self.train_metrics)  # type: ignore[arg-type]  # flwr types it as an invariant dict; float values fit

    def finish(self, final: ArrayRecord) -> None:
        """Save best and final models, score the best round's model on the test split."""
        self._check_anything_aggregated()
        self.history.save_model("final", engine.trainable_state(self._load(final.to_torch_state_dict())))
        self.history.save_model("best", self.best_state)
        best = self._load(self.best_state)
        # The decision threshold is picked on the hold-out (dev) split, never on test: max macro-F1 there,
        # pulled toward the rate-matching threshold by the dev split's size (server.threshold_prior).
        dev_prob, dev_label = engine.predict(best, self.val.dataset(), self.cfg.batch_size, self.device, self.amp)[:2]
        picked = engine.pick_threshold(dev_prob, dev_label)
        prior = float(self.cfg.server.get("threshold_prior") or 0)
        threshold = engine.shrunk_threshold(picked, engine.rate_threshold(dev_prob, dev_label), len(self.val), prior)
        prob, label, loss = engine.predict(best, self.test.dataset(), self.cfg.batch_size, self.device, self.amp)
        self.history.test = engine.threshold_metrics(prob, label, loss, threshold)
        at_pick = engine.metrics_at(prob, label, picked)  # reported beside, so the shrink's effect shows
        self.history.test.update(
            threshold_dev=picked,
            accuracy_at_dev_threshold=at_pick["accuracy"],
            f1_macro_at_dev_threshold=at_pick["f1_macro"],
        )
        save_test_predictions(self.history.run_dir, prob, label)  # the report's ROC/PR curves and confusion matrix
        self.history.write()
        write_report_safely(self.history.run_dir)
        self.trackers.finish(max((r["round"] for r in self.history.rounds), default=0), self.history.test)
        log.info(
            "best round %s | test AUROC %.3f on %d memes",
            self.history.best_round,
            self.history.test["auroc"],
            self.history.test["n"],
        )

    def _check_anything_aggregated(self) -> None:
        """Mark the run ended (exit 4) when no round aggregated a single reply: its model is the initial one."""
        trained = [r for r in self.history.rounds if r["round"] > 0]
        if not trained or any(not r.get("kept_previous_model", 0) for r in trained):
            return
        reasons = Counter(why.split(": ", 1)[-1] for r in trained for why in r.get("dropped", []))
        said = "; ".join(f"{why} (x{n})" for why, n in reasons.most_common(3)) or "no client replied"
        self.history.ended = {
            "code": EXIT_NOTHING_AGGREGATED,
            "reason": f"no client reply was aggregated in any of {len(trained)} rounds: the model is the untrained "
            f"one. The clients said: {said}",
        }
        log.error("%s", self.history.ended["reason"])

    def _load(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        self.model.load_state_dict(state)
        return self.model
