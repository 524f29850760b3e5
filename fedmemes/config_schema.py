"""Types and ranges of fedmemes' config: a Hydra structured config under config.yaml, and the checks after compose."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from fedmemes.strategies.update_bounds import parse_weight

# config.yaml lists this node first in its defaults: the YAML keeps every default value and comment (fields
# here are MISSING, so there is one place for a default), the dataclasses give the types, so Hydra rejects
# `lr=abc` while it composes (and in `--cfg job`).
SCHEMA_NAME = "fedmemes_schema"

# Group nodes (`_target_` and any keys the class takes) stay free-form: users add their own keys there.


@dataclass
class ServerDpSchema:
    """Types of `server.dp:` (privacy accounting of the fixed-clipping DP strategies)."""

    max_epsilon: float | None = MISSING
    target_delta: float = MISSING
    noise_seed: int | None = None  # None: a secret per run (fedmemes/strategies/resumable.py)


@dataclass
class ClientDpSchema:
    """Types of `client.dp:` (local DP on every train reply)."""

    epsilon: float | None = MISSING
    delta: float = MISSING
    clipping_norm: float = MISSING
    sensitivity: float | None = MISSING


@dataclass
class ClientSchema:
    """Types of the `client:` block (what every ClientApp applies to its replies)."""

    dp: ClientDpSchema = field(default_factory=ClientDpSchema)


@dataclass
class SecAggParamsSchema:
    """Types of `server.secagg_params` (Flower's SecAggPlusWorkflow arguments; Flower checks the values)."""

    num_shares: Any = MISSING  # an int (a count) or a float (a share): Flower reads them differently, so no coercion
    reconstruction_threshold: Any = MISSING  # the same
    max_weight: float = MISSING
    clipping_range: float = MISSING
    quantization_range: int = MISSING
    modulus_range: int = MISSING


@dataclass
class ServerSchema:
    """Types of the `server:` block (`fedmemes server` and the ServerApp)."""

    strategy: Any = None
    address: str = MISSING
    control_port: int = MISSING
    insecure: bool = MISSING
    superlink: str | None = MISSING
    certs: str | None = MISSING
    supernode_auth: bool = MISSING
    authorized_keys: list[str] = MISSING
    flwr_home: str = MISSING
    status_host: str = MISSING
    status_port: int | None = MISSING
    heartbeat_s: float = MISSING
    round_timeout: float = MISSING
    eval_every: int = MISSING
    patience: int | None = MISSING
    threshold_prior: float = MISSING
    recipes: Any = MISSING  # name -> overrides; free-form so a command line can set a whole new mapping
    trial_rounds: int = MISSING
    token_file: str | None = MISSING
    max_update_norm: Any = MISSING  # K*median, a number or null: UpdateBounds.parse reads it
    max_client_weight: Any = MISSING  # K/n, a share or null: UpdateBounds.parse reads it
    dp: ServerDpSchema = field(default_factory=ServerDpSchema)
    secagg: bool = MISSING
    secagg_params: SecAggParamsSchema = field(default_factory=lambda: SecAggParamsSchema())


@dataclass
class SimulationSchema:
    """Types of the `simulation:` block (`fedmemes simulate`)."""

    client_cpus: float = MISSING
    client_gpus: float = MISSING
    ray_address: str | None = MISSING
    status_linger_s: float = MISSING


@dataclass
class ConfigSchema:
    """Types of config.yaml's top-level keys; its groups (model, strategy, ...) are free-form."""

    dataset: Any = None
    partition: Any = None
    model: Any = None
    optimizer: Any = None
    logger: Any = None
    loss: Any = None
    personalization: Any = None
    random_seed: int = MISSING
    lr: float = MISSING
    num_epochs: int = MISSING
    local_steps: int | None = MISSING
    batch_size: int = MISSING
    num_rounds: int = MISSING
    num_clients: int = MISSING
    clients_per_round: int | None = MISSING
    clients_per_eval_round: int | None = MISSING
    image_size: int = MISSING
    local_val_share: float = MISSING
    device: str = MISSING
    amp: Any = MISSING  # a word or false: the choices are checked after compose
    cache_dir: str = MISSING
    run_dir: str | None = MISSING
    verbose: bool = MISSING
    resume: str | None = MISSING
    resume_allow_changes: list[str] = MISSING
    overwrite: bool = MISSING
    server: ServerSchema = field(default_factory=ServerSchema)
    client: ClientSchema = field(default_factory=ClientSchema)
    simulation: SimulationSchema = field(default_factory=SimulationSchema)


def register() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent), so config.yaml can name it in its defaults."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=ConfigSchema)


class ConfigError(ValueError):
    """A config the run cannot use: the message is one line naming the key, the value and what is allowed."""


def bad_value(key: str, value: Any, allowed: str) -> ConfigError:
    """Return the one-line error for `key=value` outside `allowed`."""
    return ConfigError(f"{key}={_show(value)} is not allowed: {key} must be {allowed}")


def _show(value: Any) -> str:
    # Hydra's override spelling: null, true/false, lists without quotes, so the user can paste it back.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(lo: int, hi: int | None = None, null: bool = False) -> tuple[Callable[[Any], bool], str]:
    """Return a test and its wording for a whole number in lo..hi (or null when `null`)."""
    text = f"a whole number >= {lo}" if hi is None else f"a whole number in {lo}..{hi}"

    def ok(v: Any) -> bool:
        return (null and v is None) or (
            isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
        )

    return ok, ("null or " if null else "") + text


def _positive(null: bool = False) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: (null and v is None) or (_number(v) and v > 0)), ("null or " if null else "") + "a number > 0"


def _share(v: Any) -> bool:
    return _number(v) and 0 <= v < 1


def _probability(v: Any) -> bool:
    return _number(v) and 0 < v < 1


def _share_or_count(v: Any) -> bool:
    return _number(v) and v >= 0 and (v < 1 or float(v).is_integer())


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
AMP = ("auto", "bf16", "fp16", "true", "false", "off")
UPDATE_NORM = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*\*\s*median\s*")  # the K*median form UpdateBounds.parse reads


def _norm_bound(v: Any) -> bool:
    if isinstance(v, (list, tuple)):  # both forms at once: [3*median, 10.0]
        return all(x is not None and _norm_bound(x) for x in v)
    relative = UPDATE_NORM.fullmatch(str(v))
    return v is None or (_number(v) and 0 < v < float("inf")) or (relative is not None and float(relative.group(1)) > 0)


def _weight_cap(v: Any) -> bool:
    try:
        parse_weight(v)
    except ValueError:
        return False
    return True


def allowed_for(key: str) -> str | None:
    """Return what `key` accepts in words, or None when no rule names it."""
    return next((allowed for k, _, allowed in _rules(DictConfig({})) if k == key), None)


def _rules(cfg: DictConfig) -> list[tuple[str, Callable[[Any], bool], str]]:
    """Return (key, test, allowed) for each checked key; some bounds depend on num_clients."""
    n = cfg.get("num_clients")
    per_round = _whole(1, n if isinstance(n, int) and n >= 1 else None, null=True)
    per_round = (per_round[0], per_round[1] + (f" (num_clients={n})" if isinstance(n, int) else ""))
    return [
        ("num_clients", *_whole(1)),
        ("clients_per_round", *per_round),
        ("clients_per_eval_round", *per_round),
        ("lr", *_positive()),
        ("batch_size", *_whole(1)),
        ("num_epochs", *_whole(1)),
        ("local_steps", *_whole(1, null=True)),
        ("num_rounds", *_whole(1)),
        ("image_size", *_whole(16)),
        ("random_seed", *_whole(0)),
        ("local_val_share", _share, "a share in [0, 1), e.g. 0.1"),
        ("device", lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None, "one of auto, cpu, cuda, cuda:N"),
        ("amp", lambda v: v is False or v is True or v is None or v in AMP, "one of auto, bf16, fp16, false"),
        ("server.control_port", *_whole(1, 65535)),
        ("server.status_port", *_whole(1, 65535, null=True)),
        (
            "server.address",
            lambda v: re.fullmatch(r".+:\d{1,5}", str(v)) is not None and 1 <= int(str(v).rsplit(":", 1)[1]) <= 65535,
            "HOST:PORT with a port in 1..65535",
        ),
        ("server.heartbeat_s", *_positive()),
        ("server.round_timeout", *_positive()),
        ("server.eval_every", *_whole(1)),
        ("server.patience", *_whole(1, null=True)),
        ("server.threshold_prior", lambda v: _number(v) and v >= 0, "a number of memes >= 0 (0: the raw pick)"),
        ("server.trial_rounds", *_whole(1)),
        (
            "server.recipes",
            lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
            'null or a mapping of names to override strings, e.g. {frozen: "lr=1e-3", finetune: "lr=1e-4"}',
        ),
        ("server.max_update_norm", _norm_bound, "null, K*median (e.g. 3*median), a number > 0 or a list of both"),
        ("server.max_client_weight", _weight_cap, "null, K/n with K >= 1 (e.g. 2/n) or a share in (0, 1]"),
        ("server.dp.max_epsilon", *_positive(null=True)),
        ("server.dp.target_delta", _probability, "a probability in (0, 1), e.g. 1e-5"),
        ("client.dp.epsilon", *_positive(null=True)),
        ("client.dp.delta", _probability, "a probability in (0, 1), e.g. 1e-5"),
        ("client.dp.clipping_norm", *_positive()),
        ("client.dp.sensitivity", *_positive(null=True)),
        ("server.secagg_params.num_shares", *_positive()),
        ("server.secagg_params.reconstruction_threshold", *_positive()),
        ("server.secagg_params.max_weight", *_positive()),
        ("server.secagg_params.clipping_range", *_positive()),
        ("server.secagg_params.quantization_range", *_whole(2)),
        ("server.secagg_params.modulus_range", *_whole(4, 2**32)),
        ("simulation.client_cpus", *_positive()),
        ("simulation.client_gpus", lambda v: _number(v) and v >= 0, "a number >= 0, e.g. 0.5"),
        ("simulation.status_linger_s", lambda v: _number(v) and v >= 0, "a number of seconds >= 0"),
        ("dataset.ocr", lambda v: v in ("missing", "always", "never"), "one of missing, always, never"),
        (
            "dataset.ocr_lang",
            lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z_]+(\+[A-Za-z_]+)*", v) is not None,
            "Tesseract language codes joined by +, e.g. eng or eng+hin",
        ),
        ("partition.missing_text_rate", _share, "a rate in [0, 1)"),
        ("partition.missing_image_rate", _share, "a rate in [0, 1)"),
        ("partition.text_only_clients", _share_or_count, "a share in [0, 1) or a whole count of clients >= 0"),
        ("partition.image_only_clients", _share_or_count, "a share in [0, 1) or a whole count of clients >= 0"),
        (
            "partition.label_noise",
            lambda v: _share(v) or (isinstance(v, (list, tuple)) and all(_share(x) for x in v)),
            "a rate in [0, 1) or a list of num_clients rates",
        ),
    ]


def _get(cfg: DictConfig, dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, (DictConfig, dict)) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, DictConfig):
        return True, dict(node)
    return True, list(node) if hasattr(node, "__iter__") and not isinstance(node, str) else node


def check_ranges(cfg: DictConfig, typed: dict[str, str] | None = None) -> None:
    """Raise ConfigError for the first key out of range, showing its value as typed when it was overridden."""
    for key, ok, allowed in _rules(cfg):
        present, value = _get(cfg, key)  # keys a config lacks (a user's own partition group) are skipped
        if present and not ok(value):
            raise bad_value(key, (typed or {}).get(key, value), allowed)
