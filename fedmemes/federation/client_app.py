"""Flower ClientApp: unpack the Message, train or evaluate with the engine, pack the reply."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from fedmemes.bookkeeping import client_state
from fedmemes.config import build_model, build_personalization, load_config, message_overrides
from fedmemes.federation import engine
from fedmemes.federation.client_corrections import local_setup
from fedmemes.federation.client_personal import PersonalRound
from fedmemes.federation.node_datasets import ClientData, client_data
from fedmemes.federation.personalization import shared_only
from fedmemes.privacy import site_policy
from fedmemes.privacy.client_dp import local_dp
from fedmemes.privacy.client_secagg import secagg_mod
from fedmemes.privacy.site_policy import SitePolicy

log = logging.getLogger(__name__)
app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise KeyError(
            f"node config lacks {err}; start the SuperNode with --node-config 'partition-id=0 num-partitions=2'"
        ) from None


def _data_dir(context: Context) -> str | None:
    # partition=per_client_dirs: the node's own folder, --node-config '... data-dir="/abs/path"'.
    return str(context.node_config.get("data-dir") or "") or None


@dataclass
class Node:
    """What one message runs with on this node: the run's config, checked against the site policy, and the data."""

    cfg: DictConfig
    pid: int
    data: ClientData
    policy: SitePolicy
    site: str  # how this site signs its refusals and replies
    policy_hash: str


def _node_setup(context: Context, msg: Message) -> Node:
    """Compose the run's config (with the recipe the server is trying or chose), refuse what the site policy does not
    allow before any object is built, then load this node's partition."""
    overrides = message_overrides(context.run_config, msg.content)
    cfg = load_config(overrides)
    pid, num = _partition(context)
    policy, digest = site_policy.for_node(context.node_config)
    site = policy.name or f"partition-{pid}"
    site_policy.refuse(site, site_policy.refusals(policy, cfg))
    return Node(cfg, pid, client_data(overrides, pid, num, _data_dir(context)), policy, site, digest)


def _model(cfg: DictConfig, msg: Message) -> nn.Module:
    model = build_model(cfg)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return model


# secagg_mod answers the SecAgg+ stages (server.secagg=true) and masks the reply; local_dp (client.dp or the
# site's local_dp) clips and noises it first, so the masked update is already noised. Other messages pass.
@app.train(mods=[secagg_mod, local_dp])
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's memes for `num_epochs`."""
    node = _node_setup(context, msg)
    cfg, pid, data, limits = node.cfg, node.pid, node.data, node.policy.limits
    config = msg.content["config"]
    server_round = int(cast(int, config.get("server-round", 0))) + int(cast(int, config.get("round_offset", 0)))
    epochs = int(config.get("num_epochs", cfg.num_epochs))
    site_policy.refuse(node.site, site_policy.train_refusals(node.policy, server_round, epochs))
    model = _model(cfg, msg)
    device = engine.pick_device(limits.device or cfg.device)
    # limits.max_memes_per_round: a cap on local batches, whatever the server's epochs and steps
    caps = [cfg.local_steps, limits.max_memes_per_round and max(1, limits.max_memes_per_round // cfg.batch_size)]
    # SCAFFOLD / FedDyn corrections and the local loss (loss=fedlc); their state lives in context.state, and on disk
    # (client_state.py) for the next process: a resumed run or a restarted SuperNode starts with an empty one
    state_file = client_state.state_file(cfg.cache_dir, str(config.get(client_state.RUN_KEY, "")), pid)
    client_state.restore(context.state, state_file, server_round)
    # personalization: the local tensors go into the received model; the own model is made after training
    personal = PersonalRound(build_personalization(cfg), context.state, model, server_round, int(cfg.num_rounds))
    local = local_setup(
        msg.content,
        context.state,
        model,
        data.train.label.bincount(minlength=2).tolist(),
        cfg.get("loss"),
        personal.local,
    )
    max_steps = min((int(c) for c in caps if c), default=None)
    seed = cfg.random_seed + 1000 * server_round + pid

    def fit(net: nn.Module, steps: int | None, seed: int, **objective: Any) -> dict[str, float]:
        """Train `net` on this client's train share: `steps` batches (one per epoch at least), else the round's."""
        return engine.train(
            net,
            data.train.dataset(),
            epochs=epochs if steps is None else steps,
            lr=float(config.get("lr", cfg.lr)),
            batch_size=cfg.batch_size,
            device=device,
            seed=seed,
            optimizer=instantiate(cfg.optimizer),
            max_steps=max_steps if steps is None else min(steps, max_steps or steps),
            amp_dtype=engine.autocast_dtype(cfg.get("amp", "auto"), device),
            **objective,
        )

    # the global model: the strategy's objective (proximal term, loss, SCAFFOLD/FedDyn corrections)
    proximal_mu = float(cast(float, config.get("proximal-mu", 0.0)))
    stats = fit(model, None, seed, proximal_mu=proximal_mu, loss_fn=local.loss_fn, grad_hook=local.grad_hook)
    # the client's own model (finetune, ditto): the plain loss, its own hook, a seed of its own
    member = personal.finish(
        model,
        lambda net, steps, hook: fit(net, steps, seed + 500_000, grad_hook=hook),
        data.val,
        cfg.batch_size,
        device,
    )
    personal.export(cfg, pid, data.val, cfg.batch_size, device)
    # Accuracy on the share this client kept back, never on what it trained on.
    val = engine.evaluate(model, data.val.dataset(), cfg.batch_size, device) if len(data.val) else {"accuracy": 0.0}
    labels = data.train.label.bincount(minlength=2).tolist()
    has = data.train.mask > 0  # (N, 2) [has text, has image]: modality_aware weights each branch by these counts
    metrics = site_policy.shared(  # only what the site's policy lets leave (default: what the strategy reads)
        node.policy,
        cfg,
        {
            "num-examples": len(data.train),
            "train_loss": stats["train_loss"],
            "train_accuracy": stats["train_accuracy"],
            "val_accuracy": float(val["accuracy"]),
            "val_n": len(data.val),
            "partition_id": pid,
            "label_0": int(labels[0]),
            "label_1": int(labels[1]),
            "n_text": int(has[:, 0].sum()),
            "n_image": int(has[:, 1].sum()),
            "n_both": int(has.all(dim=1).sum()),
            **member,  # global_auroc, personal_auroc every personalization.eval_every rounds
        },
    )
    extra = local.finish(model)  # updates context.state
    client_state.save_state(context.state, state_file, server_round)
    reply = RecordDict(
        {
            # the local tensors (personalization=fedbn, local_head) never leave the client, in no record
            "arrays": ArrayRecord(shared_only(engine.trainable_state(model), personal.local)),
            "metrics": MetricRecord(metrics),
            "site": ConfigRecord({"name": node.site, "policy_sha256": node.policy_hash}),  # logged per node
            **{name: ArrayRecord(shared_only(r.to_torch_state_dict(), personal.local)) for name, r in extra.items()},
        }
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model on this client's kept-back validation share."""
    node = _node_setup(context, msg)
    cfg, device = node.cfg, engine.pick_device(node.policy.limits.device or node.cfg.device)
    scores = engine.evaluate(_model(cfg, msg), node.data.val.dataset(), cfg.batch_size, device)
    metrics = {k: (0.0 if v != v else float(v)) for k, v in scores.items() if k != "n"}  # NaN -> 0: keys must match
    metrics["num-examples"] = len(node.data.val)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)  # type: ignore[arg-type]  # flwr types it as an invariant dict; float values fit
