"""``TrainConfig``: model, margin, optimiser, schedule and run settings of one backbone training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from backbone.augment import AUGMENTS
from backbone.margin import DEFAULT_MARGIN, MARGINS
from backbone.model import POOLINGS, ModelConfig
from backbone.model_input import DECODES
from semiface.errors import ConfigError, reject_unknown
from semiface.training.schedules import DECAYS
from semiface.training.settings import after_training, runtime_field_names

HEADS = ("single", "multi")  # one margin head over all classes, or one for the labelled and one for the pseudo set
HEAD_INITS = ("random", "class_means")  # normal(0, 0.01) centres, or each class's mean embedding (backbone.head_init)
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = DECAYS  # warm-up, then step / poly / cosine / linear decay (semiface.training.schedules)
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


@dataclass(frozen=True)
class TrainConfig:
    """Model, margin, optimiser, schedule and run settings of one training run."""

    trunk: str = "resnet50"
    image_size: int = 112
    embedding_dim: int = 256
    pooling: str = "flatten"
    dropout: float = 0.0
    margin: str = "arcface"
    s: float = 64.0
    m: float | None = None  # None: 0.5 for arcface, 0.35 for cosface
    easy_margin: bool = False
    sample_fraction: float = 1.0  # < 1: Partial-FC sampled softmax
    sub_centres: int = 1  # > 1: sub-centre ArcFace / CosFace, K centres per class (backbone.margin)
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.1 for sgd, 1e-3 for adamw
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 5e-4 for sgd, 0.05 for adamw
    schedule: str = "step"
    warmup_epochs: float = 1.0
    lr_milestones: tuple[float, ...] = (0.4, 0.7, 0.9)  # step decay points, as fractions of all steps
    lr_gamma: float = 0.1
    poly_power: float = 2.0
    epochs: int = 20
    batch_size: int = 128  # global: split over the DDP processes
    grad_clip: float | None = 5.0
    # "flip" (the face-recognition recipe), "albumentations" (at aug_strength), or "auto": flip from
    # 100K training images on, albumentations below (backbone.augment)
    augment: str = "auto"
    aug_strength: float = 0.5  # the albumentations recipe's strength in [0, 1]
    num_workers: int | str = after_training("auto")  # data-loading processes per rank (backbone.loader)
    decode: str = after_training("auto")  # JPEGs decoded on the device on CUDA ("auto"), or "cpu" / "device"
    device: str = after_training("auto")
    seed: int = 0
    init: str = "scratch"  # or the path of a backbone checkpoint to start the trunk and embedding from
    num_classes: int | None = None  # None: 1 + the largest label
    heads: str = "single"  # "multi": a labelled-set head and a pseudo-set head (retraining manifests)
    # "class_means": the head starts at each class's mean embedding under the init model (imprinting)
    head_init: str = "random"
    amp: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)
    verbose: bool = after_training(True)  # progress bar and per-epoch summary line on stderr

    def __post_init__(self) -> None:
        choices = {"margin": MARGINS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "pooling": POOLINGS,
                   "heads": HEADS, "head_init": HEAD_INITS, "augment": AUGMENTS, "decode": DECODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"TrainConfig.{name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "sample_fraction": 0.0 < self.sample_fraction <= 1.0,
            "sub_centres": self.sub_centres >= 1,
            "aug_strength": 0.0 <= self.aug_strength <= 1.0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "lr": self.lr is None or self.lr > 0,
            "grad_clip": self.grad_clip is None or self.grad_clip > 0,
            "num_workers": self.num_workers == "auto" or (
                isinstance(self.num_workers, int) and not isinstance(self.num_workers, bool) and self.num_workers >= 0),
            "num_classes": self.num_classes is None or self.num_classes >= 2,
            "lr_milestones": all(0.0 < x < 1.0 for x in self.lr_milestones),
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"TrainConfig.{name}: invalid value {getattr(self, name)!r}")
        object.__setattr__(self, "lr_milestones", tuple(float(x) for x in self.lr_milestones))
        self.model_config()  # validates image_size, embedding_dim, dropout

    @property
    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def resolved_weight_decay(self) -> float:
        return DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay

    @property
    def resolved_m(self) -> float:
        return DEFAULT_MARGIN[self.margin] if self.m is None else self.m

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.trunk, self.image_size, self.embedding_dim, self.pooling, self.dropout)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["lr_milestones"] = list(self.lr_milestones)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        reject_unknown(values, {f.name for f in fields(cls)}, "TrainConfig")
        values = dict(values)
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(**values)


# Fields that change how a run executes, not what it computes: ignored when a run directory is reused.
RUNTIME_FIELDS = runtime_field_names(TrainConfig)
