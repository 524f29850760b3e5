"""Client-side parts of the non-IID remedies: local losses (FedLC) and gradient corrections (SCAFFOLD, FedDyn).

Pure torch: `client_app.py` reads what the server sent and the node's `context.state`, builds these,
and hands `loss_fn` / `grad_hook` to `engine.train`. Per-tensor state is keyed by the model's
`state_dict` names (the names that travel), so it fits the same ArrayRecord checks as the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensors = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Return the parameters that receive gradients, by state_dict name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def zeros_like_state(model: nn.Module) -> Tensors:
    """Return fp32 zeros for every tensor that travels (buffers included, so records match the model's)."""
    return {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in model.state_dict().items()}


class CrossEntropy:
    """Plain cross-entropy (the default `loss=ce`); takes the client's label counts only to share FedLC's signature."""

    def __init__(self, label_counts: Sequence[int] | None = None) -> None:
        del label_counts

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of 2-logit softmax or 1-logit sigmoid heads."""
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), label.float())
        return F.cross_entropy(logits, label)


class FedLCLoss:
    """FedLC's calibrated loss (Zhang et al., ICML 2022): cross-entropy on logits z_y - tau * n_y^(-1/4).

    n_y is this client's count of label y (at least 1, so an absent class gets the largest offset).
    Rare local classes get their logit lowered during training only, so the model need not push
    them down to fit the local majority: less drift towards each client's own label mix. Inference
    uses the raw logits. A 1-logit head is the 2-class case with logits [0, z].
    """

    def __init__(self, label_counts: Sequence[int], tau: float = 1.0) -> None:
        counts = torch.as_tensor(list(label_counts), dtype=torch.float32).clamp_min(1.0)
        self.offset = tau * counts.pow(-0.25)
        self.tau = tau

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Return the mean calibrated loss."""
        offset = self.offset.to(logits.device)
        if logits.shape[1] == 1:  # softmax over [0, z] is sigmoid(z): shift z by the offsets' difference
            shifted = logits.squeeze(1) - (offset[1] - offset[0])
            return F.binary_cross_entropy_with_logits(shifted, label.float())
        return F.cross_entropy(logits - offset[: logits.shape[1]], label)


class ScaffoldCorrection:
    """SCAFFOLD's client side (Karimireddy et al., 2020): every gradient gets + (c - c_i).

    The new client control variate is the mean raw (uncorrected) gradient over the local steps;
    with plain SGD this equals the paper's option II, c_i - c + (x - y) / (K * lr), and it stays
    meaningful under Adam. `delta()` is c_i(new) - c_i(old), what the server averages into c.
    """

    def __init__(
        self, model: nn.Module, c_server: Mapping[str, torch.Tensor], c_client: Mapping[str, torch.Tensor] | None
    ) -> None:
        params = trainable(model)
        self.old = {
            k: torch.as_tensor(v, dtype=torch.float32) for k, v in (c_client or zeros_like_state(model)).items()
        }
        missing = sorted(set(params) - set(c_server))
        if missing:
            raise KeyError(
                f"SCAFFOLD: the server's control variate lacks {missing[:3]}; server and client must build the "
                "same model"
            )
        self.correction = {k: (c_server[k] - self.old.get(k, 0.0)).float() for k in params}
        self.grad_sum = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
        self.steps = 0

    def __call__(self, model: nn.Module) -> None:
        """Record the raw gradients, then add the correction (called between backward and step)."""
        for name, p in trainable(model).items():
            if p.grad is None:
                continue
            self.grad_sum[name] += p.grad.detach().float().cpu()
            p.grad.add_(self.correction[name].to(p.grad.device, p.grad.dtype))
        self.steps += 1

    def new_state(self) -> Tensors:
        """Return c_i after this round (unchanged when no step ran)."""
        if self.steps == 0:
            return dict(self.old)
        new = dict(self.old)
        new.update({k: g / self.steps for k, g in self.grad_sum.items()})
        return new

    def delta(self) -> Tensors:
        """Return c_i(new) - c_i(old) for every travelling tensor (zeros for buffers)."""
        new = self.new_state()
        return {k: (new[k] - self.old[k]).float() for k in self.old}


class FedDynCorrection:
    """FedDyn's client side (Acar et al., ICLR 2021): minimise L_k(w) - <g_k, w> + (alpha/2)||w - w_global||^2.

    g_k (the client's state) starts at 0 and after each round becomes g_k - alpha * (w_k - w_global).
    """

    def __init__(self, model: nn.Module, alpha: float, g_client: Mapping[str, torch.Tensor] | None) -> None:
        if alpha <= 0:
            raise ValueError(f"feddyn-alpha must be > 0, got {alpha}; set server.strategy.alpha")
        self.alpha = alpha
        self.start = {k: p.detach().clone() for k, p in trainable(model).items()}
        self.g = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (g_client or zeros_like_state(model)).items()}

    def __call__(self, model: nn.Module) -> None:
        """Add -g_k + alpha * (w - w_global) to each gradient."""
        for name, p in trainable(model).items():
            if p.grad is not None:
                extra = self.alpha * (p.detach() - self.start[name]) - self.g[name].to(p.device, p.dtype)
                p.grad.add_(extra.to(p.grad.dtype))

    def new_state(self, model: nn.Module) -> Tensors:
        """Return g_k after this round."""
        new = dict(self.g)
        for name, p in trainable(model).items():
            new[name] = self.g[name] - self.alpha * (p.detach().float().cpu() - self.start[name].float().cpu())
        return new
