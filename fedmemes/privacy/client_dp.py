"""Local differential privacy on the train reply: Flower's LocalDpMod, switched on by the run's `client.dp` or by the
site's own policy (`local_dp:`), whichever is stronger."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import LocalDpMod
from flwr.clientapp.typing import ClientAppCallable
from omegaconf import DictConfig, OmegaConf

from fedmemes.config import WHOLE_MODEL_ONLY, build_personalization, keeps_tensors_local, load_config, message_overrides
from fedmemes.privacy import site_policy
from fedmemes.privacy.site_policy import LocalDp


def local_dp_mod(cfg: DictConfig, floor: LocalDp | None = None) -> LocalDpMod | None:
    """Return Flower's LocalDpMod for the config's `client.dp` and the site's `floor` (each setting the stricter of
    the two), or None when neither asks for local DP."""
    dp = OmegaConf.select(cfg, "client.dp")  # a config of the user's own (-cd) may have no client block
    run = None if dp is None or dp.get("epsilon") is None else dp
    if run is None and floor is None:
        return None
    pick = [] if run is None else [(float(run.epsilon), float(run.delta), float(run.clipping_norm))]
    pick += [] if floor is None else [(floor.epsilon, floor.delta, floor.clipping_norm)]
    epsilon, delta, clip = (min(values) for values in zip(*pick, strict=True))
    # Two updates clipped to the same ball around the global model differ by at most its diameter; a site's own
    # guarantee never trusts a smaller sensitivity the run claims.
    claimed = None if run is None or run.get("sensitivity") is None else float(run.sensitivity)
    sensitivity = 2.0 * clip if claimed is None else claimed
    if floor is not None:
        sensitivity = max(sensitivity, 2.0 * clip)
    return LocalDpMod(clipping_norm=clip, sensitivity=sensitivity, epsilon=epsilon, delta=delta)


def local_dp(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip and noise this node's train reply when the run's `client.dp` asks for it; else pass the message through.

    A Flower mod, composable: in `mods=[secagg_mod, local_dp]` the noise is added before the update is masked.
    """
    floor = site_policy.for_node(context.node_config)[0].local_dp
    cfg = load_config(message_overrides(context.run_config, msg.content))
    mod = local_dp_mod(cfg, floor)
    if mod is not None and keeps_tensors_local(cfg):  # this site's own local_dp: the server could not refuse the run
        raise ValueError(WHOLE_MODEL_ONLY.format(what="this site's local_dp", method=build_personalization(cfg).name))
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)
