"""Local differential privacy on the train reply: Flower's LocalDpMod, switched on by the run's `client.dp`."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import LocalDpMod
from flwr.clientapp.typing import ClientAppCallable
from omegaconf import DictConfig, OmegaConf

from fedmemes.config import load_config, message_overrides


def local_dp_mod(cfg: DictConfig) -> LocalDpMod | None:
    """Return Flower's LocalDpMod for the config's `client.dp`, or None when local DP is off (epsilon null)."""
    dp = OmegaConf.select(cfg, "client.dp")  # a config of the user's own (-cd) may have no client block
    if dp is None or dp.get("epsilon") is None:
        return None
    clip = float(dp.clipping_norm)
    # Two updates clipped to the same ball around the global model differ by at most its diameter.
    sensitivity = 2.0 * clip if dp.get("sensitivity") is None else float(dp.sensitivity)
    return LocalDpMod(clipping_norm=clip, sensitivity=sensitivity, epsilon=float(dp.epsilon), delta=float(dp.delta))


def local_dp(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip and noise this node's train reply when the run's `client.dp` asks for it; else pass the message through.

    A Flower mod, composable: in `mods=[secagg_mod, local_dp]` the noise is added before the update is masked.
    """
    mod = local_dp_mod(load_config(message_overrides(context.run_config, msg.content)))
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)
