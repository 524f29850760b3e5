"""Read what the server sent and the node's state; build the local loss and gradient hook; pack the extra reply.

The ClientApp's adapter for fedmemes/federation/local_objectives.py. SCAFFOLD is on when the instruction holds
the server control variate (record `scaffold_c`), FedDyn when its config holds `feddyn-alpha`;
the local loss is `loss=` (conf/loss/*.yaml) and works with every strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from hydra.utils import instantiate
from torch import nn

from fedmemes.federation.local_objectives import CrossEntropy, FedDynCorrection, ScaffoldCorrection

SCAFFOLD_C = "scaffold_c"  # instruction record: the server control variate c
CV_DELTA = "cv_delta"  # reply record: c_i(new) - c_i(old)
SCAFFOLD_STATE = "scaffold_ci"  # context.state: this client's control variate c_i
FEDDYN_ALPHA = "feddyn-alpha"  # train config key
FEDDYN_STATE = "feddyn_g"  # context.state: this client's FedDyn gradient state g_k


@dataclass
class LocalSetup:
    """What `engine.train` gets (`loss_fn`, `grad_hook`) and what runs after it (`finish`)."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    grad_hook: Callable[[nn.Module], None] | None = None
    _after: list[Callable[[nn.Module], dict[str, ArrayRecord]]] = field(default_factory=list)

    def finish(self, model: nn.Module) -> dict[str, ArrayRecord]:
        """Update the node's state and return the extra reply records (e.g. {'cv_delta': ...})."""
        extra: dict[str, ArrayRecord] = {}
        for step in self._after:
            extra.update(step(model))
        return extra


def _state_tensors(state: RecordDict, key: str) -> dict[str, torch.Tensor] | None:
    return state.array_records[key].to_torch_state_dict() if key in state.array_records else None


def local_setup(
    content: RecordDict,
    state: RecordDict,
    model: nn.Module,
    label_counts: list[int],
    loss_cfg: Any = None,
    local_keys: Iterable[str] = (),
) -> LocalSetup:
    """Build the local objective from the instruction `content` and the node's `state` (updated by `finish`);
    `local_keys` (personalization) are never averaged, so SCAFFOLD leaves their gradients uncorrected."""
    loss = instantiate(loss_cfg, label_counts=label_counts) if loss_cfg is not None else CrossEntropy()
    setup = LocalSetup(loss_fn=None if type(loss) is CrossEntropy else loss)  # None: the engine's own loss
    hooks: list[Callable[[nn.Module], None]] = []
    config = content.config_records["config"] if "config" in content.config_records else ConfigRecord()
    if SCAFFOLD_C in content.array_records:
        scaffold = ScaffoldCorrection(
            model, content.array_records[SCAFFOLD_C].to_torch_state_dict(), _state_tensors(state, SCAFFOLD_STATE)
        )
        for key in local_keys:  # the server's c holds zeros there: c - c_i would only pull the client's own tensors
            if key in scaffold.correction:
                scaffold.correction[key].zero_()
        hooks.append(scaffold)

        def scaffold_after(_: nn.Module) -> dict[str, ArrayRecord]:
            delta = scaffold.delta()
            state[SCAFFOLD_STATE] = ArrayRecord(scaffold.new_state())
            return {CV_DELTA: ArrayRecord(delta)}

        setup._after.append(scaffold_after)
    alpha = float(cast(float, config.get(FEDDYN_ALPHA, 0.0)))  # the strategy sends a float
    if alpha > 0:
        dyn = FedDynCorrection(model, alpha, _state_tensors(state, FEDDYN_STATE))
        hooks.append(dyn)

        def feddyn_after(trained: nn.Module) -> dict[str, ArrayRecord]:
            state[FEDDYN_STATE] = ArrayRecord(dyn.new_state(trained))
            return {}

        setup._after.append(feddyn_after)
    if hooks:

        def grad_hook(model: nn.Module) -> None:
            for hook in hooks:
                hook(model)

        setup.grad_hook = grad_hook
    return setup
