"""How to train (the training counterpart of ModelConfig). Torch-free: the CLI reads its defaults."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16")  # autocast dtype of forward + loss; weights stay fp32
COMPILE_MODES = ("off", "default", "reduce-overhead")  # torch.compile mode of the per-event step


def valid_device(spec: str) -> bool:
    """auto (CUDA when present), cpu, cuda or cuda:N; whether it exists is checked when training."""
    return spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())


OPTIMIZERS = ("adamw", "adam")
LR_SCHEDULES = ("constant", "cosine", "linear")  # decay over the horizon (training/lr_schedule.py)
# How one optimizer step's loss is normalised (training/trainer.py, train_epoch):
#   step:   the mean over the block's own targets, so every step weighs the same, also a tail block
#           of a batch where one long history is left (the 64 longest ML-1M users run 20 blocks
#           with 1-6 users left, and validation NDCG@10 fell by 0.02 after them);
#   target: the sum over the block's targets / (batch_size x T), so every target weighs the same
#           and a block with few users left makes a proportionally small step.
LOSS_WEIGHTINGS = ("step", "target")


@dataclass(frozen=True)
class TrainSettings:
    """How to train (not what: that is ModelConfig)."""

    epochs: int = 60  # passes over every user's training history
    batch_size: int = 16  # users per batch (one optimizer step per block of T events of a batch)
    lr: float = 1e-3  # learning rate (the peak, when lr_schedule decays it)
    lr_schedule: str = "constant"  # constant | cosine | linear decay to 0 over epochs or max_seconds
    warmup_steps: int = 0  # optimizer steps of linear warm-up from lr / warmup_steps to lr
    # Sampled softmax: > 0 scores each block's targets against only the block's distinct targets
    # plus this many uniformly drawn items instead of all I (large catalogues); 0 = full softmax.
    sampled_softmax: int = 0
    loss_weighting: str = "step"  # step | target: what weighs the same in the loss (above)
    weight_decay: float = 0.01  # AdamW: decoupled weight decay; Adam: L2 penalty
    optimizer: str = "adamw"  # adamw | adam
    seed: int = 0  # seeds weight init, dropout and batch order
    patience: int = 8  # validations without a better validation NDCG@10 before stopping; 0 = never
    eval_every: int = 0  # also validate every this many optimizer steps; 0 = once per epoch
    clip_norm: float = 5.0  # max global gradient norm per step; 0 = no clipping
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    max_seconds: float | None = None  # wall-clock budget of the training loop; None = no limit
    eval_batch_size: int = 128  # users per evaluation forward
    deterministic: bool = True  # torch.use_deterministic_algorithms during training
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N: training and evaluation
    precision: str = "fp32"  # fp32 | bf16 (autocast of forward + loss; weights and eval in fp32)
    compile: str = "off"  # off | default | reduce-overhead (CUDA graphs): torch.compile the step

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "patience": self.patience >= 0,
            "optimizer": self.optimizer in OPTIMIZERS, "eval_every": self.eval_every >= 0,
            "lr_schedule": self.lr_schedule in LR_SCHEDULES, "warmup_steps": self.warmup_steps >= 0,
            "sampled_softmax": self.sampled_softmax >= 0,
            "loss_weighting": self.loss_weighting in LOSS_WEIGHTINGS,
            "clip_norm": self.clip_norm >= 0, "eval_batch_size": self.eval_batch_size >= 1,
            "threads": self.threads is None or self.threads >= 1,
            "max_seconds": self.max_seconds is None or self.max_seconds > 0,
            "device": valid_device(self.device), "precision": self.precision in PRECISIONS,
            "compile": self.compile in COMPILE_MODES,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
