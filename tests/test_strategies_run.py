"""Every conf/strategy/*.yaml runs 2 rounds of the real ServerApp and ClientApp (debug=tiny).

Flower's transport is replaced by `fedmemes.federation.testing.LocalGrid`, which hands each message to the ClientApp in
this process: the strategies, apps, training and metrics.json are the real ones, without Ray's
start-up (about 10 s per run). `fedmemes simulate` covers the Ray engine itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

import fedmemes
from fedmemes.federation.client_app import app as client_app
from fedmemes.federation.testing import run_in_process

STRATEGIES = sorted(p.stem for p in (Path(fedmemes.__file__).parent / "conf" / "strategy").glob("*.yaml"))
EXTRA = {"bulyan": "num_clients=3"}  # Bulyan needs at least 4f + 3 = 3 clients per round
SMALL = "experiment=strategy_smoke"  # debug=tiny, smaller still (conf/experiment/strategy_smoke.yaml)


def _model(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run_dir / f"{name}.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_runs_two_rounds(name, tmp_path, cache_dir, one_thread):
    extra = EXTRA.get(name, "num_clients=2")
    metrics = run_in_process(
        f"{SMALL} strategy={name} cache_dir={cache_dir} {extra}", tmp_path, int(extra.split("=")[1])
    )
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    for row in metrics["rounds"][1:]:
        assert row["dropped_replies"] == 0 and row["kept_previous_model"] == 0
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    first, final = metrics["rounds"][0], _model(tmp_path, "final")
    assert all(np.isfinite(v).all() for v in final.values())
    assert metrics["rounds"][-1]["loss"] != first["loss"]  # the global model moved


def nan_client(bad_partition: int) -> Callable[[Message, Context], Message]:
    """A ClientApp that answers with NaN weights when it is `bad_partition`."""

    def call(msg: Message, context: Context) -> Message:
        out = client_app(msg, context)
        if int(context.node_config["partition-id"]) == bad_partition and msg.metadata.message_type == "train":
            arrays = out.content["arrays"]
            for key in list(arrays.keys()):
                arrays[key] = type(arrays[key])(np.full_like(arrays[key].numpy(), math.nan))
        return out

    return call


@pytest.mark.slow
def test_a_client_sending_nan_is_dropped_every_round(tmp_path, cache_dir, one_thread):
    metrics = run_in_process(f"{SMALL} num_clients=3 cache_dir={cache_dir}", tmp_path, 3, client=nan_client(1))
    assert [(r["replies"], r["dropped_replies"], r["kept_previous_model"]) for r in metrics["rounds"][1:]] == [
        (3, 1, 0)
    ] * 2
    assert all(np.isfinite(v).all() for v in _model(tmp_path, "final").values())
    assert math.isfinite(metrics["test"]["auroc"])


@pytest.mark.slow
def test_too_few_sound_replies_keep_the_global_model(tmp_path, cache_dir, one_thread):
    metrics = run_in_process(
        f"{SMALL} num_clients=2 server.strategy.min_valid_replies=2 cache_dir={cache_dir}",
        tmp_path,
        2,
        client=nan_client(1),
    )
    assert [r["kept_previous_model"] for r in metrics["rounds"][1:]] == [1, 1]
    assert {r["loss"] for r in metrics["rounds"]} == {metrics["rounds"][0]["loss"]}  # never moved
