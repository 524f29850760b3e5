"""Secure aggregation (SecAgg+) for the Message-API strategies: a Grid that hands the strategy only the unmasked sum.

Flower 1.42's `SecAggPlusWorkflow` runs only under the legacy `LegacyContext`; its port to the Message API is an open
pull request (#4615). `SecAggGrid` reuses the workflow's four stage methods unchanged and feeds them a minimal
stand-in for the legacy pieces they read (the round number, two strategy hooks, a client count). The strategy's
`grid.send_and_receive(train messages)` becomes the whole protocol; its reply is ONE message holding the weighted
average of the surviving clients' arrays, their total num-examples and their averaged metrics. No cryptography is
written here: Flower's stages and `secaggplus_mod` on the clients (fedmemes/privacy/client_secagg.py) do it all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message  # public: Flower's own Grids build stamped messages with it
from flwr.app.message_type import MessageType
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState
from flwr.serverapp import Grid

from fedmemes.config_schema import ConfigError

log = logging.getLogger(__name__)

CLIENTS_KEY = "secagg_clients"  # metric of the synthesized reply: how many clients its sum holds
AGGREGATE_NODE_ID = SUPERLINK_NODE_ID  # the synthesized reply's sender: no SuperNode ever gets this id
ReportFn = Callable[[int, dict[str, Any]], None]  # (round, facts for its metrics.json row)
FactsFn = Callable[[int, dict[str, Any]], None]  # (node id, the metrics it sent in the clear)


@dataclass(frozen=True)
class SecAggSettings:
    """SecAgg+ parameters, with Flower's names and meanings (`SecAggPlusWorkflow`)."""

    num_shares: int | float = 1.0  # int > 2: neighbours per client; float: share of the sampled clients
    reconstruction_threshold: int | float = 0.67  # shares needed to rebuild a secret (int) or share of num_shares
    max_weight: float = 10000.0  # largest num-examples one client may claim without overflow
    clipping_range: float = 8.0  # each weighted parameter is clipped to [-clipping_range, clipping_range]
    quantization_range: int = 2**26  # integer levels each parameter is quantized to
    modulus_range: int = 2**32  # masks live in [0, modulus_range); a power of two

    def check_round_size(self, size: int) -> None:
        """Refuse a round Flower cannot run (one client) or whose quantized sum would wrap around the modulus."""
        if size < 2:  # Flower's SecAgg+ halts every round with one client
            raise ConfigError(
                f"server.secagg=true needs at least 2 clients per round, this config trains {size}: "
                "raise num_clients / clients_per_round, or set server.secagg=false"
            )
        if size * self.quantization_range >= self.modulus_range:  # the masked sum is taken modulo modulus_range
            raise ConfigError(
                f"server.secagg_params: {size} clients x quantization_range={self.quantization_range} reaches "
                f"modulus_range={self.modulus_range}, so the sum would wrap; lower quantization_range below "
                f"{self.modulus_range // size}"
            )

    def workflow(self, timeout: float | None) -> SecAggPlusWorkflow:
        """Return Flower's workflow with these settings (it checks them: num_shares > 2, threshold < shares, ...)."""
        return SecAggPlusWorkflow(
            self.num_shares,
            self.reconstruction_threshold,
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            timeout=timeout,
        )


@dataclass(frozen=True)
class _Proxy:
    """What the stages keep per sampled node: only its id is read."""

    node_id: int


class _StageStrategy:
    """The two legacy strategy hooks the stages call: name the sampled nodes, receive the unmasked results."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids
        self.results: list[tuple[_Proxy, FitRes]] = []

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[_Proxy, FitIns]]:
        # Placeholder FitIns: the real train contents replace them before the collect stage (SecAggGrid._run).
        return [(_Proxy(nid), FitIns(parameters, {})) for nid in self.node_ids]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[_Proxy, FitRes]], failures: list[Any]
    ) -> tuple[None, dict[str, Any]]:
        self.results = results  # every FitRes's parameters are the unmasked aggregate; metrics came in the clear
        return None, {}  # None: the stage writes no legacy history


@dataclass
class _StageClients:
    count: int

    def num_available(self) -> int:
        return self.count


@dataclass
class _StageContext:
    """The pieces of a LegacyContext that the stage methods read."""

    state: RecordDict
    strategy: _StageStrategy
    client_manager: _StageClients


def _reply(first: Message, content: RecordDict | None = None, error: str = "") -> Message:
    """Build the one reply the strategy gets, as if the SuperLink delivered it from AGGREGATE_NODE_ID."""
    md = first.metadata
    metadata = Metadata(
        run_id=md.run_id,
        message_id="",
        src_node_id=AGGREGATE_NODE_ID,
        dst_node_id=md.src_node_id,
        reply_to_message_id=md.message_id,
        group_id=md.group_id,
        created_at=time.time(),
        ttl=md.ttl,
        message_type=md.message_type,
    )
    if content is None:
        return make_message(metadata, error=Error(code=0, reason=error))
    return make_message(metadata, content)


def aggregate_content(reference: ArrayRecord, results: list[FitRes], arrays_key: str = "arrays") -> RecordDict:
    """Return the strategy's reply: the unmasked weighted average (named and typed as the global model), the total
    num-examples, and the clients' metrics averaged by num-examples as FedAvg averages them."""
    aggregate = parameters_to_ndarrays(results[0].parameters)  # every result carries the same aggregate
    names = list(reference.keys())
    if len(aggregate) != len(names):
        raise ValueError(f"the unmasked aggregate has {len(aggregate)} tensors, the global model {len(names)}")
    arrays = {
        name: Array(np.asarray(value, dtype=reference[name].numpy().dtype).reshape(reference[name].shape))
        for name, value in zip(names, aggregate, strict=True)
    }
    total = sum(r.num_examples for r in results)
    keys = set.intersection(*(set(r.metrics) for r in results)) - {"num-examples", "partition_id"}
    metrics: dict[str, int | float] = {
        k: sum(r.num_examples * float(cast(float, r.metrics[k])) for r in results) / total for k in sorted(keys)
    }
    metrics.update({"num-examples": total, CLIENTS_KEY: len(results)})
    return RecordDict({arrays_key: ArrayRecord(arrays), "metrics": MetricRecord(metrics)})  # type: ignore[arg-type]  # flwr types it as an invariant dict


class SecAggGrid:
    """A Grid whose train `send_and_receive` runs SecAgg+ with the addressed nodes; everything else passes through."""

    def __init__(
        self,
        grid: Grid,
        settings: SecAggSettings,
        report_fn: ReportFn | None = None,
        facts_fn: FactsFn | None = None,
    ) -> None:
        self._grid, self.settings, self.report_fn, self.facts_fn = grid, settings, report_fn, facts_fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send evaluate (and other) messages as they are; turn a round's train messages into one aggregate reply."""
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return self._grid.send_and_receive(messages, timeout=timeout)
        try:
            return [self._run(messages, timeout)]
        except Exception as err:  # noqa: BLE001  a broken stage halts this round, never the run
            log.exception("secure aggregation failed")
            return [_reply(messages[0], error=f"secure aggregation failed: {type(err).__name__}: {err}")]

    def _run(self, messages: list[Message], timeout: float | None) -> Message:
        first = messages[0]
        server_round = int(cast(int, first.content["config"].get("server-round", 0)))
        key = next(iter(first.content.array_records))  # the strategy's arrayrecord_key
        reference = first.content.array_records[key]
        node_ids = [m.metadata.dst_node_id for m in messages]
        stages = _StageStrategy(node_ids)
        state = RecordDict(
            {
                MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                MAIN_PARAMS_RECORD: ArrayRecord(),  # the placeholder FitIns' (empty) parameters
            }
        )
        context = cast(LegacyContext, _StageContext(state, stages, _StageClients(len(node_ids))))  # the fields read
        workflow, wstate = self.settings.workflow(timeout), WorkflowState()
        ok = workflow.setup_stage(self._grid, context, wstate)
        # The collect stage sends each node its FitIns content plus the key shares: give it the strategy's own train
        # content, one copy per node (the stage adds that node's shares to it).
        wstate.nid_to_fitins = {m.metadata.dst_node_id: RecordDict(dict(m.content.items())) for m in messages}
        for stage in (workflow.share_keys_stage, workflow.collect_masked_vectors_stage, workflow.unmask_stage):
            ok = ok and stage(self._grid, context, wstate)
        aggregated = [proxy.node_id for proxy, _ in stages.results]  # filled by the unmask stage only
        dropped = sorted(set(node_ids) - set(aggregated))
        if self.report_fn is not None:
            self.report_fn(server_round, {"secagg_aggregated": len(stages.results), "secagg_dropped": dropped})
        if not ok or not stages.results:
            return _reply(
                first,
                error=f"secure aggregation halted: {len(dropped)} of {len(node_ids)} nodes dropped, "
                "fewer than reconstruction_threshold left (server.secagg_params)",
            )
        if self.facts_fn is not None:  # metrics travel in the clear under SecAgg+; only the arrays are masked
            for proxy, res in stages.results:
                self.facts_fn(proxy.node_id, {**res.metrics, "num-examples": res.num_examples})
        log.info(
            "round %d: secure aggregate of %d clients (%d dropped)", server_round, len(stages.results), len(dropped)
        )
        return _reply(first, aggregate_content(reference, [res for _, res in stages.results], key))


def _needs_each_update() -> dict[type, str]:
    """Return the strategy classes that read individual replies, and what they read (imported when asked)."""
    from flwr.serverapp import strategy as flwr_strategies

    from fedmemes.strategies.feddyn import FedDyn
    from fedmemes.strategies.scaffold import Scaffold
    from fedmemes.strategies.strategy_utils import ReplyAverage

    return {
        flwr_strategies.FedMedian: "takes the median of the individual updates",
        flwr_strategies.FedTrimmedAvg: "trims the individual updates",
        flwr_strategies.Krum: "scores each update against the others",
        flwr_strategies.MultiKrum: "scores each update against the others",
        flwr_strategies.Bulyan: "scores and trims the individual updates",
        flwr_strategies.QFedAvg: "reweights each client's update by its own loss",
        flwr_strategies.FedXgbBagging: "merges each client's trees",
        flwr_strategies.FedXgbCyclic: "takes one client's model at a time",
        flwr_strategies.DifferentialPrivacyServerSideFixedClipping: "clips each update on the server",
        flwr_strategies.DifferentialPrivacyServerSideAdaptiveClipping: "clips each update on the server",
        flwr_strategies.DifferentialPrivacyClientSideAdaptiveClipping: "reads each reply's clipping bit",
        ReplyAverage: "weighs each reply by its own metrics (performance_weighted, modality_aware)",
        Scaffold: "needs each client's control-variate delta",
        FedDyn: "counts the replies for its server state",
    }


def refusal(targets: list[type]) -> str | None:
    """Return why server.secagg=true cannot run a strategy made of `targets` (outermost first), or None."""
    for cls in targets:
        for base, why in _needs_each_update().items():
            if issubclass(cls, base):
                return (
                    f"server.secagg=true cannot run server.strategy {cls.__name__}: it {why}, and under secure "
                    "aggregation the server sees only their sum; use strategy=fedavg|fedprox|fedavgm|fedadam|fedyogi|"
                    "fedadagrad|fedavg_slr (or client-side DP), or set server.secagg=false"
                )
    return None
