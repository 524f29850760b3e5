"""Many clients: the pool is partitioned once per process, hold-out scoring every N rounds, mixed precision."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from fedmemes.bookkeeping.history import RunHistory
from fedmemes.config import load_config
from fedmemes.data.partitioners import partitioner_spec
from fedmemes.data.report import format_table
from fedmemes.data.split import client_partition
from fedmemes.federation import engine
from fedmemes.federation.node_datasets import _attached, client_split, holdout, split_facts
from fedmemes.federation.server_run import ServerRun


def _folder(root: Path, n: int = 200) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40, 90, 200)).save(root / "img" / "a.png")
    rows = {
        "train": [{"id": i, "img": "img/a.png", "label": int(i % 3 == 0), "text": f"t {i}"} for i in range(n)],
        "dev_seen": [{"id": 900 + i, "img": "img/a.png", "label": i % 2, "text": "d"} for i in range(10)],
        "test_seen": [{"id": 950 + i, "img": "img/a.png", "label": i % 2, "text": "e"} for i in range(10)],
    }
    for split, lines in rows.items():
        (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    return root


@pytest.mark.parametrize("name", ["iid", "dirichlet", "stratified", "pathological", "quantity", "quantity_exponential"])
def test_shared_partition_gives_each_client_what_a_fresh_partitioner_would(tmp_path, name):
    cfg = load_config(
        f"dataset=hateful_memes dataset.root={_folder(tmp_path / 'd')} partition={name} num_clients=7 "
        "partition.min_partition_size=2" * (name == "dirichlet")
    )
    pool = holdout(cfg).pool
    spec = partitioner_spec(OmegaConf.to_container(cfg.partition, resolve=True))
    for pid in range(7):
        fresh = client_partition(pool, instantiate(spec, num_partitions=7), pid, cfg.random_seed)
        mine = client_split(cfg, pid, 7)
        assert sorted(m.id for m in mine.train + mine.val) == sorted(m.id for m in fresh) != []


def test_many_clients_partition_the_pool_once(tmp_path):
    cfg = load_config(
        f"dataset=hateful_memes dataset.root={_folder(tmp_path / 'd', n=400)} partition=iid num_clients=150"
    )
    before = _attached.cache_info().misses
    facts = split_facts(cfg)
    assert _attached.cache_info().misses == before + 1  # one partitioner for 150 clients
    assert len(facts) == 150 and sum(f["n_train"] + f["n_val"] for f in facts) == 400
    assert {f["n_train"] + f["n_val"] for f in facts} <= {2, 3}  # IID: equal shares within one meme
    table = format_table(facts, {}, max_rows=10)
    assert "140 more clients" in table and table.splitlines()[-2].split()[1] == str(sum(f["n_train"] for f in facts))


def test_eval_every_scores_round_zero_every_nth_and_the_last():
    run = SimpleNamespace(cfg=load_config("num_rounds=7 server.eval_every=3"))
    assert [r for r in range(8) if ServerRun.scored(run, r)] == [0, 3, 6, 7]
    run = SimpleNamespace(cfg=load_config("num_rounds=4"))
    assert [r for r in range(5) if ServerRun.scored(run, r)] == [0, 1, 2, 3, 4]


def test_unscored_rounds_are_recorded_but_never_best(tmp_path):
    history = RunHistory(tmp_path)
    assert history.add_round(0, {"auroc": 0.5, "accuracy": 0.5, "loss": 0.7})
    assert not history.add_round(1, {"clients": 5, "sampled": [3, 9]})
    assert history.add_round(2, {"auroc": 0.6, "accuracy": 0.6, "loss": 0.6}) and history.best_round == 2
    assert json.loads(history.write().read_text())["rounds"][1] == {"round": 1, "clients": 5, "sampled": [3, 9]}


def test_amp_setting():
    cpu = torch.device("cpu")
    assert engine.autocast_dtype("auto", cpu) is None and engine.autocast_dtype(False, cpu) is None
    assert engine.autocast_dtype("bf16", cpu) is torch.bfloat16 and engine.autocast_dtype(True, cpu) is torch.bfloat16
    assert engine.autocast_dtype("fp16", cpu) is torch.float16
    with pytest.raises(ValueError, match="amp='fp8'"):
        engine.autocast_dtype("fp8", cpu)


class _TextHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, text, image, mask):
        return self.fc(text)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_under_autocast_on_cpu_learns_and_keeps_fp32_weights(amp):
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(256, 8, generator=gen)
    label = (text[:, 0] > 0).long()
    data = torch.utils.data.TensorDataset(text, torch.zeros(256, 3, 2, 2, dtype=torch.uint8), torch.ones(256, 2), label)
    torch.manual_seed(0)
    model, dtype = _TextHead(), engine.autocast_dtype(amp, torch.device("cpu"))
    stats = engine.train(model, data, epochs=4, lr=0.1, batch_size=32, device=torch.device("cpu"), amp_dtype=dtype)
    scores = engine.evaluate(model, data, 64, torch.device("cpu"), amp_dtype=dtype)
    assert math.isfinite(stats["train_loss"]) and scores["auroc"] > 0.95 and scores["accuracy"] > 0.85
    assert {v.dtype for v in engine.trainable_state(model).values()} == {torch.float32}  # what travels stays fp32


def test_scale_benchmark_parses_its_arguments():
    out = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "scale.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--clients" in out and "--per-round" in out and "bare Flower" in out
