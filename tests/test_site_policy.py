"""A client site's policy: what a run's config may build on the client, limits no server can raise, what leaves."""

import hashlib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedmemes.config import build_model, load_config
from fedmemes.deploy import supernode
from fedmemes.federation import client_app, engine
from fedmemes.privacy import site_policy
from fedmemes.privacy.site_policy import PolicyError, PolicyRefusal, SitePolicy

pytestmark = pytest.mark.usefixtures("server_identity")  # Messages are stamped with the server's task identity
# What a hostile server's overrides may carry: each names a callable that would run (or create MARKER) on the client.
HOSTILE = {
    "model": "model._target_=os.system",
    "optimizer": "optimizer._partial_=false optimizer._target_=builtins.open '~optimizer.weight_decay' "
    "+optimizer.file={marker} +optimizer.mode=w",
    "loss": "loss._target_=pathlib.Path.touch +loss.self={marker}",
    "strategy (nested)": "strategy=dp_fixed server.strategy.strategy._target_=os.system",
    "through an allowed prefix": "model._target_=fedmemes.models.base.torch.save",
    "an allowed module's function": "model._target_=fedmemes.data.synthetic.generate",
}


def _context(overrides: str, policy: Path | None = None) -> Context:
    node = {"partition-id": 0, "num-partitions": 2, **({"policy": str(policy)} if policy else {})}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={"overrides": overrides})


def _train_message(cfg, server_round: int = 1, num_epochs: int = 1) -> Message:
    arrays = ArrayRecord(engine.trainable_state(build_model(cfg)))
    config = ConfigRecord({"lr": 0.003, "num_epochs": num_epochs, "server-round": server_round})
    return Message(content=RecordDict({"arrays": arrays, "config": config}), dst_node_id=7, message_type="train")


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_target_outside_the_allow_list_is_refused_before_anything_is_built(kind, tiny_data, tmp_path):
    marker = tmp_path / "marker"
    overrides = f"{tiny_data.overrides} {HOSTILE[kind].format(marker=marker)}"
    cfg = load_config(overrides)
    with pytest.raises(PolicyRefusal, match=r"site partition-0 refuses .*_target_=") as err:
        client_app.train(_train_message(load_config(tiny_data.overrides)), _context(overrides))
    assert site_policy.refusals(SitePolicy(), cfg)  # the same refusal, read without a ClientApp
    assert not marker.exists()
    assert "os.system" in str(err.value) or "builtins.open" in str(err.value) or "_target_=" in str(err.value)


def test_the_default_allows_every_packaged_config(tiny_data):
    for extra in ("", "strategy=modality_aware", "strategy=dp_fixed", "loss=fedlc", "optimizer=sgd logger=csv"):
        assert site_policy.refusals(SitePolicy(), load_config(f"{tiny_data.overrides} {extra}")) == []


def test_limits_hold_against_a_server_that_asks_for_more(tiny_data, small_config, tmp_path):
    policy = _policy(tmp_path, "name: client-a\nlimits: {max_rounds: 2, max_local_epochs: 1, max_image_size: 32}\n")
    cfg = small_config()
    asks = {
        "round 3 > limits.max_rounds=2": (tiny_data.overrides, 3, 1),
        "num_epochs=4 > limits.max_local_epochs=1": (tiny_data.overrides, 1, 4),
        "image_size=64 > limits.max_image_size=32": (f"{tiny_data.overrides} image_size=64", 1, 1),
    }
    for refusal, (overrides, server_round, epochs) in asks.items():
        with pytest.raises(PolicyRefusal, match=f"site client-a refuses {refusal}"):
            client_app.train(_train_message(load_config(overrides), server_round, epochs), _context(overrides, policy))
    # within the limits the same site trains, and says which policy it holds
    reply = client_app.train(_train_message(cfg, 2, 1), _context(tiny_data.overrides, policy))
    assert reply.content["site"]["policy_sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert reply.content["site"]["name"] == "client-a"


def test_max_memes_per_round_caps_local_training(tiny_data, small_config, tmp_path):
    cfg = small_config()
    msg = _train_message(cfg)
    sent = msg.content[
        "arrays"
    ].to_torch_state_dict()  # both train from this model (build_model draws from torch's RNG)
    free = client_app.train(msg, _context(tiny_data.overrides))
    capped_policy = _policy(tmp_path, f"limits: {{max_memes_per_round: {cfg.batch_size}}}\n")
    capped = client_app.train(msg, _context(tiny_data.overrides, capped_policy))

    def moved(reply: Message) -> float:
        back = reply.content["arrays"].to_torch_state_dict()
        return float(sum((back[k] - sent[k]).norm() ** 2 for k in sent) ** 0.5)

    assert 0 < moved(capped) < moved(free)  # one batch moves the model less than the full epoch


def test_by_default_only_what_the_strategy_reads_leaves(tiny_data, small_config, tmp_path):
    cfg = small_config()
    plain = client_app.train(_train_message(cfg), _context(tiny_data.overrides))
    assert set(plain.content["metrics"]) == {"num-examples", "partition_id"}
    overrides = f"{tiny_data.overrides} strategy=modality_aware"
    aware = client_app.train(_train_message(load_config(overrides)), _context(overrides))
    assert set(aware.content["metrics"]) == {"num-examples", "partition_id", "n_text", "n_image", "n_both"}
    # a site that keeps modality counts cannot join a modality_aware run: it says so instead of replying short
    keeps = _policy(tmp_path, "share: [label_counts]\n")
    with pytest.raises(PolicyRefusal, match=r"needs \['modality_counts'\]"):
        client_app.train(_train_message(load_config(overrides)), _context(overrides, keeps))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("limits: {max_rounds: 0}\n", "limits.max_rounds: Input should be greater than 0"),
        ("limits: {max_round: 3}\n", "limits.max_round: Extra inputs are not permitted"),
        ("share: [passwords]\n", "share.0: Input should be 'label_counts'"),
        ("allowed_targets: []\n", "allowed_targets: List should have at least 1 item"),
        ("- a list\n", "a policy is a mapping"),
        ("name: [unclosed\n", "cannot read the policy"),
    ],
)
def test_a_bad_policy_file_gets_one_line_naming_file_and_key(text, message, tmp_path):
    path = _policy(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        site_policy.load(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_client_check_prints_the_policy_and_its_hash(tmp_path, capsys):
    path = _policy(tmp_path, "name: client-a\nlimits: {max_rounds: 5, device: cpu}\n")
    with pytest.raises(SystemExit) as done:
        supernode.main(
            ["--superlink", "127.0.0.1:1", "--partition-id", "0", "--num-partitions", "2"]
            + ["--policy", str(path), "--check"]
        )
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() in out and "max_rounds: 5" in out and "os.system" not in out
    assert "fedmemes.models." in out  # the defaults are shown filled in
    with pytest.raises(SystemExit) as bad:
        supernode.main(["--superlink", "h:1", "--partition-id", "0", "--num-partitions", "2", "--policy", "/nope"])
    assert bad.value.code == 2


def test_the_policy_path_travels_in_the_node_config(tmp_path):
    path = _policy(tmp_path, "name: a\n")
    config = supernode.node_config(0, 2, None, path)
    assert f'policy="{path.resolve()}"' in config


def test_a_machine_policy_in_the_environment_applies_where_no_policy_is_given(tmp_path, monkeypatch):
    path = _policy(tmp_path, "name: sim-site\nlimits: {max_local_epochs: 1}\n")
    monkeypatch.setenv(site_policy.POLICY_ENV, str(path))
    policy, digest = site_policy.for_node({"partition-id": 0})
    assert policy.name == "sim-site" and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "own").mkdir()
    other = _policy(tmp_path / "own", "name: own\n")
    assert site_policy.for_node({"policy": str(other)})[0].name == "own"  # --policy wins over the environment
    monkeypatch.setenv(site_policy.POLICY_ENV, str(tmp_path / "gone.yaml"))
    with pytest.raises(PolicyError, match="gone.yaml"):  # never the looser default when the named file is missing
        site_policy.for_node({})


def test_a_policy_written_before_the_layout_move_allows_the_moved_classes(tiny_data):
    """A site.yaml naming fedmemes.local_objectives (now under federation/) still allows the losses, and only them."""
    before = [t.replace("fedmemes.federation.", "fedmemes.") for t in site_policy.DEFAULT_TARGETS]
    assert "fedmemes.local_objectives." in before
    assert site_policy.target_allowed("fedmemes.federation.local_objectives.FedLCLoss", before)
    assert site_policy.target_allowed(
        "fedmemes.federation.local_objectives.CrossEntropy", ["fedmemes.local_objectives.CrossEntropy"]
    )
    assert not site_policy.target_allowed("fedmemes.federation.engine.train", before)
    cfg = load_config(f"{tiny_data.overrides} loss=fedlc")
    assert site_policy.refusals(SitePolicy(allowed_targets=before), cfg) == []
