"""Personalisation (personalization=...): which tensors stay on the client, and how a client gets its own model.

Pure torch. `none` shares everything; `fedbn` keeps normalisation layers local (Li et al., ICLR 2021);
`local_head` keeps the classifier head local (FedPer, Arivazhagan et al., 2019); `finetune` takes K
local steps on the global model before the client scores or exports; `ditto` trains a second,
personal model pulled toward the global one (Li et al., ICML 2021) and scores or exports its weight-by-weight
mix with the global model (model interpolation, Mansour et al., 2020). The model declares which keys
are its head and its norm layers (`MemeClassifier.head_keys`, `norm_keys`), never guessed from names.
The ClientApp's adapter (context.state, metrics, export) is fedmemes/federation/client_personal.py;
the server drops the local keys from what it expects back (strategies/validation.py `local_keys`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

Tensors = dict[str, torch.Tensor]
GradHook = Callable[[nn.Module], None]
# Train a model in place on this client's train share: (model, max steps or None for the round's own, gradient hook).
Fit = Callable[[nn.Module, int | None, GradHook | None], object]


class Personalization:
    """personalization=none: every tensor is shared and each client's model is the global one."""

    name = "none"  # the `personalization=` choice

    def __init__(self, eval_every: int | None = None, export_dir: str | None = None) -> None:
        if eval_every is not None and int(eval_every) < 1:
            raise ValueError(f"personalization.eval_every must be null or a whole number >= 1, got {eval_every}")
        self.eval_every = None if eval_every is None else int(eval_every)
        self.export_dir = export_dir or None

    def local_keys(self, model: nn.Module) -> list[str]:
        """Return the state-dict keys that never leave the client."""
        return []

    def scores_round(self, server_round: int, num_rounds: int) -> bool:
        """Whether clients score the global and their own model on their kept-back memes in this round."""
        every = self.eval_every
        return every is not None and (server_round % every == 0 or server_round >= num_rounds)

    def start(self, model: nn.Module, saved: Mapping[str, torch.Tensor] | None) -> None:
        """Put this client's local tensors (from its state) into the received global model before it trains."""
        keys = [k for k in self.local_keys(model) if saved is not None and k in saved]
        if keys and saved is not None:
            model.load_state_dict({**model.state_dict(), **{k: saved[k] for k in keys}})

    def personal(
        self, received: nn.Module, trained: nn.Module, saved: Mapping[str, torch.Tensor] | None, fit: Fit, needed: bool
    ) -> tuple[nn.Module | None, Tensors]:
        """Return this client's own model (None when not `needed` and it would cost training) and the state to keep."""
        del trained, saved, fit, needed
        return received, {}


class LocalParts(Personalization):
    """Base of fedbn and local_head: some tensors train on the client and stay there; the rest is averaged."""

    def personal(
        self, received: nn.Module, trained: nn.Module, saved: Mapping[str, torch.Tensor] | None, fit: Fit, needed: bool
    ) -> tuple[nn.Module | None, Tensors]:
        """The client's own model is the received global one with its own local tensors (as it starts the round: the
        same shared tensors as the global model it is compared with); the trained local tensors are the state kept."""
        state = trained.state_dict()
        keep = {k: state[k].detach().to("cpu", torch.float32, copy=True) for k in self.local_keys(trained)}
        if not needed:
            return None, keep
        own = copy.deepcopy(received)
        self.start(own, saved)
        return own, keep


class FedBN(LocalParts):
    """personalization=fedbn: normalisation layers (weights, biases, running statistics) stay local."""

    name = "fedbn"  # the `personalization=` choice

    def local_keys(self, model: nn.Module) -> list[str]:
        """Return the model's norm-layer keys."""
        return list(model.norm_keys())  # type: ignore[operator]  # a MemeClassifier declares them


class LocalHead(LocalParts):
    """personalization=local_head (FedPer): the classifier head stays local, the body is averaged."""

    name = "local_head"  # the `personalization=` choice

    def local_keys(self, model: nn.Module) -> list[str]:
        """Return the model's head keys."""
        return list(model.head_keys())  # type: ignore[operator]  # a MemeClassifier declares them


class Finetune(Personalization):
    """personalization=finetune: the client's model is the global one after `steps` local steps on its own memes."""

    name = "finetune"  # the `personalization=` choice

    def __init__(self, steps: int = 10, eval_every: int | None = None, export_dir: str | None = None) -> None:
        super().__init__(eval_every, export_dir)
        if int(steps) < 1:
            raise ValueError(f"personalization.steps must be a whole number >= 1, got {steps}")
        self.steps = int(steps)

    def personal(
        self, received: nn.Module, trained: nn.Module, saved: Mapping[str, torch.Tensor] | None, fit: Fit, needed: bool
    ) -> tuple[nn.Module | None, Tensors]:
        """Fine-tune a copy of the received global model, only when it is scored or exported (nothing is kept)."""
        if not needed:
            return None, {}
        tuned = copy.deepcopy(received)
        fit(tuned, self.steps, None)
        return tuned, {}


class ProximalPull:
    """Gradient hook adding lam * (w - w_global): the gradient of (lam/2)||w - w_global||^2 (Ditto's pull)."""

    def __init__(self, anchor: nn.Module, lam: float) -> None:
        self.anchor = {n: p.detach().clone() for n, p in anchor.named_parameters()}
        self.lam = lam

    def __call__(self, model: nn.Module) -> None:
        """Add the pull to every gradient (called between backward and step)."""
        for name, p in model.named_parameters():
            if p.grad is not None and name in self.anchor:
                pull = self.lam * (p.detach() - self.anchor[name].to(p.device, p.dtype))
                p.grad.add_(pull.to(p.grad.dtype))


class Ditto(Personalization):
    """personalization=ditto: a personal model v, kept on the client, trains each round with a pull toward the global
    model it received; the global model trains as usual and is shared whole. The client's own model (scored,
    exported) is mix * v + (1 - mix) * the received global model, weight by weight: model interpolation (Mansour et
    al., 2020, "Three approaches for personalization"); mix=1 is the paper's Ditto."""

    name = "ditto"  # the `personalization=` choice

    def __init__(
        self, lam: float = 0.1, mix: float = 0.5, eval_every: int | None = None, export_dir: str | None = None
    ) -> None:
        super().__init__(eval_every, export_dir)
        if not float(lam) >= 0:
            raise ValueError(f"personalization.lam must be a number >= 0, got {lam}")
        if not 0 <= float(mix) <= 1:
            raise ValueError(f"personalization.mix must be a number in [0, 1] (1: Ditto's own model alone), got {mix}")
        self.lam, self.mix = float(lam), float(mix)

    def personal(
        self, received: nn.Module, trained: nn.Module, saved: Mapping[str, torch.Tensor] | None, fit: Fit, needed: bool
    ) -> tuple[nn.Module | None, Tensors]:
        """Train v (from the state, else from the received model) for the round's steps; keep v, return the mix (only
        when `needed`: it costs a model copy)."""
        own = copy.deepcopy(received)
        if saved:
            own.load_state_dict(dict(saved))
        fit(own, None, ProximalPull(received, self.lam) if self.lam > 0 else None)
        keep = {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in own.state_dict().items()}
        return (interpolate(own, received, self.mix) if needed else None), keep


def interpolate(personal: nn.Module, global_: nn.Module, mix: float) -> nn.Module:
    """Return a copy of `global_` whose floating tensors are mix * personal + (1 - mix) * global_ (counters stay);
    mix=1 returns `personal` itself, exactly (a lerp by 1 may round)."""
    if mix == 1:
        return personal
    mine, theirs = personal.state_dict(), global_.state_dict()
    mixed = copy.deepcopy(global_)
    mixed.load_state_dict(
        {
            k: torch.lerp(t, mine[k].to(t.dtype), mix) if t.is_floating_point() else t  # t + mix * (mine - t)
            for k, t in theirs.items()
        }
    )
    return mixed


def shared_only(tensors: Mapping[str, torch.Tensor], local: list[str] | set[str]) -> Tensors:
    """Return the tensors that may leave the client: all but the local keys."""
    drop = set(local)
    return {k: v for k, v in tensors.items() if k not in drop}


UNDEFINED = -1.0  # a client's AUROC on a kept-back share holding one class (replies carry numbers, never NaN)


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Summarise per-client scores: mean, worst client, worst decile (10th percentile, linear), count."""
    arr = np.asarray([v for v in values if v >= 0], dtype=float)  # UNDEFINED scores are left out
    if not len(arr):
        return {"mean": None, "worst": None, "worst_decile": None, "clients": 0}
    return {
        "mean": float(arr.mean()),
        "worst": float(arr.min()),
        "worst_decile": float(np.quantile(arr, 0.1)),
        "clients": len(arr),
    }


def member_spread(members: Mapping[int, tuple[object, float, float]]) -> dict[str, object]:
    """Return metrics.json's `members` block from {node: (partition, global AUROC, personal AUROC)}."""
    rows = sorted(members.items(), key=lambda kv: (str(kv[1][0]), kv[0]))
    return {
        "global": spread([float(g) for _, (_, g, _) in rows]),
        "personal": spread([float(p) for _, (_, _, p) in rows]),
        "by_client": [
            {"node": node, "partition": part, "global": _score(g), "personal": _score(p)} for node, (part, g, p) in rows
        ],
    }


def _score(value: float) -> float | None:
    return float(value) if value >= 0 else None
