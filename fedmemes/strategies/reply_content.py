"""Judge one train reply on what it holds: record names, decoded tensors, scalar metrics, counts.

An `Array`'s `shape`, `dtype` and `stype` are what the sender declares; only the payload counts.
Every tensor is decoded here from its npy bytes (header first, so a hostile header never makes
the server allocate or unpickle anything) and compared with the global model the server sent.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SType

METRICS_RECORD = "metrics"  # the MetricRecord name our ClientApp replies with (fedmemes/federation/client_app.py)
SITE_RECORD = "site"  # optional ConfigRecord: the site's name and its policy's sha256 (fedmemes/privacy/site_policy.py)
SITE_NAME = re.compile(r"[\w.@:/ -]{1,64}")  # what a site name may hold: it lands in logs and metrics.json
POLICY_HASH = re.compile(r"[0-9a-f]{64}|default")
EVALUATE_METRICS = ("auroc", "accuracy", "f1_macro", "loss")  # what our ClientApp's evaluate sends (client_app.py)
MAX_COUNT = 10**9  # no client holds a billion memes; larger counts would overflow the weight arithmetic (1e308)
MAX_METRIC = 1e12  # every other metric's magnitude: losses, accuracies and counts all lie far below
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class ReplyError(ValueError):
    """A reply that cannot be aggregated; the message says why."""


@dataclass(frozen=True)
class Reference:
    """What a sound train reply must look like in this round."""

    arrays_key: str  # the ArrayRecord name the server sent (and expects back)
    tensors: dict[str, np.ndarray]  # the global model the server sent, decoded
    weight_key: str  # positive integer: the client's claimed number of training examples
    count_keys: tuple[str, ...] = ()  # non-negative integers a strategy weighs by (modality_aware's n_text, ...)
    unit_keys: tuple[
        str, ...
    ] = ()  # numbers a strategy weighs by that must lie in [0, 1] (performance_weighted's accuracy)
    extra_arrays: tuple[str, ...] = ()  # more model-shaped ArrayRecords the strategy expects back (SCAFFOLD's cv_delta)


@dataclass
class Reply:
    """A reply that passed every content check: its decoded tensors and plain metrics."""

    msg: Message
    arrays: dict[str, np.ndarray]
    metrics: dict[str, int | float]
    extras: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # Reference.extra_arrays, decoded
    site: dict[str, str] = field(default_factory=dict)  # the site's name and policy hash, checked
    own: dict[str, int | float] = field(default_factory=dict)  # checked metrics not every reply has: facts only

    @property
    def node(self) -> int:
        """Return the node that sent the reply (set by Flower, not by the client)."""
        return int(self.msg.metadata.src_node_id)


def reference_of(
    arrays: ArrayRecord,
    arrays_key: str,
    weight_key: str,
    count_keys: tuple[str, ...] = (),
    unit_keys: tuple[str, ...] = (),
    extra_arrays: tuple[str, ...] = (),
) -> Reference:
    """Decode the global model once per round into the reference replies are judged against."""
    return Reference(
        arrays_key, {k: a.numpy() for k, a in arrays.items()}, weight_key, count_keys, unit_keys, extra_arrays
    )


def decode_array(name: str, array: Any, expected: np.ndarray) -> np.ndarray:
    """Decode one tensor's npy payload; raise ReplyError unless it has the global tensor's stype, dtype, byte order,
    shape and byte length."""
    if not isinstance(array, Array):
        raise ReplyError(f"tensor '{name}' is a {type(array).__name__}, not an Array")
    if array.stype != SType.NUMPY:
        raise ReplyError(f"tensor '{name}' has stype {array.stype!r}; only {SType.NUMPY!r} is accepted")
    data = array.data
    if not isinstance(data, (bytes, bytearray)):
        raise ReplyError(f"tensor '{name}' carries {type(data).__name__}, not bytes")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in NPY_HEADER_READERS:
            raise ReplyError(f"tensor '{name}' is npy format {version}; only 1.0 and 2.0 are accepted")
        shape, fortran, dtype = NPY_HEADER_READERS[version](stream)
    except ReplyError:
        raise
    except Exception as err:  # noqa: BLE001  numpy raises ValueError/EOFError/SyntaxError on a broken header
        raise ReplyError(f"tensor '{name}' is not a readable npy payload ({type(err).__name__}: {err})") from None
    if dtype != expected.dtype:  # np.dtype equality includes byte order: '>f4' != '<f4'
        raise ReplyError(
            f"tensor '{name}' holds {dtype} ('{dtype.str}'), the global model's is {expected.dtype} "
            f"('{expected.dtype.str}')"
        )
    if tuple(shape) != expected.shape:
        raise ReplyError(f"tensor '{name}' holds shape {list(shape)}, the global model's is {list(expected.shape)}")
    want = stream.tell() + expected.nbytes
    if len(data) != want:
        raise ReplyError(
            f"tensor '{name}' is {len(data)} bytes; a {dtype}{list(shape)} npy payload is {want} (truncated or padded)"
        )
    if tuple(array.shape) != expected.shape or str(array.dtype) != str(expected.dtype):
        raise ReplyError(
            f"tensor '{name}' declares {array.dtype}{list(array.shape)} but its payload is {dtype}{list(shape)}"
        )
    values = np.frombuffer(data, dtype=dtype, count=expected.size, offset=stream.tell())
    values = np.array(values.reshape(shape, order="F" if fortran else "C"), order="C")  # own, writable, C order
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise ReplyError(f"tensor '{name}' has non-finite values")
    return values


def _number(key: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyError(f"metric '{key}' must be a single number, got {type(value).__name__} {str(value)[:40]}")
    if not math.isfinite(value):
        raise ReplyError(f"metric '{key}' is not finite ({value})")
    if abs(value) > MAX_METRIC:
        raise ReplyError(f"metric '{key}' is out of range (|{value:.3g}| > {MAX_METRIC:g})")
    return value


def _integer(key: str, value: int | float, minimum: int) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ReplyError(f"metric '{key}' must be an integer, got {value}")
    if not minimum <= value <= MAX_COUNT:
        raise ReplyError(f"metric '{key}' must be an integer in [{minimum}, {MAX_COUNT}], got {value:.6g}")
    return int(value)


def judge_metrics(msg: Message, weight_key: str) -> tuple[dict[str, int | float], list[str]]:
    """Return an evaluate reply's checked metrics (exactly EVALUATE_METRICS and a count `weight_key` in
    [1, MAX_COUNT], scalar, finite, bounded) and the extra keys left out; raise ReplyError naming what is wrong."""
    if msg.has_error():
        raise ReplyError(f"client error: {msg.error.reason}")
    names = sorted(k for k in msg.content if k != SITE_RECORD)
    if names != [METRICS_RECORD] or not isinstance(msg.content[METRICS_RECORD], MetricRecord):
        raise ReplyError(f"records {names}; the server expects exactly one MetricRecord '{METRICS_RECORD}'")
    record = msg.content[METRICS_RECORD]
    wanted = (weight_key, *EVALUATE_METRICS)
    if missing := [k for k in wanted if k not in record]:
        raise ReplyError(f"metrics {missing} are missing")
    values = {key: _number(key, record[key]) for key in wanted}
    values[weight_key] = _integer(weight_key, values[weight_key], 1)  # 0 would divide by zero in the average
    return values, sorted(set(record) - set(wanted))


def judge(msg: Message, ref: Reference) -> Reply:
    """Return the reply's decoded content, or raise ReplyError naming the first thing wrong with it."""
    if msg.has_error():
        raise ReplyError(f"client error: {msg.error.reason}")
    content = msg.content
    site = _site(content[SITE_RECORD]) if SITE_RECORD in content else {}
    names = sorted(k for k in content if k != SITE_RECORD)
    wanted = sorted({ref.arrays_key, METRICS_RECORD, *ref.extra_arrays})
    if names != wanted:
        raise ReplyError(f"records {names}; the server expects exactly {wanted}")
    arrays, metrics = content[ref.arrays_key], content[METRICS_RECORD]
    if not isinstance(arrays, ArrayRecord) or not isinstance(metrics, MetricRecord):
        raise ReplyError(
            f"'{ref.arrays_key}' must be an ArrayRecord and '{METRICS_RECORD}' a MetricRecord, "
            f"got {type(arrays).__name__} and {type(metrics).__name__}"
        )
    values = {key: _number(key, value) for key, value in metrics.items()}
    if ref.weight_key not in values:
        raise ReplyError(f"metric '{ref.weight_key}' is missing")
    values[ref.weight_key] = _integer(ref.weight_key, values[ref.weight_key], 1)
    for key in ref.count_keys:
        if key not in values:
            raise ReplyError(f"metric '{key}' is missing (the strategy weighs by it)")
        values[key] = _integer(key, values[key], 0)
    for key in ref.unit_keys:
        if key not in values:
            raise ReplyError(f"metric '{key}' is missing (the strategy weighs by it)")
        if not 0.0 <= values[key] <= 1.0:
            raise ReplyError(f"metric '{key}' must lie in [0, 1], got {values[key]}")
    extras = {name: _tensors(content[name], ref.tensors, name) for name in ref.extra_arrays}
    return Reply(msg, _tensors(arrays, ref.tensors, ref.arrays_key), values, extras, site)


def _site(record: Any) -> dict[str, str]:
    """Check the optional site record: a short printable name and a sha256 (or "default")."""
    if not isinstance(record, ConfigRecord) or sorted(record.keys()) != ["name", "policy_sha256"]:
        raise ReplyError(f"'{SITE_RECORD}' must be a ConfigRecord with exactly 'name' and 'policy_sha256'")
    name, digest = record["name"], record["policy_sha256"]
    if not (isinstance(name, str) and SITE_NAME.fullmatch(name)):
        raise ReplyError(f"'{SITE_RECORD}.name' must be 1-64 letters, digits or ._-@:/ and spaces")
    if not (isinstance(digest, str) and POLICY_HASH.fullmatch(digest)):
        raise ReplyError(f"'{SITE_RECORD}.policy_sha256' must be 64 hex digits or 'default'")
    return {"site": name, "policy_sha256": digest}


def _tensors(record: Any, reference: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Decode one ArrayRecord that must hold exactly the global model's tensor names, shapes and dtypes."""
    if not isinstance(record, ArrayRecord):
        raise ReplyError(f"'{name}' must be an ArrayRecord, got {type(record).__name__}")
    missing, extra = sorted(set(reference) - set(record.keys())), sorted(set(record.keys()) - set(reference))
    if missing or extra:
        raise ReplyError(
            f"'{name}': tensor names differ from the global model: missing {missing[:3]}, extra {extra[:3]}"
        )
    return {key: decode_array(key, record[key], expected) for key, expected in reference.items()}
