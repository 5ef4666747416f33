"""Where training numbers go: always a JSON-lines file; TensorBoard and/or Weights & Biases when asked for.

Both are optional extras (`pip install minimind-v[tensorboard]` / `[wandb]`); asking for one that is not
installed is an error up front, not a silent nothing after an hour.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: str | Path | None, *, to: str = "", log_dir: str | Path | None = None,
                 run_name: str = "minimind-v", config: dict[str, Any] | None = None):
        self.file = open(path, "a") if path else None
        self.tb = self.wandb = None
        wanted = {t.strip() for t in to.split(",") if t.strip()}
        unknown = wanted - {"tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"unknown --log-to {sorted(unknown)}; choose tensorboard and/or wandb")
        if "tensorboard" in wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--log-to tensorboard needs `pip install tensorboard`") from None
            self.tb = SummaryWriter(str(Path(log_dir or ".") / "tensorboard"))
        if "wandb" in wanted:
            try:
                import wandb
            except ImportError:
                raise ValueError("--log-to wandb needs `pip install wandb`") from None
            self.wandb = wandb.init(project="minimind-v", name=run_name, config=config or {})

    def log(self, row: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        stage = row.get("stage", "train")
        if self.tb is not None and "step" in row:
            for k, v in scalars.items():
                self.tb.add_scalar(f"{stage}/{k}", v, row["step"])
        if self.wandb is not None and "step" in row:
            self.wandb.log({f"{stage}/{k}": v for k, v in scalars.items()})

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
