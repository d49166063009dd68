"""Training: data manifests and splits, the paper's training loop, export to a weights folder."""

from .trainer import TrainConfig, Trainer, lr_at

__all__ = ["TrainConfig", "Trainer", "lr_at"]
