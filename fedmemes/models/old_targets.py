"""Map the model `_target_` paths of runs saved before the models/components move to today's paths."""

from __future__ import annotations

from typing import Any

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
