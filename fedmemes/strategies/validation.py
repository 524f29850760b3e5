"""Judge client replies before any strategy sees them, so one hostile or broken client can neither end the run nor take
over the model."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmemes.strategies.reply_content import (
    METRICS_RECORD,
    Reference,
    Reply,
    ReplyError,
    judge,
    judge_metrics,
    reference_of,
)
from fedmemes.strategies.strategy_utils import innermost, with_mixin
from fedmemes.strategies.update_bounds import (
    UpdateBounds,
    capped_counts,
    clip_update,
    norm_bound,
    update_norm,
)

log = logging.getLogger(__name__)

ReportFn = Callable[[int, dict[str, Any]], None]  # (round, reply counts and the reasons replies were dropped)
FactsFn = Callable[[int, dict[str, Any]], None]  # (sending node id, its checked metrics)


def printable(text: str, limit: int = 300) -> str:
    """Return a client-supplied text fit for one log line: control characters escaped, at most `limit` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _as_reference_dtypes(arrays: ArrayRecord, reference: ArrayRecord | None) -> ArrayRecord:
    # Some strategies (QFedAvg, the DP noise) return float64: the model must keep its dtypes, or
    # every client's next reply would mismatch the global model.
    if reference is None or all(arrays[k].dtype == reference[k].dtype for k in arrays if k in reference):
        return arrays
    return ArrayRecord(
        {k: Array(a.numpy().astype(reference[k].numpy().dtype)) if k in reference else a for k, a in arrays.items()}
    )


class ReplyChecks:
    """Mixin for any `flwr.serverapp.strategy` class: judge train replies on their content, bound each client's pull.

    A sound reply has exactly the records the server expects (its ArrayRecord name, `metrics`),
    tensors whose decoded payload matches the global model (stype, dtype with byte order, shape,
    byte length, finite values), scalar finite metrics with the other replies' keys, and a
    positive integer `num-examples`. Sound replies are then bounded (`update_bounds`): outsized
    updates clipped, over-claimed sizes capped. The strategy aggregates rebuilt replies holding
    exactly what was checked. Flower ends the whole run on inconsistent replies, so this runs
    before the strategy's own checks. Use `with_reply_checks`.

    Under secure aggregation (server.secagg, fedmemes/privacy/secagg.py) no individual update reaches the
    server: the one reply is the unmasked weighted average, so these checks and bounds judge the
    aggregate (names, shapes, dtypes, finite values, a positive total), never a single client.
    """

    min_valid_replies: int | None = None  # fewer sound replies: keep the previous model; None: 2 when 2+ were sampled
    reply_report_fn: ReportFn | None = None  # told (round, counts) after every aggregation
    reply_facts_fn: FactsFn | None = None  # told (node id, metrics) of every sound reply: facts keyed by the sender
    update_bounds: UpdateBounds = UpdateBounds()
    uniform_weights: bool = False  # every sound reply weighs 1 (the DP accountant's plain average of clipped updates)
    secure_aggregate: bool = False  # server.secagg: the one reply per round is the unmasked sum of all clients'
    # personalization=fedbn|local_head: tensors that stay on each client (the model declares them). Replies hold the
    # rest; the strategy gets them filled in with the global values (SCAFFOLD's deltas with zeros), so it averages
    # the shared tensors only and the local ones keep their global value, exactly.
    local_keys: frozenset[str] = frozenset()
    _reply_reference: ArrayRecord | None = None
    _judge_reference: Reference | None = None
    _sampled: int = 0  # train messages sent this round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (the reference replies are checked against), then configure."""
        self._reply_reference, self._judge_reference = arrays, None
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._sampled = len(messages)
        return messages

    def _minimum(self) -> int:
        if self.secure_aggregate:  # one reply, the sum: SecAgg+'s reconstruction threshold already counted clients
            return 1
        if self.min_valid_replies is None:  # one client alone never makes the model while others were asked
            return min(2, max(1, self._sampled))
        return max(1, int(self.min_valid_replies))

    def _reference(self) -> Reference:
        if self._reply_reference is None:
            raise RuntimeError(
                "configure_train was not called before aggregate_train: the replies have no reference model"
            )
        if self._judge_reference is None:
            inner = innermost(self)
            counts = tuple(getattr(inner, "count_keys", {}).values())  # modality_aware weighs blocks by these
            unit = (inner.accuracy_key,) if hasattr(inner, "accuracy_key") else ()  # performance_weighted
            key = str(getattr(inner, "arrayrecord_key", "arrays"))
            extra = tuple(n for n in getattr(inner, "reply_array_records", ()) if n != key)  # e.g. SCAFFOLD's cv_delta
            shared = ArrayRecord({k: a for k, a in self._reply_reference.items() if k not in self.local_keys})
            self._judge_reference = reference_of(
                shared, key, str(getattr(inner, "weighted_by_key", "num-examples")), counts, unit, extra
            )
        return self._judge_reference

    def filter_replies(self, server_round: int, replies: Iterable[Message]) -> tuple[list[Reply], list[str]]:
        """Split replies into sound ones (decoded) and the reasons the others were dropped."""
        ref = self._reference()
        sound: list[Reply] = []
        reasons: list[str] = []
        for msg in replies:
            try:
                sound.append(judge(msg, ref))
            except ReplyError as err:  # its text may quote the client (an error reason): escaped for the log
                reasons.append(f"node {msg.metadata.src_node_id}: {printable(str(err))}")
            except Exception as err:  # noqa: BLE001  anything a hostile payload makes a library raise is a drop, never a crash
                why = printable(f"{type(err).__name__}: {err}")
                reasons.append(f"node {msg.metadata.src_node_id}: unreadable reply ({why})")
        # Metric keys must agree (Flower ends the run otherwise). The keys a strategy weighs by are required by
        # judge(); an optional key a client adds or holds back (its site policy) drops no one's reply: only keys every
        # reply has are averaged. No vote over key sets is taken, which a tie would hand to the first to answer. The
        # others stay the node's own facts (its label counts, its member AUROCs), whatever the other sites share.
        common = frozenset.intersection(*(frozenset(r.metrics) for r in sound)) if sound else frozenset()
        for reply in sound:
            if extra := sorted(set(reply.metrics) - common):
                log.info(
                    "round %d: node %d's metrics %s are not in every reply: kept as its facts, not averaged",
                    server_round,
                    reply.node,
                    extra,
                )
                reply.own = {k: v for k, v in reply.metrics.items() if k not in common}
                reply.metrics = {k: v for k, v in reply.metrics.items() if k in common}
        for reason in reasons:
            log.warning("round %d: dropped reply from %s", server_round, reason)
        return sound, reasons

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Average the evaluate replies whose metrics are sound (the keys our ClientApp sends, scalar, finite,
        bounded, a count >= 1); drop the rest with their reason, so no reply can end the run."""
        key = str(getattr(innermost(self), "weighted_by_key", "num-examples"))
        sound: list[tuple[Message, dict[str, int | float]]] = []
        for msg in replies:
            node = msg.metadata.src_node_id
            try:
                metrics, extra = judge_metrics(msg, key)
            except Exception as err:  # noqa: BLE001  a drop, never a crash
                log.warning(
                    "round %d: dropped evaluate reply from node %d: %s", server_round, node, printable(str(err))
                )
                continue
            if extra:
                log.info("round %d: node %d's evaluate metrics %s left out", server_round, node, printable(str(extra)))
            sound.append((msg, metrics))
        rebuilt = [
            Message(content=RecordDict({METRICS_RECORD: MetricRecord(metrics)}), metadata=msg.metadata)  # type: ignore[call-overload,arg-type]  # see _rebuilt
            for msg, metrics in sound
        ]
        return super().aggregate_evaluate(server_round, rebuilt) if rebuilt else None  # type: ignore[misc]

    def bound_replies(self, server_round: int, sound: list[Reply]) -> tuple[int, int]:
        """Clip outsized updates and cap over-claimed counts in place; return (clipped, capped) reply counts."""
        ref, bounds = self._reference(), self.update_bounds
        norms = [update_norm(r.arrays, ref.tensors) for r in sound]
        bound = norm_bound(norms, bounds)
        clipped = 0
        for reply, norm in zip(sound, norms, strict=True):
            if bound is not None and not norm <= bound:
                reply.arrays = clip_update(reply.arrays, ref.tensors, norm, bound)
                clipped += 1
                log.warning(
                    "round %d: clipped the update of node %d from L2 norm %.4g to %.4g (server.max_update_norm=%s)",
                    server_round,
                    reply.node,
                    norm,
                    bound,
                    bounds.describe(),
                )
        for name in ref.extra_arrays:  # SCAFFOLD's control-variate deltas: the same rule, around zero
            zeros = {k: np.zeros_like(v) for k, v in ref.tensors.items()}
            extra_norms = [update_norm(r.extras[name], zeros) for r in sound]
            extra_bound = norm_bound(extra_norms, bounds)
            for reply, norm in zip(sound, extra_norms, strict=True):
                if extra_bound is not None and not norm <= extra_bound:
                    reply.extras[name] = clip_update(reply.extras[name], zeros, norm, extra_bound)
                    log.warning(
                        "round %d: clipped node %d's '%s' from L2 norm %.4g to %.4g",
                        server_round,
                        reply.node,
                        name,
                        norm,
                        extra_bound,
                    )
        capped: set[int] = set()
        cap = bounds.weight_cap(len(sound))
        for key in (ref.weight_key, *ref.count_keys):
            claimed = [int(r.metrics[key]) for r in sound]
            for i, (reply, new) in enumerate(zip(sound, capped_counts(claimed, cap), strict=True)):
                if new != claimed[i]:
                    log.warning(
                        "round %d: node %d claims %s=%d, %.0f%% of the round; counted as %d "
                        "(server.max_client_weight=%s)",
                        server_round,
                        reply.node,
                        key,
                        claimed[i],
                        100 * claimed[i] / sum(claimed),
                        new,
                        bounds.describe_weight(),
                    )
                    reply.metrics[key] = new
                    capped.add(i)
        return clipped, len(capped)

    def _rebuilt(self, reply: Reply) -> Message:
        # The strategy gets exactly what was checked: canonical arrays, plain metrics, the sender's metadata.
        records = {self._reference().arrays_key: self._filled(reply.arrays, self._local_values())}
        records.update({name: self._filled(t, self._local_values(zeros=True)) for name, t in reply.extras.items()})
        content = RecordDict(
            {name: ArrayRecord({k: Array(v) for k, v in tensors.items()}) for name, tensors in records.items()}
        )
        content[METRICS_RECORD] = MetricRecord(reply.metrics)  # type: ignore[arg-type]  # flwr types it as an invariant dict; int and float values fit
        # Flower's own (content, metadata) form, which its public overloads leave out: keeps the sender's metadata.
        return Message(content=content, metadata=reply.msg.metadata)  # type: ignore[call-overload,no-any-return]

    def _filled(self, shared: dict[str, np.ndarray], local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return a reply's tensors with the local ones filled in, in the global model's order."""
        if not local or self._reply_reference is None:
            return shared
        return {k: shared[k] if k in shared else local[k] for k in self._reply_reference.keys()}  # noqa: SIM118

    def _local_values(self, zeros: bool = False) -> dict[str, np.ndarray]:
        """Return the global model's local tensors (or zeros shaped like them): what the strategy gets for them."""
        ref = self._reply_reference
        if ref is None or not self.local_keys:
            return {}
        values = {k: ref[k].numpy() for k in ref if k in self.local_keys}
        return {k: np.zeros_like(v) for k, v in values.items()} if zeros else values

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the sound, bounded replies; keep the previous global model when too few remain."""
        replies = list(replies)
        sound, reasons = self.filter_replies(server_round, replies)
        # Replies come in arrival order; a float sum depends on its order, so aggregate them in partition order
        # (a client's claim; a false one only reorders the sum) for the same numbers from the same seed.
        sound.sort(key=lambda r: (float(r.metrics.get("partition_id", math.inf)), r.node))
        # A secure aggregate (server.secagg) is no node's facts: fedmemes/privacy/secagg.py reports each node's itself.
        if self.reply_facts_fn is not None and not self.secure_aggregate:
            for reply in sound:  # what each node claimed, before capping, under the id Flower gives the sender
                self.reply_facts_fn(reply.node, {**reply.metrics, **reply.own, **reply.site})
        if self.uniform_weights:  # after the facts above took each node's own claim
            for reply in sound:
                reply.metrics[self._reference().weight_key] = 1
        clipped, capped = self.bound_replies(server_round, sound) if sound else (0, 0)
        arrays, metrics = None, None
        if len(sound) >= self._minimum():
            arrays, metrics = super().aggregate_train(server_round, [self._rebuilt(r) for r in sound])  # type: ignore[misc]
        kept = arrays is None
        if arrays is None:
            log.warning(
                "round %d: %d sound replies of %d (minimum %d): keeping the previous global model",
                server_round,
                len(sound),
                len(replies),
                self._minimum(),
            )
        else:
            arrays = _as_reference_dtypes(arrays, self._reply_reference)
            if not all(np.isfinite(a.numpy()).all() for a in arrays.values() if a.numpy().dtype.kind in "fc"):
                log.warning(
                    "round %d: the strategy's aggregate is not finite: keeping the previous global model", server_round
                )
                kept = True
        if kept:
            arrays = self._reply_reference
        elif (
            self.local_keys and arrays is not None and self._reply_reference is not None
        ):  # exactly, not a rounded mean
            arrays = ArrayRecord(
                {k: self._reply_reference[k] if k in self.local_keys else a for k, a in arrays.items()}
            )
        if self.reply_report_fn is not None:
            self.reply_report_fn(
                server_round,
                {
                    "replies": len(replies),
                    "dropped_replies": len(reasons),
                    "clipped_replies": clipped,
                    "capped_weights": capped,
                    "kept_previous_model": int(kept),
                    "dropped": reasons[:20],  # why, per node (the round line and a run that aggregated nothing say)
                },
            )
        return arrays, metrics


def with_reply_checks(cls: type[Strategy]) -> type[Strategy]:
    """Return `cls` with `ReplyChecks` in front (same name, still an instance of `cls`)."""
    return with_mixin(ReplyChecks, cls)
