"""`logger=tensorboard`: scalars per round, the config as text, the report's figures as images."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedmemes.tracking.base import Tracker


class TensorBoardLogger(Tracker):
    """Write TensorBoard event files under <run_dir>/tracking/tensorboard (needs the `tracking` extra)."""

    def __init__(self, run_dir: str | Path, folder: str = "tracking/tensorboard") -> None:
        super().__init__(run_dir)
        # Imports the tensorboard package: ImportError here without the `tracking` extra.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / folder))

    def log_config(self, config: dict[str, Any]) -> None:
        # Four spaces: TensorBoard renders text as markdown, and a code block keeps the YAML's indentation.
        text = "\n".join("    " + line for line in yaml.safe_dump(config, sort_keys=False).splitlines())
        self.writer.add_text("config", text, 0)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a live run: make each round visible at once

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        import numpy as np
        from PIL import Image

        paths = list(paths)
        self.writer.add_text("artifacts", "\n".join(f"- {p}" for p in paths), 0)
        for path in paths:
            if path.suffix == ".png":
                image = np.asarray(Image.open(path, formats=["PNG"]).convert("RGB"))
                self.writer.add_image(f"report/{path.stem}", image, 0, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
