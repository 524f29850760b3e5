"""Flower ServerApp: build model and strategy from the config, search recipes, run the rounds, score the hold-out."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from omegaconf import DictConfig, OmegaConf

from fedmemes.bookkeeping import checkpoint, checkpoint_files, client_state, private_files, resume_config, run_config
from fedmemes.bookkeeping import run_dir as run_dirs
from fedmemes.bookkeeping.run_steps import EXIT_PRIVACY_BUDGET, as_disk_error
from fedmemes.config import build_personalization, build_strategy, load_config, overrides_of, secagg_settings
from fedmemes.federation import engine, recipe_search
from fedmemes.federation.server_run import EarlyStop, ServerRun
from fedmemes.privacy import server_dp
from fedmemes.privacy.secagg import SecAggGrid
from fedmemes.strategies.resumable import set_round_offset

log = logging.getLogger(__name__)
app = ServerApp()


def run_dir_of(cfg: DictConfig) -> Path:
    """Return the absolute run directory (Flower's processes do not share the caller's cwd)."""
    if cfg.run_dir or cfg.resume:  # resuming continues in the stopped run's own directory
        return Path(cfg.run_dir or cfg.resume).resolve()
    return (Path.cwd() / "outputs" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")).resolve()


def _build(cfg: DictConfig, overrides: str, run_dir: Path) -> ServerRun:
    """Return the server's side of a run (or of a recipe trial) with its strategy built."""
    run = ServerRun(cfg, overrides, run_dir)
    run.strategy = build_strategy(
        cfg,
        train_metrics_aggr_fn=run.aggregate_train_metrics,
        branches=run.model.branches(),  # modality_aware: the model declares each tensor's block
        local_keys=build_personalization(cfg).local_keys(run.model),  # personalization: what stays on clients
        reply_report_fn=run.record,  # dropped-reply counts land in the round's metrics.json row
        sample_report_fn=run.record,  # so do the node ids sampled to train (and to evaluate)
        reply_facts_fn=run.record_node,  # client facts keyed by the node that sent them
    )
    return run


def _rounds(grid: Grid, run: ServerRun, initial: dict[str, Any], recipe: str) -> ArrayRecord:
    """Run the rounds left; return the final global model (the latest one when server.patience stopped early)."""
    cfg, strategy = run.cfg, run.strategy
    assert strategy is not None
    # after a resume the sample seed, FedOpt's step and the DP noise follow the true round (strategies/resumable.py)
    set_round_offset(strategy, run.offset)
    # round_offset: after a resume, clients seed by the true round, not the strategy's restarted count;
    # run_key: the folder of the clients' own state files (client_state.py), the same after a resume;
    # recipe: the chosen candidate's overrides, which every client composes on top of the run's own.
    train_config: dict[str, int | float | str] = {
        "lr": float(cfg.lr),
        "num_epochs": int(cfg.num_epochs),
        "round_offset": run.offset,
        client_state.RUN_KEY: run.run_key,
    }
    secure = secagg_settings(cfg)
    if secure is not None:  # server.secagg: the strategy sees one reply per round, the unmasked sum (secagg.py)
        grid = cast(Grid, SecAggGrid(grid, secure, report_fn=run.record, facts_fn=run.record_node))
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=cfg.num_rounds - run.offset,
            timeout=float(cfg.server.round_timeout),  # a dead client's reply is waited for at most this long
            train_config=ConfigRecord({**train_config, "recipe": recipe}),
            evaluate_config=ConfigRecord({"recipe": recipe}),
            evaluate_fn=run.evaluate,
        )
    except EarlyStop:
        return ArrayRecord(run.latest)
    except PrivacyBudgetExhausted:  # raised before the next round's clients are sent anything
        last = max((r["round"] for r in run.history.rounds), default=run.offset)
        run.history.ended = {"code": EXIT_PRIVACY_BUDGET, "reason": server_dp.budget_reason(cfg, strategy, last)}
        run.history.write()
        log.error("%s", run.history.ended["reason"])
        return ArrayRecord(run.latest)
    return cast(ArrayRecord, result.arrays)


def _choose_recipe(grid: Grid, cfg: DictConfig, overrides: str, run_dir: Path) -> dict[str, Any] | None:
    """Try each of server.recipes for server.trial_rounds on the hold-out (recipe_search); None when there are none."""
    candidates = {str(k): str(v) for k, v in (cfg.server.get("recipes") or {}).items()}
    if not candidates:
        return None
    earlier = recipe_search.load(run_dir)  # a resumed run keeps the recipe it chose
    if earlier is not None:
        # a run folder is data: the overrides composed here come from this command's server.recipes, never the file
        if candidates.get(str(earlier["chosen"])) != earlier.get("overrides"):
            raise run_config.RunConfigError(
                f"{run_dir / recipe_search.RECIPES_FILE}: chosen={earlier['chosen']} with overrides "
                f"{earlier.get('overrides')!r} is not one of this run's server.recipes; {run_config.RULE}"
            )
        return earlier
    for name, recipe in candidates.items():  # a recipe that does not compose stops the run before any trial
        try:
            load_config(f"{overrides} {recipe}")
        except ValueError as err:
            raise ValueError(f"server.recipes.{name}={recipe!r}: {err}") from None
    rounds = min(int(cfg.server.trial_rounds), int(cfg.num_rounds))  # a trial never outlasts the run

    def trial(name: str, recipe: str) -> list[float | None]:
        log.info("recipe trial %r (%s): %d rounds on the hold-out", name, recipe, rounds)
        trial_overrides = f"{overrides} {recipe} num_rounds={rounds} server.eval_every=1 server.patience=null"
        run = _build(load_config(trial_overrides), trial_overrides, run_dir / recipe_search.TRIALS_DIR / name)
        _rounds(grid, run, engine.trainable_state(run.model), recipe)
        return [r.get("auroc") for r in run.history.rounds if r["round"] > 0]

    record = recipe_search.choose(candidates, trial, run_dir, rounds)
    log.info("recipe %r chosen on the hold-out: %s", record["chosen"], record["overrides"])
    return record


def _remove_stale(run_dir: Path) -> None:
    """Remove the temporaries a killed run left in its folder and in its recipe trials' (recipes/<name>/)."""
    trials = sorted(p for p in (run_dir / recipe_search.TRIALS_DIR).glob("*") if p.is_dir())
    stale = [p for f in (run_dir, *trials) for p in private_files.remove_stale(f, (checkpoint_files.LEGACY_TEMP,))]
    if stale:
        log.info("removed %d temporary files a stopped run left in %s", len(stale), run_dir)


def _rounds_so_far(cfg: DictConfig, run_dir: Path, recipes: dict[str, Any] | None) -> Path | None:
    """Return the folder whose checkpoint holds the run's rounds so far: its own (resume), else the chosen trial's."""
    if cfg.resume and checkpoint.exists(run_dir):  # checkpoint.load falls back to the previous one
        return run_dir
    if recipes:  # the winner's trial was this run's first rounds (same seeds, same model): go on from there
        return run_dir / recipe_search.TRIALS_DIR / str(recipes["chosen"])
    return run_dir if cfg.resume else None  # no checkpoint to resume: checkpoint.load names the fix


def _config_file(cfg: DictConfig, run_dir: Path) -> None:
    """Write config.yaml once, at the run's start; a resume is checked against it and never rewrites it."""
    path = run_dir / run_config.CONFIG_FILE
    if cfg.resume and path.is_file():
        resume_config.check(run_dir, cfg)  # predict and report read the original: a resume must not change it
        return
    # the chosen recipe's, resolved: predict rebuilds this model (run_config checks it first)
    private_files.write_text(path, OmegaConf.to_yaml(cfg))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run `num_rounds` rounds of the configured strategy with server-side hold-out scoring."""
    overrides = overrides_of(context.run_config)
    cfg = load_config(overrides)
    run_dir = run_dir_of(cfg)
    try:
        _main(grid, cfg, overrides, run_dir)
    except Exception as err:
        if (disk := as_disk_error(err, run_dir)) is not None:
            log.error("%s", disk.strerror)  # one line in fedmemes.log (and Flower's log when deployed)
            # deployed, Flower hands `fedmemes server` only str(error), in the run's status: make that the line
            raise disk from err
        raise


def _main(grid: Grid, cfg: DictConfig, overrides: str, run_dir: Path) -> None:
    # never overwrite an earlier run's results
    run_dirs.check_fresh(run_dir, cfg.resume, bool(cfg.get("overwrite", False)))
    if cfg.resume and (run_dir / run_config.CONFIG_FILE).is_file():
        run_config.read(run_dir)  # a run folder is data: refuse one whose config.yaml names code, before any build
    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(run_dir)
    recipes = _choose_recipe(grid, cfg, overrides, run_dir)
    recipe = recipes["overrides"] if recipes else ""
    if recipe:
        overrides = f"{overrides} {recipe}"
        cfg = load_config(overrides)
    _config_file(cfg, run_dir)
    log.info("Using device: %s | run dir %s", engine.pick_device(cfg.device).type, run_dir)
    run = _build(cfg, overrides, run_dir)
    run.history.recipes = recipes
    initial = engine.trainable_state(run.model)
    start_from = _rounds_so_far(cfg, run_dir, recipes)
    if start_from is not None:
        ckpt = checkpoint.load(start_from)
        checkpoint.check_fits(ckpt, cfg, initial, start_from)  # before any client trains: model, tensors, strategy
        initial = run.resume(ckpt)
    # resumed after the last round, or after server.patience stopped it: only the final scoring was left
    if run.offset and run.patience_spent(run.offset):
        run.history.stopped_early = run.offset
    if cfg.num_rounds <= run.offset or run.history.stopped_early:
        run.finish(ArrayRecord(initial))
        return
    run.finish(_rounds(grid, run, initial, recipe))
