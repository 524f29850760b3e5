"""personalization=...: local tensors never leave a client, they carry across rounds, per-member scores, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedmemes.config import ConfigError, build_model, build_personalization, build_strategy, load_config
from fedmemes.federation.client_app import app as client_app
from fedmemes.federation.client_personal import PERSONAL_STATE, SCORES_FILE
from fedmemes.federation.node_datasets import client_memes
from fedmemes.federation.personalization import Ditto, interpolate, member_spread, shared_only, spread
from fedmemes.federation.testing import run_in_process
from fedmemes.privacy import client_dp, site_policy
from fedmemes.tools.predict import load_run
from fedmemes.tools.serve import create_app

METHODS = ("fedbn", "local_head", "finetune", "ditto")


def _recording(sent: list[tuple[int, int, RecordDict, dict[str, dict[str, torch.Tensor]]]]) -> Any:
    """Return a ClientApp that records (node, round, reply content, its state after the reply) of every train."""

    def client(msg: Message, context: Context) -> Message:
        reply = client_app(msg, context)
        if msg.metadata.message_type == "train":
            state = {k: r.to_torch_state_dict() for k, r in context.state.array_records.items()}
            rnd = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
            sent.append((context.node_id, rnd, reply.content, state))
        return reply

    return client


def _tensors(content: RecordDict) -> dict[str, dict[str, torch.Tensor]]:
    return {name: record.to_torch_state_dict() for name, record in content.array_records.items()}


@pytest.mark.parametrize("method", METHODS)
def test_local_parts_never_leave_and_carry_across_rounds(method, tiny_data, tmp_path, one_thread):
    # local_head also runs under SCAFFOLD (a second ArrayRecord in every reply) and exports (one run, not two)
    export = tmp_path / "personal"
    more = f"strategy=scaffold personalization.export_dir={export}" if method == "local_head" else ""
    overrides = f"{tiny_data.overrides} num_rounds=2 personalization={method} personalization.eval_every=1 {more}"
    sent: list[tuple[int, int, RecordDict, dict[str, dict[str, torch.Tensor]]]] = []
    metrics = run_in_process(overrides, tmp_path / "run", 2, _recording(sent))
    cfg = load_config(overrides)
    model = build_model(cfg)
    local = set(build_personalization(cfg).local_keys(model))
    assert bool(local) == (method in ("fedbn", "local_head"))  # what the model declares stays; the rest travels
    if method == "local_head":
        assert local == {k for k in model.state_dict() if k.startswith("head.")}
    if method == "fedbn":  # the text LayerNorm and the image encoder's GroupNorms, weights and biases
        assert any(k.startswith("text_proj.0.") for k in local) and any("image_encoder" in k for k in local)
    assert sorted((r, n) for n, r, _, _ in sent) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for node, rnd, content, state in sent:
        travelled = _tensors(content)
        assert PERSONAL_STATE not in content  # no record of its own
        assert ("cv_delta" in travelled) == bool(more)
        for name, tensors in travelled.items():  # arrays, and any strategy record: none holds a local key
            assert not (set(tensors) & local), (method, name)
            assert set(tensors) == set(model.state_dict()) - local
        own = state.get(PERSONAL_STATE, {})
        if method == "finetune":
            assert not own  # made when scored, never kept
            continue
        assert own, (method, node, rnd)  # kept in context.state (and so in client_state's file)
        same = [k for k, v in own.items() for t in travelled.values() if k in t and torch.equal(v, t[k])]
        # no travelling tensor equals a personal one; ditto's own model may share the placeholders of a modality
        # no meme of tiny_data misses (no gradient ever reaches them)
        assert all(k.startswith("missing_") for k in same) if method == "ditto" else not same, (method, same)
    if method in ("fedbn", "local_head", "ditto"):  # round 2 started from round 1's own tensors, then trained on
        for node in (0, 1):
            first, second = (s[PERSONAL_STATE] for n, _, _, s in sent if n == node)
            moved = [k for k in first if not torch.equal(first[k], second[k])]
            assert moved and all(first[k].shape == second[k].shape for k in first)
    # the server's per-member block: both models' spread over the 2 clients, AUROCs in [0, 1]
    for row in (r for r in metrics["rounds"] if r["round"] > 0):
        block = row["members"]
        for which in ("global", "personal"):
            stats = block[which]
            assert stats["clients"] in (1, 2)
            assert 0 <= stats["worst"] <= stats["worst_decile"] <= stats["mean"] <= 1
        assert sorted(c["partition"] for c in block["by_client"]) == [0, 1]
    if method == "local_head":
        _exported_folders_predict_the_clients_own_scores(export, overrides, tmp_path / "run")


def _exported_folders_predict_the_clients_own_scores(export: Path, overrides: str, run_dir: Path) -> None:
    """Each client's exported folder loads as a run folder and scores its kept-back memes as the client did."""
    figure = (
        run_dir / "report" / "members.png"
    )  # `fedmemes report`'s figure of the per-member scores, written at the end
    assert figure.stat().st_size > 10_000 and "members.png" in (run_dir / "report.md").read_text()
    for pid in (0, 1):
        folder = export / f"client-{pid}"
        scores = json.loads((folder / SCORES_FILE).read_text())
        assert scores["partition"] == pid and scores["round"] == 2
        run = load_run(folder, "final")  # as `fedmemes predict` and `serve` load it
        cfg = load_config(overrides)
        val = client_memes(cfg, pid, 2)[1]
        prob = run.score(val)
        assert len(prob) == len(val) == len(scores["p_hateful"]) > 0
        np.testing.assert_allclose(prob, scores["p_hateful"], atol=1e-5)
        if pid == 0:  # `fedmemes serve` on the folder: one of the client's memes, the client's own score
            meme = val[0]
            with meme.img.open("rb") as f:
                got = TestClient(create_app(run)).post(
                    "/predict", data={"text": meme.text}, files={"image": ("meme.png", f, "image/png")}
                )
            assert got.json()["p_hateful"] == pytest.approx(scores["p_hateful"][0], abs=1e-5)
        head = {k: v for k, v in run.model.state_dict().items() if k.startswith("head.")}
        other = load_run(export / f"client-{1 - pid}", "best").model.state_dict()
        assert any(not torch.equal(v, other[k]) for k, v in head.items())  # each client its own head


def test_dittos_own_model_is_the_weight_mix_of_its_personal_and_the_global_model(small_config):
    torch.manual_seed(0)
    global_, personal = build_model(small_config()), build_model(small_config())
    for p in personal.parameters():  # v moved away from the global model
        p.data.add_(torch.randn_like(p))
    g = {k: t.clone() for k, t in global_.state_dict().items()}
    v = {k: t.clone() for k, t in personal.state_dict().items()}
    trained = [k for k in g if g[k].is_floating_point() and not torch.equal(g[k], v[k])]
    assert trained
    for mix in (0.0, 0.5, 0.75, 1.0):
        mixed = interpolate(personal, global_, mix).state_dict()
        for k in trained:
            torch.testing.assert_close(mixed[k], mix * v[k] + (1 - mix) * g[k])
        assert all(torch.equal(mixed[k], g[k]) for k in g if not g[k].is_floating_point())  # counters stay
    for model, before in ((global_, g), (personal, v)):  # neither input changes
        assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    with pytest.raises(ValueError, match=r"personalization.mix must be a number in \[0, 1\]"):
        Ditto(mix=1.5)


def test_spread_of_member_scores_leaves_undefined_ones_out():
    stats = spread([0.9, 0.5, -1.0, 0.7])
    assert stats == pytest.approx({"mean": 0.7, "worst": 0.5, "worst_decile": 0.54, "clients": 3})
    block = member_spread({7: (1, 0.6, 0.8), 3: (0, -1.0, 0.4)})
    assert [c["partition"] for c in block["by_client"]] == [0, 1] and block["by_client"][0]["global"] is None
    assert block["global"]["clients"] == 1 and block["personal"]["mean"] == pytest.approx(0.6)
    assert shared_only({"a": torch.zeros(1), "b": torch.ones(1)}, ["b"]).keys() == {"a"}


def test_member_scores_leave_only_as_the_site_policy_allows(small_config):
    from fedmemes.privacy import site_policy
    from fedmemes.privacy.site_policy import SitePolicy

    metrics = {"num-examples": 9, "partition_id": 0, "global_auroc": 0.6, "personal_auroc": 0.7, "val_n": 3}
    asked = small_config("personalization=local_head")  # eval_every follows server.eval_every: asked for
    assert site_policy.shared(SitePolicy(), asked, metrics).keys() == {
        "num-examples",
        "partition_id",
        "global_auroc",
        "personal_auroc",
    }
    assert "global_auroc" not in site_policy.shared(SitePolicy(share=["val_accuracy"]), asked, metrics)
    assert "global_auroc" not in site_policy.shared(SitePolicy(), small_config(""), metrics)  # none: not asked
    # a policy listing its targets before the group existed runs `none`, and refuses the others until it opts in
    old = [t for t in site_policy.DEFAULT_TARGETS if "personalization" not in t]
    assert site_policy.refusals(SitePolicy(allowed_targets=old), small_config("")) == []
    assert site_policy.refusals(SitePolicy(allowed_targets=old), asked)


@pytest.mark.parametrize("asks", ["server.secagg=true", "client.dp.epsilon=4.0"])
def test_a_run_asking_for_the_whole_model_in_each_reply_refuses_local_tensors(tiny_data, asks):
    cfg = load_config(f"{tiny_data.overrides} num_clients=2 personalization=local_head {asks}")
    local = build_personalization(cfg).local_keys(build_model(cfg))
    with pytest.raises(ConfigError, match=f"{asks.split('=')[0]} needs the whole model.*personalization=local_head"):
        build_strategy(cfg, local_keys=local)
    plain = load_config(f"{tiny_data.overrides} num_clients=2 personalization=ditto {asks}")  # whole model: runs
    assert build_strategy(plain, local_keys=build_personalization(plain).local_keys(build_model(plain))) is not None


@pytest.mark.usefixtures("server_identity")  # conftest: Flower stamps messages with it
def test_a_sites_own_local_dp_refuses_a_run_that_keeps_tensors_local(tiny_data, tmp_path, monkeypatch):
    site = tmp_path / "site.yaml"  # the site's own floor: the server cannot know it, the client refuses the round
    site.write_text("local_dp: {epsilon: 4.0, delta: 1.0e-5, clipping_norm: 1.0}\n")
    monkeypatch.setenv(site_policy.POLICY_ENV, str(site))
    run = f"{tiny_data.overrides} num_clients=2 personalization=fedbn"
    context = Context(1, 7, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {"overrides": run})
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")

    def never(m: Message, c: Context) -> Message:
        raise AssertionError("the round must not train")

    with pytest.raises(ValueError, match="this site's local_dp needs the whole model.*personalization=fedbn"):
        client_dp.local_dp(msg, context, never)
