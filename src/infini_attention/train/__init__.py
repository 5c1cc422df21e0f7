"""Training: TOML run configs, AdamW with a separate gate group, warmup + cosine, atomic checkpoints.

``load_config(path) -> RunConfig`` and ``train(config, out_dir=..., max_steps=..., resume=...)``;
``infini train --config FILE.toml`` on the command line.
"""

from .config import DataConfig, OptimConfig, RunConfig, TrainConfig, load_config
from .trainer import train

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "TrainConfig", "load_config", "train"]
