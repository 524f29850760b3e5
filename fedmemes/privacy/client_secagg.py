"""The client's side of secure aggregation: Flower's `secaggplus_mod`, fitted to fedmemes' train replies.

`secaggplus_mod` (flwr.client.mod) answers the SecAgg+ stages itself and calls the train handler only at the
collect-masked-vectors stage, where it expects a legacy FitRes-shaped reply. `secagg_mod` converts fedmemes' reply
(ArrayRecord "arrays", MetricRecord "metrics" with "num-examples") to that layout, in the order of the global model's
tensors the server sent, so the server can name the unmasked sum. Messages that are no SecAgg+ stage pass through.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

METRICS_RECORD = "metrics"  # what fedmemes' train handler replies with (client_app.py)
WEIGHT_KEY = "num-examples"


def is_secagg_stage(msg: Message) -> bool:
    """Whether `msg` is one of the server's SecAgg+ stage messages (fedmemes/privacy/secagg.py sends them)."""
    return msg.metadata.message_type == "train" and RECORD_KEY_CONFIGS in msg.content.config_records


def as_fitres(reply: Message, sent: Message) -> Message:
    """Return `reply` in the FitRes layout `secaggplus_mod` reads: the arrays in the order the server sent them."""
    if reply.has_error():
        return reply
    arrays_key = next(iter(sent.content.array_records))  # the strategy's arrayrecord_key ("arrays")
    arrays = reply.content.array_records[arrays_key]
    metrics = dict(reply.content.metric_records[METRICS_RECORD])
    order = list(sent.content.array_records[arrays_key].keys())
    # float64: secaggplus_mod scales and shifts the arrays in their own dtype before quantizing; in float32 that
    # arithmetic alone costs ~1e-5 on the average (24-bit mantissa at quantization_range 2**28), in float64 none.
    tensors = [ndarray_to_bytes(arrays[name].numpy().astype(np.float64)) for name in order]
    num_examples = int(metrics.pop(WEIGHT_KEY))  # type: ignore[arg-type]  # a scalar: the reply checks' rule
    fitres = FitRes(Status(Code.OK, ""), Parameters(tensors, "numpy.ndarray"), num_examples, metrics)  # type: ignore[arg-type]  # MetricRecord values are scalars
    return Message(fitres_to_recorddict(fitres, keep_input=False), reply_to=sent)


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer SecAgg+ stages with Flower's `secaggplus_mod`; pass every other message through."""
    if not is_secagg_stage(msg):
        return call_next(msg, context)

    def train_as_fitres(inner: Message, ctx: Context) -> Message:
        return as_fitres(call_next(inner, ctx), inner)

    return secaggplus_mod(msg, context, train_as_fitres)
