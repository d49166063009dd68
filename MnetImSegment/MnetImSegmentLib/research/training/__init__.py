"""Training: manifests and splits, the paper's loop (one device or torchrun DDP), export, and the
experiments (cross-validation, model comparison); ``commands.add_commands`` adds their CLI commands."""

from .trainer import TrainConfig, Trainer, lr_at

__all__ = ["TrainConfig", "Trainer", "lr_at"]
