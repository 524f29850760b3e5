"""deploy/: the Dockerfile, compose.yml and Kubernetes manifests parse and call commands our CLI has, with valid
flags."""

import json
import shlex
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from fedmemes import cli
from fedmemes.deploy import manager, supernode

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _k8s() -> list[dict]:
    return [doc for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text()) if doc]


def _check_command(argv: list[str]) -> None:
    """Fail unless `fedmemes argv...` names a command of ours and its flags parse."""
    name = next((n for n in cli.COMMANDS if argv[: len(n.split())] == n.split()), None)
    assert name is not None, f"unknown command fedmemes {argv}"
    rest = argv[len(name.split()) :]
    if name == "client":
        supernode.command_from_args(supernode.parser().parse_args(rest))
    elif name == "manager":
        with pytest.raises(SystemExit) as done:  # --help proves the parser accepts every flag before it
            manager.main([*rest, "--help"])
        assert done.value.code == 0
    elif name == "server":
        overrides = [o for i, o in enumerate(rest) if not o.startswith("--") and not rest[i - 1].startswith("--")]
        assert all("=" in o for o in overrides), rest  # Hydra overrides (or Hydra's own --config-dir/--config-name)


def _resuming_server(line: str, run_dir: str) -> list[list[str]]:
    """Check a server's shell line resumes from RUN_DIR's checkpoint; return its fedmemes argv for both branches."""
    assert f"d={run_dir};" in line
    assert "if [ -f $d/checkpoint.pt ] || [ -f $d/checkpoint.prev.pt ]; then set -- resume=$d;" in line
    assert "elif [ -f $d/metrics.json ]; then set -- overwrite=true;" in line  # results without a finished round
    words = shlex.split(line.split("exec ", 1)[1])
    assert words[0] == "fedmemes" and words[-1] == "$@"
    return [[w.replace("$d", run_dir) for w in [*words[1:-1], extra]] for extra in ("resume=$d", "overwrite=true")]


def test_compose_runs_server_two_clients_two_managers_with_our_commands():
    spec = yaml.safe_load((DEPLOY / "compose.yml").read_text().replace("$$", "$"))  # compose's escape for a literal $
    services = spec["services"]
    server = services.pop("server")
    assert server["entrypoint"] == ["sh", "-c"]
    for argv in _resuming_server(server["command"][0], "/runs/compose"):
        _check_command(argv)
        assert (
            "server.certs=/certs" in argv and "server.address=0.0.0.0:9092" in argv and "run_dir=/runs/compose" in argv
        )
    roles = sorted(s["command"][0] for s in services.values())
    assert roles == ["client", "client", "manager", "manager"]
    for service in services.values():
        _check_command(service["command"])
        if service["command"][0] == "manager":  # heartbeats carry the token: https, checked against the CA
            command = service["command"]
            assert (
                command[command.index("--status-url") + 1].startswith("https://") and "--root-certificates" in command
            )
            assert all(port.startswith("127.0.0.1:") for port in service["ports"])  # plain-HTTP API: host loopback only


def test_k8s_manifests_have_every_piece_and_valid_commands():
    docs = _k8s()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "Job", "PersistentVolumeClaim", "Secret", "Service", "StatefulSet"]
    for doc in docs:
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            args = container["args"]
            if doc["kind"] == "Job":  # the server: resumes after a restart instead of overwriting
                for argv in _resuming_server(args[0], "/runs/k8s"):
                    _check_command(argv)
                continue
            if container.get("command") == ["sh", "-c"]:  # a shell line: check the fedmemes part
                words = shlex.split(args[0].replace("${HOSTNAME##*-}", "0").replace('"$HOSTNAME"', "c-0"))
                args = words[words.index("fedmemes") + 1 :]
                assert args[args.index("--status-url") + 1].startswith("https://")
            _check_command(args)
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert yaml.safe_load(cm["data"]["deployment.yaml"])["run_dir"] == "/runs/k8s"
    clients = next(d for d in docs if d["kind"] == "StatefulSet")
    assert clients["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"  # a volume per client


def test_configmap_hydra_config_composes_with_ours(tmp_path):
    cm = next(d for d in _k8s() if d["kind"] == "ConfigMap")
    (tmp_path / "deployment.yaml").write_text(cm["data"]["deployment.yaml"])
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        cfg = compose("deployment", overrides=["hydra.searchpath=[pkg://fedmemes.conf]"])
    GlobalHydra.instance().clear()
    assert cfg.num_rounds == 10 and cfg.server.certs == "/certs" and cfg.server.address == "0.0.0.0:9092"
    assert cfg.model._target_ and cfg.server.strategy._target_  # the package's own groups came along


def test_dockerfile_enters_through_our_cli_and_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    entry = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT"))
    assert json.loads(entry.split(None, 1)[1]) == ["fedmemes"]
    root = DEPLOY.parent
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                if not src.endswith("*"):  # README.md*: copied when present
                    assert (root / src).exists(), f"Dockerfile copies missing {src}"
    assert "torch==2.13.0" in text  # pinned CPU wheel, never the multi-GB CUDA build by accident
