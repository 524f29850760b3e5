"""The Flower adapters: a ClientApp train/evaluate round trip on hand-built Messages, and the server's run record."""

import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedmemes.bookkeeping.history import RunHistory
from fedmemes.config import build_model
from fedmemes.federation import client_app, engine


def _context(overrides: str, **node_config: str) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config={"overrides": overrides},
    )


def test_client_train_replies_with_trainable_weights_and_metrics(server_identity, tiny_data, small_config, tmp_path):
    cfg = small_config("num_clients=2")
    overrides = f"{tiny_data.overrides} num_clients=2"  # what the ClientApp composes: the same config
    model = build_model(cfg)
    sent = engine.trainable_state(model)
    content = RecordDict(
        {"arrays": ArrayRecord(sent), "config": ConfigRecord({"lr": 0.003, "num_epochs": 1, "server-round": 1})}
    )
    msg = Message(content=content, dst_node_id=7, message_type="train")
    share_all = tmp_path / "site.yaml"  # a site that lets every metric leave
    share_all.write_text("share: [label_counts, modality_counts, val_accuracy, train_metrics]\n")
    reply = client_app.train(msg, _context(overrides, policy=str(share_all)))

    back = reply.content["arrays"].to_torch_state_dict()
    assert set(back) == set(sent) and all(back[k].shape == sent[k].shape for k in sent)
    assert any(not torch.equal(back[k], sent[k]) for k in sent)  # it trained
    metrics = reply.content["metrics"]
    assert metrics["partition_id"] == 1
    assert metrics["num-examples"] == metrics["label_0"] + metrics["label_1"] > 0
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and math.isfinite(metrics["train_loss"])

    evaluated = client_app.evaluate(
        Message(content=RecordDict({"arrays": reply.content["arrays"]}), dst_node_id=7, message_type="evaluate"),
        _context(overrides),
    )
    assert evaluated.content["metrics"]["num-examples"] == metrics["val_n"]


def test_history_tracks_best_round_and_writes_json(tmp_path):
    h = RunHistory(tmp_path)
    assert h.add_round(0, {"auroc": 0.5})
    assert h.add_round(1, {"auroc": 0.8})
    assert not h.add_round(2, {"auroc": 0.7})
    assert not h.add_round(3, {"auroc": float("nan")})
    h.add_client(1, {"n_train": 10, "label_counts": [6, 4]})
    h.add_client(0, {"n_train": 12, "label_counts": [5, 7]})
    data = h.as_dict()
    assert data["best_round"] == 1 and data["rounds"][3]["auroc"] is None
    assert [c["partition_id"] for c in data["clients"]] == [0, 1]
    assert (h.write()).read_text().startswith("{")
