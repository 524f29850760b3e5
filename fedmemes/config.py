"""The one bridge between Hydra and Flower: compose configs from an overrides string, build objects."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flwr.app import RecordDict
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from fedmemes.config_schema import ConfigError, allowed_for, bad_value, check_ranges, register
from fedmemes.privacy import server_dp
from fedmemes.privacy.secagg import SecAggSettings, refusal
from fedmemes.strategies.resumable import levels, resumable
from fedmemes.strategies.sampling import fill_sizes, plan_from, with_sampling
from fedmemes.strategies.update_bounds import DEFAULT_MAX_CLIENT_WEIGHT, DEFAULT_MAX_UPDATE_NORM, UpdateBounds
from fedmemes.strategies.validation import with_reply_checks

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the models (and torch) are imported where a model is built, not here
    from fedmemes.federation.personalization import Personalization
    from fedmemes.models.base import MemeClassifier

# Flower's run_simulation gives the apps an empty run_config, so the CLI also passes
# the overrides in this variable (Ray actors inherit the driver's environment).
OVERRIDES_ENV = "FEDMEMES_OVERRIDES"
OVERRIDES_KEY = "overrides"  # the run_config key under `flwr run` and deployments

# The seed's (Flower <= 1.x) strategy keys -> Flower 1.42's names.
SEED_STRATEGY_KEYS = {
    "fraction_fit": "fraction_train",
    "min_fit_clients": "min_train_nodes",
    "min_available_clients": "min_available_nodes",
    "min_evaluate_clients": "min_evaluate_nodes",
}
# Seed-era keys with no server.strategy equivalent in Flower 1.42 -> where that setting lives now.
REMOVED_STRATEGY_KEYS = {
    "on_fit_config_fn": "the server sends lr and num_epochs itself: set lr=... num_epochs=...",
    "on_evaluate_config_fn": "the server sends the evaluate config itself: delete the key",
    "evaluate_fn": "the server scores its hold-out every round already: delete the key",
    "initial_parameters": "the initial model is built from model=...: delete the key",
    "fit_metrics_aggregation_fn": "Flower 1.42 calls it train_metrics_aggr_fn and fedmemes sets it: delete the key",
    "evaluate_metrics_aggregation_fn": "Flower 1.42 calls it evaluate_metrics_aggr_fn: rename the key",
    "accept_failures": "failed and malformed replies are always dropped (strategies/validation.py): delete the key",
    "inplace": "Flower 1.42 always aggregates in place: delete the key",
}
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}


def overrides_of(run_config: dict[str, Any]) -> str:
    """Return the Hydra overrides string for this run: run_config first, then the environment."""
    return str(run_config.get(OVERRIDES_KEY) or os.environ.get(OVERRIDES_ENV, ""))


def message_overrides(run_config: dict[str, Any], content: RecordDict) -> str:
    """Return the run's overrides plus the recipe a message's config carries (the one the server tries or chose)."""
    recipe = str(content["config"].get("recipe", "")) if "config" in content.config_records else ""
    return f"{overrides_of(run_config)} {recipe}".strip()


CONF_DIR = Path(__file__).parent / "conf"
CONF_PACKAGE = "pkg://fedmemes.conf"
# OmegaConf's type names in "could not be converted to X" -> what a user may type instead.
TYPE_WORDS = {
    "Float": "a number",
    "Integer": "a whole number",
    "Boolean": "true or false",
    "bool": "true or false",
    "String": "text",
}
register()  # the schema node that config.yaml names first; also done when fedmemes.conf is imported


def group_options(group: str) -> list[str]:
    """Return the options of config group `group` (e.g. model/image_encoder) in the packaged conf folder."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _check_groups(args: list[str]) -> dict[str, str]:
    """Raise ConfigError for an override naming a group option that does not exist; return {key: value as typed}."""
    parser, parsed = OverridesParser.create(), []
    for arg in args:  # one by one, so the message names the override Hydra cannot read
        try:
            parsed += parser.parse_overrides([arg])
        except OverrideParseException as e:
            raise ConfigError(
                f"{arg} is not an override Hydra can read ({str(e).splitlines()[0]}); "
                "write key=value, e.g. lr=0.01 or partition.label_noise=[0.0,0.3]"
            ) from None
    chosen: dict[str, str] = {}
    own_search_path = any(o.key_or_group == "hydra.searchpath" for o in parsed)  # groups may have more options there
    for o in parsed:
        group = o.key_or_group
        if not o.is_delete():
            chosen[group] = o.get_value_element_as_str()
        if own_search_path or group.startswith("hydra") or o.is_delete() or not (CONF_DIR / group).is_dir():
            continue
        value = o.value()
        for name in value if isinstance(value, list) else [value]:
            if name is not None and str(name) not in group_options(group):
                raise bad_value(group, name, f"one of {', '.join(group_options(group))}")
    return chosen


def _one_line(err: Exception, chosen: dict[str, str]) -> ConfigError:
    """Turn Hydra's multi-line composition error into one line: key, value, what is allowed, what to do."""
    cause = err.__cause__
    if isinstance(cause, ValidationError) and cause.full_key:
        kind = re.search(r"converted to (\w+)|not a valid (\w+)", str(cause.msg))
        type_name = kind.group(kind.lastindex or 0) if kind else ""
        allowed = allowed_for(cause.full_key) or TYPE_WORDS.get(type_name, "another type")
        return bad_value(cause.full_key, chosen.get(cause.full_key, cause.value), allowed)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return bad_value(group, name, f"one of {', '.join(err.options or group_options(group))}")
    missing = re.search(r"(?:In '(.+?)': )?Could not override '(.+?)'\. No match in the defaults list", str(err))
    if missing and "/" in missing.group(2):  # e.g. experiment=real_memes model=text_only: no image encoder to swap
        where, (parent, _, child) = missing.group(1), missing.group(2).rpartition("/")
        fits = [
            m
            for m in group_options(parent)
            if re.search(rf"^\s*-\s*{child}\s*:", (CONF_DIR / parent / f"{m}.yaml").read_text(), re.M)
        ]
        source = where.replace("/", "=", 1) if where else f"{missing.group(2)}={chosen.get(missing.group(2))}"
        sets = f"{source} sets {missing.group(2)}, but" if where else f"{source}:"
        return ConfigError(
            f"{sets} {parent}={chosen.get(parent, '?')} has no {child}: "
            f"pick a {parent} that has one ({', '.join(fits)}) or leave out {source}"
        )
    unknown = re.match(r"Could not override '(.+?)'\.\s+To append to your config use \+", str(err))
    if unknown:  # a key the config does not have: most often a typo
        key = unknown.group(1)
        return ConfigError(
            f"{key}={chosen.get(key)} is not allowed: there is no key {key} in the config; check the "
            f"spelling, or add a new key with +{key}={chosen.get(key)}"
        )
    lines = str(err).splitlines()
    if len(lines) < 2 and cause is not None:  # Hydra's own line says little alone: add the cause's first line
        lines.append(str(cause).splitlines()[0])
    return ConfigError(" ".join(line.strip() for line in lines if line.strip()))


def compose_checked(args: list[str], config_name: str = "config", config_dir: str | None = None) -> DictConfig:
    """Compose config.yaml (or `config_name` in `config_dir`) with `args`, check types and ranges; one-line errors."""
    if config_dir:  # e.g. the k8s ConfigMap's deployment.yaml, which starts from our packaged config.yaml
        args = [f"hydra.searchpath=[{CONF_PACKAGE}]", *args]
    chosen = _check_groups(args)  # {override key: value as typed}, groups and plain keys alike
    try:
        if GlobalHydra.instance().is_initialized():  # inside a hydra.main job (fedmemes simulate/server)
            cfg = compose(config_name, overrides=args)
        else:
            init = (
                initialize_config_dir(str(Path(config_dir).resolve()), version_base="1.3")
                if config_dir
                else initialize_config_module("fedmemes.conf", version_base="1.3")
            )
            with init:
                cfg = compose(config_name, overrides=args)
        OmegaConf.resolve(cfg)
    except (ConfigCompositionException, MissingConfigException, OmegaConfBaseException) as e:
        raise _one_line(e, chosen) from None
    check_ranges(cfg, chosen)
    return cfg


@functools.lru_cache(maxsize=8)
def load_config(overrides: str = "") -> DictConfig:
    """Compose `fedmemes/conf/config.yaml` with overrides such as 'num_rounds=3 model=early_fusion', checked."""
    cfg = compose_checked(shlex.split(overrides))
    OmegaConf.set_readonly(cfg, True)  # cached and shared: nobody may change it
    return cfg


def _accepted(cls: type) -> tuple[set[str], bool]:
    """Return the named constructor parameters of `cls`, following **kwargs into its bases, and if it stays open-
    ended."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return names, True
        params = inspect.signature(klass.__init__).parameters  # type: ignore[misc]  # read, never called
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names, False
    return names, True


def _build_one(spec: dict[str, Any], where: str, hooks: dict[str, Any], outer: bool = False) -> Any:
    for old, new in SEED_STRATEGY_KEYS.items():
        if old in spec:
            log.warning("%s.%s is the seed's name; Flower 1.42 calls it %s", where, old, new)
            spec[new] = spec.pop(old)
    for old, why in REMOVED_STRATEGY_KEYS.items():
        if old in spec:
            raise ValueError(f"{where}.{old} is a Flower 1.x key that Flower 1.42 dropped; {why}")
    target = get_class(spec["_target_"])
    min_valid = spec.pop("min_valid_replies", None)  # the reply checks' setting (outermost only), not the class's
    accepted, open_ended = _accepted(target)
    unknown = sorted(set(spec) - accepted - HYDRA_KEYS)
    if unknown and not open_ended:
        raise ValueError(f"{where}: {target.__name__} takes no {unknown}; it takes {sorted(accepted - set(hooks))}")
    extra = {k: v for k, v in hooks.items() if k in accepted}
    # a wrapper (central DP) around another strategy
    if isinstance(spec.get("strategy"), dict) and "_target_" in spec["strategy"]:
        extra["strategy"] = _build_one(spec.pop("strategy"), f"{where}.strategy", hooks)
    args = instantiate(spec, _partial_=True, **extra)
    if not outer:  # resumable: the mixin a resumed run needs to equal the stopped one (FedOpt's step, DP noise)
        return resumable(target)(*args.args, **args.keywords)
    # The outermost strategy gets the reply checks: same class, filtering replies before it aggregates.
    strategy: Any = with_sampling(with_reply_checks(resumable(target)))(*args.args, **args.keywords)
    strategy.reply_report_fn = hooks.get("reply_report_fn")
    strategy.min_valid_replies = None if min_valid is None else int(min_valid)
    return strategy


# Secure aggregation and local DP work on the whole model in a reply; fedbn and local_head send only part of it.
WHOLE_MODEL_ONLY = (
    "{what} needs the whole model in every reply, but personalization={method} keeps some tensors on each client; "
    "use personalization=none, finetune or ditto with it"
)


def keeps_tensors_local(cfg: DictConfig) -> bool:
    """Whether the run's personalization keeps tensors on each client (fedbn, local_head): replies hold the rest."""
    from fedmemes.federation.personalization import LocalParts

    return isinstance(build_personalization(cfg), LocalParts)


def build_strategy(cfg: DictConfig, local_keys: Iterable[str] = (), **hooks: Any) -> Any:
    """Instantiate `server.strategy` with seeded sampling and reply checks in front, mapping the seed's key names and
    passing the hooks each level accepts; `local_keys` never come back in replies (personalization)."""
    spec = cast(dict[str, Any], OmegaConf.to_container(cfg.server.strategy, resolve=True))  # a mapping node
    local_keys = frozenset(local_keys)
    secagg = secagg_settings(cfg)
    if secagg is not None:  # refused before anything is built: the strategy would need each update
        level: Any = spec
        targets = []
        while isinstance(level, dict) and "_target_" in level:
            targets.append(get_class(level["_target_"]))
            level = level.get("strategy")
        if why := refusal(targets):
            raise ConfigError(why)
    if local_keys and (secagg is not None or OmegaConf.select(cfg, "client.dp.epsilon") is not None):
        what = "server.secagg" if secagg is not None else "client.dp.epsilon"
        raise ConfigError(WHOLE_MODEL_ONLY.format(what=what, method=build_personalization(cfg).name))
    # the plan reads Flower 1.42's names (_build_one warns about the old ones)
    for (
        old,
        new,
    ) in SEED_STRATEGY_KEYS.items():
        level = spec
        while isinstance(level, dict):
            if old in level:
                level[new] = level[old]
            level = level.get("strategy")
    plan = plan_from(
        spec,
        int(cfg.num_clients),
        cfg.get("clients_per_round"),
        cfg.get("clients_per_eval_round"),
        int(cfg.random_seed),
    )
    size = plan.train.size(int(cfg.num_clients))
    if secagg is not None:
        secagg.check_round_size(size)
    # strategy=dp_fixed: Flower's accountant (None where it does not apply); only the fixed-clipping wrappers take it
    accountant = server_dp.accountant_for(cfg)
    hooks = {**hooks, "accountant": accountant} if accountant is not None else hooks
    strategy = _build_one(fill_sizes(spec, size), "server.strategy", hooks, outer=True)
    # Flower accounts a plain average of the clipped updates: every reply counts once, whatever it claims
    strategy.uniform_weights = accountant is not None
    strategy.sampling, strategy.sample_report_fn = plan, hooks.get("sample_report_fn")
    strategy.update_bounds = UpdateBounds.parse(
        cfg.server.get("max_update_norm", DEFAULT_MAX_UPDATE_NORM),
        cfg.server.get("max_client_weight", DEFAULT_MAX_CLIENT_WEIGHT),
    )
    strategy.reply_facts_fn = hooks.get("reply_facts_fn")  # client facts keyed by the node that sent them
    strategy.local_keys = local_keys  # personalization: tensors no reply holds (validation.py)
    strategy.secure_aggregate = secagg is not None
    noise_seed = OmegaConf.select(cfg, "server.dp.noise_seed")
    for level in levels(strategy):  # DP wrappers: pinned noise (null: a secret drawn at the first round)
        if hasattr(level, "noise_seed"):
            level.noise_seed = None if noise_seed is None else int(noise_seed)
    return strategy


def secagg_settings(cfg: DictConfig) -> SecAggSettings | None:
    """Return the SecAgg+ settings when `server.secagg` is on (`server.secagg_params`), else None."""
    if not cfg.server.get("secagg", False):
        return None
    params = cast(dict[str, Any], OmegaConf.to_container(cfg.server.get("secagg_params") or {}, resolve=True))
    try:
        settings = SecAggSettings(**params)
        settings.workflow(None)  # Flower's own checks of the numbers, at config time
    except (TypeError, ValueError) as err:
        raise ConfigError(f"server.secagg_params: {err}") from None
    return settings


def build_model(cfg: DictConfig) -> MemeClassifier:
    """Instantiate the configured model (`model._target_`)."""
    model: MemeClassifier = instantiate(cfg.model)
    return model


def build_personalization(cfg: DictConfig) -> Personalization:
    """Instantiate `personalization._target_` (none: every tensor shared) from the run's config."""
    from fedmemes.federation.personalization import Personalization  # torch: imported where it is built

    spec = cfg.get("personalization")
    method: Personalization = instantiate(spec) if spec else Personalization()
    return method
