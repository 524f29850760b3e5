"""Map the `_target_` paths of runs saved before a module move (models/components/, issue 28) to today's paths."""

from __future__ import annotations

from typing import Any

# Issue 28 moved the loose top-level modules into federation/, privacy/, bookkeeping/ and tools/ (runs.py became
# tools/list_runs.py, report/ tools/report/): a saved config.yaml names e.g. fedmemes.local_objectives.FedLCLoss,
# a site policy's allowed_targets fedmemes.local_objectives.
LAYOUT_MOVED = {
    "fedmemes.checkpoint.": "fedmemes.bookkeeping.checkpoint.",
    "fedmemes.checkpoint_files.": "fedmemes.bookkeeping.checkpoint_files.",
    "fedmemes.client_state.": "fedmemes.bookkeeping.client_state.",
    "fedmemes.history.": "fedmemes.bookkeeping.history.",
    "fedmemes.private_files.": "fedmemes.bookkeeping.private_files.",
    "fedmemes.resume_config.": "fedmemes.bookkeeping.resume_config.",
    "fedmemes.run_config.": "fedmemes.bookkeeping.run_config.",
    "fedmemes.run_dir.": "fedmemes.bookkeeping.run_dir.",
    "fedmemes.run_steps.": "fedmemes.bookkeeping.run_steps.",
    "fedmemes.client_app.": "fedmemes.federation.client_app.",
    "fedmemes.client_corrections.": "fedmemes.federation.client_corrections.",
    "fedmemes.cluster.": "fedmemes.federation.cluster.",
    "fedmemes.engine.": "fedmemes.federation.engine.",
    "fedmemes.local_objectives.": "fedmemes.federation.local_objectives.",
    "fedmemes.node_datasets.": "fedmemes.federation.node_datasets.",
    "fedmemes.recipe_search.": "fedmemes.federation.recipe_search.",
    "fedmemes.server_app.": "fedmemes.federation.server_app.",
    "fedmemes.server_run.": "fedmemes.federation.server_run.",
    "fedmemes.testing.": "fedmemes.federation.testing.",
    "fedmemes.client_dp.": "fedmemes.privacy.client_dp.",
    "fedmemes.client_secagg.": "fedmemes.privacy.client_secagg.",
    "fedmemes.secagg.": "fedmemes.privacy.secagg.",
    "fedmemes.server_dp.": "fedmemes.privacy.server_dp.",
    "fedmemes.site_policy.": "fedmemes.privacy.site_policy.",
    "fedmemes.image_urls.": "fedmemes.tools.image_urls.",
    "fedmemes.runs.": "fedmemes.tools.list_runs.",
    "fedmemes.predict.": "fedmemes.tools.predict.",
    "fedmemes.predict_inputs.": "fedmemes.tools.predict_inputs.",
    "fedmemes.report.": "fedmemes.tools.report.",
    "fedmemes.serve.": "fedmemes.tools.serve.",
    "fedmemes.serve_guards.": "fedmemes.tools.serve_guards.",
}

# Run directories keep the `_target_` strings of their day in config.yaml (read by `fedmemes predict`
# and `serve`) and checkpoint.pt (compared on `resume=`). The encoders moved to models/components/ and
# the seed's HatefulMemesFusionModel became EarlyFusion; these prefixes let those runs load and resume.
MOVED = {
    **{
        f"fedmemes.models.{name}.": f"fedmemes.models.components.{name}."
        for name in (
            "text_encoder",
            "trainable_text_encoder",
            "image_encoder",
            "image_backbone",
            "resnet",
            "efficientnet",
            "clip",
        )
    },
    "fedmemes.models.early_fusion.HatefulMemesFusionModel": "fedmemes.models.early_fusion.EarlyFusion",
    **LAYOUT_MOVED,
}


def current_target(target: str) -> str:
    """Return today's path for a `_target_` a saved run may hold (unchanged when it did not move)."""
    for old, new in MOVED.items():
        if target.startswith(old):
            return new + target[len(old) :]
    return target


def upgrade_targets(node: Any) -> Any:
    """Return a plain config (dicts and lists) with every `_target_` string rewritten by `current_target`."""
    if isinstance(node, dict):
        return {
            k: current_target(v) if k == "_target_" and isinstance(v, str) else upgrade_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node
