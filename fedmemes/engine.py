"""Train and evaluate loops and metrics: pure torch, no Flower, no Hydra."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

# Builds the local optimizer from the trainable parameters and the round's lr (conf/optimizer/*.yaml).
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def pick_device(requested: str = "auto") -> torch.device:
    """Return CUDA when present (or asked for), else CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed image size: let cuDNN pick the fastest kernels
    return device


def _forward(model: nn.Module, batch: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    text, image, mask, label = (t.to(device, non_blocking=True) for t in batch)
    # uint8 pixels -> [0, 1]; cached image-encoder outputs (float) go in as they are.
    image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
    return model(text, image, mask), label


def _loss_and_prob(logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and P(hateful) for either 2-logit softmax or 1-logit sigmoid heads."""
    if logits.shape[1] == 1:
        logit = logits.squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, label.float()), torch.sigmoid(logit)
    return F.cross_entropy(logits, label), logits.softmax(dim=1)[:, 1]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the tensors that travel: the model's state dict (a MemeClassifier leaves frozen tensors out of it)."""
    return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}


def train(
    model: nn.Module,
    dataset: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    proximal_mu: float = 0.0,
    optimizer: OptimizerFactory = torch.optim.Adam,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Train in place; return mean train loss and train accuracy of the last epoch.

    `optimizer(params, lr=lr)` is built fresh each call (Adam by default); `proximal_mu` > 0 adds
    FedProx's (mu/2)||w - w_global||^2 term; `max_steps` stops after that many batches in all.
    """
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        if max_steps is not None and steps >= max_steps:
            break
        total_loss, correct, seen = 0.0, 0, 0
        for batch in itertools.islice(loader, None if max_steps is None else max_steps - steps):
            logits, label = _forward(model, batch, device)
            loss, prob = _loss_and_prob(logits, label)
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(label)
            correct += int(((prob > 0.5).long() == label).sum())
            seen += len(label)
            steps += 1
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """Return P(hateful) per row, the labels, and the mean loss."""
    model.to(device).eval()
    probs, labels, total_loss = [], [], 0.0
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits, label = _forward(model, batch, device)
        loss, prob = _loss_and_prob(logits, label)
        total_loss += loss.item() * len(label)
        probs.append(prob.cpu().numpy())
        labels.append(label.cpu().numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=int), math.nan
    return np.concatenate(probs), np.concatenate(labels), total_loss / sum(len(lbl) for lbl in labels)


def classification_metrics(prob: np.ndarray, label: np.ndarray, loss: float) -> dict[str, float]:
    """AUROC on probabilities (NaN when only one class is present), accuracy and macro F1 at 0.5."""
    pred = (prob > 0.5).astype(int)
    auroc = float(roc_auc_score(label, prob)) if len(set(label.tolist())) == 2 else math.nan
    return {
        "auroc": auroc,
        "accuracy": float(accuracy_score(label, pred)) if len(label) else math.nan,
        "f1_macro": float(f1_score(label, pred, average="macro", zero_division=0)) if len(label) else math.nan,
        "loss": float(loss),
        "n": int(len(label)),
    }


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> dict[str, float]:
    """Score `model` on `dataset`: auroc, accuracy, f1_macro, loss, n."""
    prob, label, loss = predict(model, dataset, batch_size, device)
    return classification_metrics(prob, label, loss)
