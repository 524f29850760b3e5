"""The ClientApp's adapter for personalization (fedmemes/federation/personalization.py): state, scores, export.

The local tensors (fedbn, local_head) or the personal model (ditto) live in `context.state` under
`personal`, so client_state.py writes them to the node's disk with SCAFFOLD's c_i and a restarted
SuperNode goes on from them. Every `personalization.eval_every` rounds the client scores the global
model as received and its own one on its kept-back share (AUROC on probabilities); the last round
with `personalization.export_dir` set writes its own model as a run folder `fedmemes predict` loads.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, RecordDict
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save
from torch import nn

from fedmemes.bookkeeping import private_files
from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.bookkeeping.run_config import CONFIG_FILE
from fedmemes.data.features import MemeTensors
from fedmemes.federation import engine
from fedmemes.federation.personalization import UNDEFINED, Fit, Personalization

PERSONAL_STATE = "personal"  # context.state record: the local tensors (fedbn, local_head) or the own model (ditto)
SCORES_FILE = "personal.json"  # in an exported folder: the client's own scores of its kept-back memes, in row order


class PersonalRound:
    """One train round's personalisation: local tensors in before training, own model and scores after."""

    def __init__(
        self, method: Personalization, state: RecordDict, model: nn.Module, server_round: int, num_rounds: int
    ) -> None:
        self.method, self.state, self.round = method, state, server_round
        self.scoring = method.scores_round(server_round, num_rounds)
        self.exporting = method.export_dir is not None and server_round >= num_rounds
        records = state.array_records
        self.saved = records[PERSONAL_STATE].to_torch_state_dict() if PERSONAL_STATE in records else None
        self.local = method.local_keys(model)
        plain = type(method) is Personalization
        # the global model as received: what the scores compare with, where finetune and ditto start
        self.received = copy.deepcopy(model) if not plain or self.scoring or self.exporting else None
        method.start(model, self.saved)
        self.own: nn.Module | None = None

    def finish(
        self, trained: nn.Module, fit: Fit, val: MemeTensors, batch_size: int, device: torch.device
    ) -> dict[str, float]:
        """Make the client's own model, keep its state; return the per-member scores when this round scores."""
        if self.received is None:
            return {}
        own, keep = self.method.personal(self.received, trained, self.saved, fit, self.scoring or self.exporting)
        if keep:
            self.state[PERSONAL_STATE] = ArrayRecord(keep)
        self.own = own
        if not self.scoring or own is None:
            return {}
        return {
            "global_auroc": _auroc(self.received, val, batch_size, device),
            "personal_auroc": _auroc(own, val, batch_size, device),
        }

    def export(
        self, cfg: DictConfig, partition: int, val: MemeTensors, batch_size: int, device: torch.device
    ) -> Path | None:
        """Write the own model as a run folder under personalization.export_dir (the last round only)."""
        if not self.exporting or self.own is None or self.method.export_dir is None:
            return None
        folder = Path(self.method.export_dir) / f"client-{partition}"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        prob, label, _ = engine.predict(self.own, val.dataset(), batch_size, device)
        scores = engine.classification_metrics(prob, label, math.nan) if len(label) else {}
        state = engine.trainable_state(self.own)
        weights = save({k: v.contiguous() for k, v in state.items()})
        for name in ("best", "final"):  # predict and serve load either
            private_files.write_bytes(folder / f"{name}.safetensors", weights)
        plain: Any = OmegaConf.to_container(cfg, resolve=True)
        plain["personalization"]["export_dir"] = None  # the folder is a model, not a run that exports again
        private_files.write_text(folder / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(plain)))
        facts = {"partition": partition, "round": self.round, "method": type(self.method).__name__}
        private_files.write_text(
            folder / METRICS_FILE,
            json.dumps({"personal": {**facts, "val_auroc": _finite(scores.get("auroc")), "val_n": len(label)}}),
        )
        private_files.write_text(
            folder / SCORES_FILE, json.dumps({**facts, "p_hateful": [float(p) for p in prob]}, indent=1)
        )
        return folder


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _auroc(model: nn.Module, val: MemeTensors, batch_size: int, device: torch.device) -> float:
    score = engine.evaluate(model, val.dataset(), batch_size, device)["auroc"] if len(val) else math.nan
    return float(score) if math.isfinite(score) else UNDEFINED
