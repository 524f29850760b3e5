"""Train and evaluate loops and metrics: pure torch, no Flower, no Hydra."""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
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


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for config key `amp` (auto: bf16 on CUDA, fp16 where bf16 is missing, off on CPU)."""
    if amp in (None, False, "false", "off"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None  # CPU autocast rarely pays off on small heads; ask for amp=bf16 explicitly
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is True or amp == "true":
        amp = "bf16"
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r} is not one of auto, true, false, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[str(amp)]


def _forward(
    model: nn.Module, batch: list[torch.Tensor], device: torch.device, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    # non_blocking: overlaps with pinned memory
    text, image, mask, label = (t.to(device, non_blocking=True) for t in batch)
    with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        # uint8 pixels -> [0, 1]; cached image-encoder outputs (float) go in as they are.
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        logits = model(text, image, mask)
    return logits.float(), label  # losses and probabilities in fp32 (numpy has no bf16)


def _loss_and_prob(logits: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and P(hateful) for either 2-logit softmax or 1-logit sigmoid heads."""
    if logits.shape[1] == 1:
        logit = logits.squeeze(1)
        return F.binary_cross_entropy_with_logits(logit, label.float()), torch.sigmoid(logit)
    return F.cross_entropy(logits, label), logits.softmax(dim=1)[:, 1]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the tensors that travel: the model's state dict (a MemeClassifier leaves frozen tensors out of it)."""
    return {k: v.detach().to("cpu", torch.float32, copy=True) for k, v in model.state_dict().items()}


def _seeded(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    """Run fn with the global torch RNG seeded from its `seed` argument, restoring the caller's RNG after."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> dict[str, float]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        # Every global-RNG draw of a round (dropout, modality dropout) then depends on the seed
        # (random_seed, round, partition) alone, not on what this process ran before: Ray actors
        # serve clients in any order.
        cpu_only = torch.device(bound.arguments["device"]).type != "cuda"
        with torch.random.fork_rng(devices=[] if cpu_only else None):
            torch.manual_seed(int(bound.arguments["seed"]))
            return fn(*args, **kwargs)

    return wrapper


@_seeded
def train(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, ...]],
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    proximal_mu: float = 0.0,
    optimizer: OptimizerFactory = torch.optim.Adam,
    max_steps: int | None = None,
    amp_dtype: torch.dtype | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    grad_hook: Callable[[nn.Module], None] | None = None,
) -> dict[str, float]:
    """Train in place; return mean train loss and train accuracy of the last epoch.

    `optimizer(params, lr=lr)` is built fresh each call (Adam by default); `proximal_mu` > 0 adds
    FedProx's (mu/2)||w - w_global||^2 term; `max_steps` stops after that many batches in all;
    `amp_dtype` (bf16/fp16) runs the forward pass under autocast, fp16 with loss scaling.
    `loss_fn(logits, label)` replaces the training loss (FedLC); `grad_hook(model)` runs between
    backward and step (SCAFFOLD, FedDyn corrections: fedmemes/federation/local_objectives.py).
    """
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )
    # disabled: scale/step are plain calls
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        if max_steps is not None and steps >= max_steps:
            break
        total_loss, correct, seen = 0.0, 0, 0
        for batch in itertools.islice(loader, None if max_steps is None else max_steps - steps):
            logits, label = _forward(model, batch, device, amp_dtype)
            loss, prob = _loss_and_prob(logits, label)
            if loss_fn is not None:
                loss = loss_fn(logits, label)
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(
                    ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True)
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # GradScaler.scale loses the Tensor type
            if grad_hook is not None:
                scaler.unscale_(opt)  # the corrections are added to the true gradients
                grad_hook(model)
            scaler.step(opt)
            scaler.update()
            total_loss += loss.item() * len(label)
            correct += int(((prob > 0.5).long() == label).sum())
            seen += len(label)
            steps += 1
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, ...]],
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Return P(hateful) per row, the labels, and the mean loss."""
    model.to(device).eval()
    probs, labels, total_loss = [], [], 0.0
    for batch in DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda"):
        logits, label = _forward(model, batch, device, amp_dtype)
        loss, prob = _loss_and_prob(logits, label)
        total_loss += loss.item() * len(label)
        probs.append(prob.cpu().numpy())
        labels.append(label.cpu().numpy())
    if not probs:
        return np.zeros(0), np.zeros(0, dtype=int), math.nan
    return np.concatenate(probs), np.concatenate(labels), total_loss / sum(len(lbl) for lbl in labels)


def _f1(label: np.ndarray, pred: np.ndarray) -> float:
    # sklearn is imported where it scores, not with this module: its import costs ~1.5 s of CPU in every process, and a
    # SuperNode's ClientApp process that only trains (a fresh one per message) never scores.
    from sklearn.metrics import f1_score

    return float(f1_score(label, pred, average="macro", zero_division=0))


def classification_metrics(prob: np.ndarray, label: np.ndarray, loss: float) -> dict[str, float]:
    """AUROC on probabilities (NaN when only one class is present), accuracy and macro F1 at 0.5."""
    from sklearn.metrics import roc_auc_score  # lazily: see _f1

    pred = (prob > 0.5).astype(int)
    auroc = float(roc_auc_score(label, prob)) if len(set(label.tolist())) == 2 else math.nan
    return {
        "auroc": auroc,
        "accuracy": float(np.mean(pred == label)) if len(label) else math.nan,
        "f1_macro": _f1(label, pred) if len(label) else math.nan,
        "loss": float(loss),
        "n": int(len(label)),
    }


def evaluate(
    model: nn.Module,
    dataset: Dataset[tuple[torch.Tensor, ...]],
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Score `model` on `dataset`: auroc, accuracy, f1_macro, loss, n."""
    prob, label, loss = predict(model, dataset, batch_size, device, amp_dtype)
    return classification_metrics(prob, label, loss)


def pick_threshold(prob: np.ndarray, label: np.ndarray) -> float:
    """Return the threshold t (predict hateful when prob > t) that maximises macro-F1; 0.5 when it cannot be chosen."""
    if len(set(label.tolist())) < 2:
        return 0.5
    cuts = np.unique(prob)
    # Midpoints between distinct scores (and one below all), so pred = prob > t is stable for every candidate.
    candidates = np.concatenate([[cuts[0] - 1e-6], (cuts[:-1] + cuts[1:]) / 2, [0.5]])
    scores = [_f1(label, (prob > t).astype(int)) for t in candidates]
    best = max(scores)
    # Ties: keep the candidate closest to 0.5, the untuned default.
    return float(min((t for t, s in zip(candidates, scores, strict=True) if s == best), key=lambda t: abs(t - 0.5)))


def rate_threshold(prob: np.ndarray, label: np.ndarray) -> float:
    """Return the threshold that flags as many memes as are hateful (the score quantile at 1 - positive rate)."""
    if not len(label):
        return 0.5
    return float(np.quantile(prob, 1.0 - float(np.mean(label))))


def shrunk_threshold(picked: float, anchor: float, n_dev: int, prior_memes: float) -> float:
    """Pull a dev-picked threshold toward `anchor` by the dev set's size: w = n / (n + prior_memes)."""
    # A macro-F1 pick on a small dev split is noisy (HarMeme's 177 memes: the argmax of a flat, jagged
    # curve); the rate-matching threshold is a quantile, stable on few memes, and follows the model's
    # own calibration where a fixed 0.5 does not (an early round's scores sit far below 0.5). It acts
    # as a prior worth `prior_memes` memes: a large dev split keeps most of its pick, a small one less.
    weight = n_dev / (n_dev + prior_memes) if prior_memes > 0 else 1.0
    return float(anchor + weight * (picked - anchor))


def metrics_at(prob: np.ndarray, label: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy and macro-F1 of `prob > threshold`."""
    pred = (prob > threshold).astype(int)
    if not len(label):
        return {"accuracy": math.nan, "f1_macro": math.nan}
    return {"accuracy": float(np.mean(pred == label)), "f1_macro": _f1(label, pred)}


def threshold_metrics(prob: np.ndarray, label: np.ndarray, loss: float, threshold: float) -> dict[str, float]:
    """Scores for metrics.json `test`: AUROC, accuracy and F1 at the hold-out threshold, and at 0.5 labelled as such."""
    scores = classification_metrics(prob, label, loss)
    at_half = {f"{k}_at_0.5": scores[k] for k in ("accuracy", "f1_macro")}
    return {**scores, **metrics_at(prob, label, threshold), "threshold": float(threshold), **at_half}
