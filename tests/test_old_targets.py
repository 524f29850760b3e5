"""Runs saved before the models/components move and the EarlyFusion rename still load (predict/serve) and resume."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import pytest
import torch
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from fedmemes.bookkeeping import checkpoint, resume_config, run_config
from fedmemes.bookkeeping.checkpoint import Checkpoint, differences, setup_of
from fedmemes.config import build_model, load_config
from fedmemes.models.early_fusion import EarlyFusion, HatefulMemesFusionModel
from fedmemes.models.old_targets import LAYOUT_MOVED, MOVED, current_target, upgrade_targets
from fedmemes.tools.predict import load_run

OLD_MODEL = "fedmemes.models.early_fusion.HatefulMemesFusionModel"
OLD_TEXT = "fedmemes.models.text_encoder.FrozenTextEncoder"
OLD_IMAGE = "fedmemes.models.image_encoder.SmallCNN"


def test_seed_name_is_the_same_class() -> None:
    """The seed README's HatefulMemesFusionModel still imports, as EarlyFusion itself."""
    assert HatefulMemesFusionModel is EarlyFusion


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_moved_path_maps_to_an_importable_one(old: str) -> None:
    """Each old prefix maps to a module (or class) that exists today."""
    assert get_object(MOVED[old].rstrip(".")) is not None
    if old.endswith("."):  # a moved module: no shim is left behind at the old place
        with pytest.raises(ImportError):
            get_object(old.rstrip("."))


def test_old_config_is_rewritten_in_every_nested_target() -> None:
    """model, its encoders and a wrapped strategy are rewritten; other strings are not."""
    text = {"_target_": OLD_TEXT, "name": "fedmemes.models.clip."}
    old = {
        "model": {"_target_": OLD_MODEL, "text_encoder": text, "image_encoder": {"_target_": OLD_IMAGE}},
        "server": {"strategy": {"_target_": "x.Wrapper", "strategy": {"_target_": "flwr.serverapp.strategy.Krum"}}},
        "logger": [{"_target_": "fedmemes.models.clip.ClipTextEncoder"}],
    }
    new = upgrade_targets(old)
    assert new["model"]["_target_"] == "fedmemes.models.early_fusion.EarlyFusion"
    assert new["model"]["text_encoder"] == {
        "_target_": "fedmemes.models.components.text_encoder.FrozenTextEncoder",
        "name": "fedmemes.models.clip.",
    }
    assert new["model"]["image_encoder"]["_target_"] == "fedmemes.models.components.image_encoder.SmallCNN"
    assert new["server"] == old["server"]
    assert new["logger"][0]["_target_"] == "fedmemes.models.components.clip.ClipTextEncoder"
    assert current_target("my_pkg.MyModel") == "my_pkg.MyModel"


def test_old_run_dir_loads_for_predict(tmp_path: Path) -> None:
    """A config.yaml with the old paths rebuilds the model and its text encoder."""
    cfg = load_config("experiment=tiny_run")
    torch.manual_seed(0)
    model = build_model(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "best.safetensors")
    saved = OmegaConf.to_yaml(cfg).replace("fedmemes.models.early_fusion.EarlyFusion", OLD_MODEL)
    saved = saved.replace("fedmemes.models.components.", "fedmemes.models.")
    assert OLD_MODEL in saved and OLD_TEXT in saved and OLD_IMAGE in saved
    (tmp_path / "config.yaml").write_text(saved)
    run = load_run(tmp_path)
    assert type(run.model) is EarlyFusion
    assert run.cfg.model.text_encoder._target_ == "fedmemes.models.components.text_encoder.FrozenTextEncoder"
    loaded, built = run.model.state_dict(), model.state_dict()
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)


def test_old_checkpoint_fits_the_same_setup() -> None:
    """resume= compares the saved targets after rewriting them: an old checkpoint fits, another model does not."""
    cfg = load_config("")
    old = Checkpoint(
        server_round=1,
        arrays={},
        history={},
        best_state={},
        setup={"model": OLD_MODEL, "strategy": ["flwr.serverapp.strategy.FedAvg"]},
    )
    assert differences(old, setup_of(cfg), None) == []
    other = setup_of(load_config("model=late_fusion"))
    assert differences(old, other, None) == [
        f"model: the checkpoint has fedmemes.models.early_fusion.EarlyFusion, this configuration {other['model']}"
    ]


def _as_before_the_layout_move(text: str) -> str:
    """Write today's module paths as a run saved before the federation/privacy/bookkeeping/tools move named them."""
    for old, new in LAYOUT_MOVED.items():
        text = text.replace(new, old)
    return text


def test_a_config_saved_before_the_layout_move_still_builds_and_resumes(tmp_path: Path) -> None:
    """config.yaml naming fedmemes.local_objectives (now federation/) builds its loss and model and fits a resume."""
    cfg = load_config("experiment=tiny_run loss=fedlc")
    plain = OmegaConf.to_container(cfg)
    del plain["personalization"]  # type: ignore[arg-type,union-attr]  # a group that came after the move
    saved = _as_before_the_layout_move(OmegaConf.to_yaml(plain))
    assert "_target_: fedmemes.local_objectives.FedLCLoss" in saved and "fedmemes.federation." not in saved
    (tmp_path / "config.yaml").write_text(saved)
    loaded = run_config.load(tmp_path)
    assert loaded.loss._target_ == "fedmemes.federation.local_objectives.FedLCLoss"
    loss = instantiate(loaded.loss, label_counts=[30, 10])
    logits, label = torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([0, 1])
    plain = torch.nn.functional.cross_entropy(logits, label)
    assert loss(logits, label).item() > plain.item()  # the rare class's logit is lowered: a larger loss on it
    resume_config.check(tmp_path, cfg)  # today's config resumes the old run: no key differs once upgraded
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}, tmp_path / "best.safetensors")
    assert type(load_run(tmp_path).model) is EarlyFusion


def _pickled_globals(data: bytes) -> list[str]:
    """Return the `module.name` of every class or function a pickle would import to load."""
    found, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.append(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def test_a_checkpoint_names_no_fedmemes_module(tmp_path: Path) -> None:
    """checkpoint.pt pickles only torch's tensor rebuilders: moving a fedmemes module cannot break torch.load."""
    cfg = load_config("")
    ckpt = Checkpoint(
        server_round=2,
        arrays={"head.weight": torch.ones(2, 3)},
        history={"rounds": [{"round": 1, "auroc": 0.75}]},
        best_state={"head.weight": torch.zeros(2, 3)},
        setup=setup_of(cfg),
    )
    path = checkpoint.save(tmp_path, ckpt)
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    names = _pickled_globals(pickled)
    assert names and all(n.startswith(("torch.", "collections.")) for n in names), names
    back = checkpoint.load(tmp_path)
    assert back.server_round == 2 and torch.equal(back.arrays["head.weight"], torch.ones(2, 3))
    assert differences(back, setup_of(cfg), None) == []
