"""dataset=harmeme: MMF's memes layout read as it is, on a generated fixture (never the real files)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from fedmemes.config import build_model, load_config
from fedmemes.data.harmeme import HarMemeSource
from fedmemes.data.meme import DataError
from fedmemes.federation.node_datasets import load_splits
from fedmemes.federation.testing import run_in_process

LEVELS = ["not harmful", "somewhat harmful", "very harmful"]


def make_harmeme(root: Path, sizes=(("train", 9), ("val", 3), ("test", 3))) -> Path:
    """Write annotations/{split}.jsonl and images/ in MMF's layout; harm level cycles through LEVELS."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for split, n in sizes:
        with (root / "annotations" / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                mid = f"covid_memes_{split}_{i}"
                Image.fromarray(np.full((24, 24, 3), (20 * i) % 256, dtype=np.uint8)).save(
                    root / "images" / f"{mid}.png"
                )
                labels = [LEVELS[i % 3]] + (["individual"] if i % 3 else [])
                f.write(json.dumps({"id": mid, "image": f"{mid}.png", "labels": labels, "text": f"caption {i}"}) + "\n")
    return root


def test_reads_splits_and_maps_harm_levels(tmp_path):
    splits = HarMemeSource(make_harmeme(tmp_path)).load()
    assert {k: len(v) for k, v in splits.items()} == {"train": 9, "dev_seen": 3, "test_seen": 3}
    assert [m.label for m in splits["train"][:3]] == [0, 1, 1]  # somewhat and very harmful are harmful
    first = splits["train"][1]
    assert first.img == tmp_path / "images" / "covid_memes_train_1.png" and first.text == "caption 1"
    assert dict(first.meta)["target"] == "individual"


def test_label_map_is_configurable(tmp_path):
    only_very = {"not harmful": 0, "somewhat harmful": 0, "very harmful": 1}
    splits = HarMemeSource(make_harmeme(tmp_path), label_map=only_very).load()
    assert [m.label for m in splits["train"][:3]] == [0, 0, 1]


def test_validated_like_every_source(tmp_path):
    root = make_harmeme(tmp_path)
    (root / "images" / "covid_memes_train_0.png").unlink()
    with (root / "annotations" / "train.jsonl").open("a") as f:
        f.write(json.dumps({"id": "x1", "image": "x1.png", "labels": ["mildly harmful"], "text": "t"}) + "\n")
        f.write("{not json\n")
    with pytest.raises(DataError) as err:
        HarMemeSource(root).load()
    kinds = {i.kind for i in err.value.issues}
    assert {"missing_image", "bad_label", "bad_json"} <= kinds
    assert any("dataset.label_map" in i.detail for i in err.value.issues)
    source = HarMemeSource(root, on_error="skip")
    assert len(source.load()["train"]) == 8 and len(source.issues) >= 3


def test_missing_annotations_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations"):
        HarMemeSource(tmp_path).load()


def test_dataset_config(tmp_path):
    root = make_harmeme(tmp_path)
    cfg = load_config(f"dataset=harmeme dataset.root={root}")
    assert cfg.dataset.label_map["somewhat harmful"] == 1
    splits = load_splits(cfg)
    assert sum(m.label for m in splits["train"]) == 6


def test_harmeme_preset_trains_minilm_layers_end_to_end(tmp_path, one_thread):
    """experiment=harmeme on a folder in MMF's layout: the fine-tuned MiniLM layers and the n-gram table train and reach
    the saved model (its default recipe, without the hold-out search that tests/test_recipe_search.py covers)."""
    root = make_harmeme(tmp_path / "harmeme", sizes=(("train", 24), ("val", 6), ("test", 6)))
    overrides = (
        f"experiment=harmeme dataset.root={root} cache_dir={tmp_path / 'cache'} num_clients=2 partition=iid "
        "num_rounds=1 image_size=32 local_val_share=0 server.recipes=null"
    )
    metrics = run_in_process(overrides, tmp_path / "run", 2)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1] and metrics["test"]["n"] == 6
    saved = load_file(tmp_path / "run" / "final.safetensors")
    pretrained = build_model(load_config(overrides)).state_dict()
    top, bottom = "text_encoder.base.bert.encoder.layer.5.output.dense.weight", "text_encoder.base.bert.encoder.layer.0"
    assert not saved[top].equal(pretrained[top])  # the last MiniLM layers trained and travelled
    assert not saved["text_encoder.embed.weight"].equal(pretrained["text_encoder.embed.weight"])  # so did the n-grams
    assert not any(k.startswith(bottom) for k in saved)  # frozen layers stay off the wire
