"""Clusformer configuration: one dataclass holding every knob, with a paper preset and a small one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from clustering.identities import EPOCH_VAL_SAMPLES, TUNE_SAMPLES
from clustering.link_tuning import RULE_CHOICES
from clustering.partition import LINK_WEIGHTS, infomap_search
from semiface.devices import INFERENCE_PRECISIONS
from semiface.errors import ConfigError
from semiface.training.settings import after_training

ENCODINGS = ("cde", "none", "learnable", "sinusoidal")
PARTITIONS = ("union_find", "infomap")
# "paper": one linear layer on each decoder slot gives its logit (section 4.3.5). "product": the slot,
# the encoder output at its position and that output times the centre's (+ the pair statistics, through
# an MLP, with ``pair_stats``): see ``clustering.clusformer.model``.
HEADS = ("paper", "product")

# Presets. "paper": section 5.3 of the paper (6 + 6 blocks, 8 heads, d = 256, 50 epochs) and its
# algorithm (the per-slot linear head, no pair statistics, a link when either direction passes tau,
# union-find). "small": a CPU-sized model for the demo and the tests, with the project's head and
# pair statistics.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "head": "paper",
        "pair_stats": False,
        "link_rule": "any",
        "partition": "union_find",
        "d_model": 256,
        "nhead": 8,
        "num_encoder_layers": 6,
        "num_decoder_layers": 6,
        "dim_feedforward": 1024,
        "dropout": 0.1,
        "epochs": 50,
        "lr": 1e-4,
    },
    "small": {
        "d_model": 64,
        "nhead": 4,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
        "dim_feedforward": 128,
        "dropout": 0.0,
        "epochs": 8,
        "lr": 1e-3,
    },
}


@dataclass(frozen=True)
class ClusformerConfig:
    """Every Clusformer parameter (sequences, model, training, partition)."""

    # visual grammar and encoding
    k: int = 64
    radius_step: float | None = None
    encoding: str = "cde"
    head: str = "product"
    # Neighbourhood statistics of (centre, element) pairs into the per-position head (not in the
    # paper; clustering.pair_stats): lets the head start from what a cosine threshold knows.
    pair_stats: bool = True
    # model
    d_model: int = 64
    nhead: int = 4
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.0
    # training
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    # rows (whole labelled identities) tau is tuned on after training, and each epoch is scored on
    # (see FaceTConfig and clustering.identities)
    tune_samples: int = after_training(TUNE_SAMPLES)
    epoch_val_samples: int = EPOCH_VAL_SAMPLES
    max_train_centres: int | None = None
    seed: int = 0
    # inference and partition
    infer_batch_size: int = after_training(256)
    partition: str = after_training("union_find")
    # any / mutual / average (clustering.links), or "tuned" on the labelled tune slice like tau
    # (epochs scored with "average"; clustering.link_tuning)
    link_rule: str = after_training("average")
    # how Infomap weighs a link: its probability or its odds (clustering.partition.LINK_WEIGHTS)
    infomap_weight: str = after_training("probability")
    # Infomap's searches and Markov time (see FaceTConfig and clustering.partition.InfomapSearch)
    infomap_trials: int = after_training(1)
    infomap_markov_time: float = after_training(1.0)
    # link threshold as a probability; None = tuned on the validation slice (as log-odds: ``tau_``)
    tau: float | None = after_training(None)
    # probabilities to tune tau over; None: quantiles of the validation link log-odds, refined
    taus: tuple[float, ...] | None = after_training(None)
    # where tau is tuned: "heldout" (links between held-out identities) or "all" (see FaceTConfig)
    tune_on: str = after_training("all")
    max_size: int | None = after_training(None)
    min_size: int = after_training(1)
    drop_below: float | None = after_training(None)
    device: str = after_training("auto")
    # autocast of inference (semiface.devices.INFERENCE_PRECISIONS): "bfloat16" runs the CPU inference ~40 %
    # faster on a CPU with bf16 instructions (logits within ~0.02, 0.03 % of links across tau at 250K)
    inference_precision: str = after_training("auto")

    def __post_init__(self) -> None:
        infomap_search(self)  # refuses trials under 1 and a Markov time <= 0
        if self.k < 2:
            raise ConfigError(f"clusformer: k must be >= 2 (centre + neighbours), got {self.k}")
        if self.radius_step is not None and not 0 < self.radius_step <= 2:
            raise ConfigError(f"clusformer: radius_step must be in (0, 2] (cosine distance), got {self.radius_step}")
        _check_choice("encoding", self.encoding, ENCODINGS)
        _check_choice("head", self.head, HEADS)
        if self.head == "paper" and self.pair_stats:
            raise ConfigError("clusformer: head 'paper' reads the decoder slots only; the pair statistics need "
                              "head='product' (or pair_stats=False)")
        _check_choice("link_rule", self.link_rule, RULE_CHOICES)
        _check_choice("partition", self.partition, PARTITIONS)
        _check_choice("infomap_weight", self.infomap_weight, LINK_WEIGHTS)
        _check_choice("tune_on", self.tune_on, ("heldout", "all"))
        _check_choice("inference_precision", self.inference_precision, INFERENCE_PRECISIONS)
        if self.d_model % self.nhead:
            raise ConfigError(f"clusformer: d_model {self.d_model} is not divisible by nhead {self.nhead}")
        for name in ("d_model", "nhead", "num_encoder_layers", "num_decoder_layers", "dim_feedforward",
                     "batch_size", "infer_batch_size", "min_size", "tune_samples", "epoch_val_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"clusformer: {name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ConfigError(f"clusformer: epochs must be >= 0, got {self.epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"clusformer: val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"clusformer: dropout must be in [0, 1), got {self.dropout}")
        for name in ("tau", "drop_below"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"clusformer: {name} must be a probability in [0, 1], got {value}")
        if self.taus is not None:
            if not self.taus or any(not 0 <= t <= 1 for t in self.taus):
                raise ConfigError(f"clusformer: taus must be None (adaptive) or a non-empty list of probabilities, got {self.taus}")
            object.__setattr__(self, "taus", tuple(float(t) for t in self.taus))

    @classmethod
    def from_preset(cls, preset: str = "small", **overrides: Any) -> ClusformerConfig:
        """The preset's values, then ``overrides`` (None means: keep the preset's or the default value)."""
        _check_choice("preset", preset, tuple(PRESETS))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"clusformer: unknown parameter(s) {', '.join(unknown)}")
        values = {**PRESETS[preset], **{key: value for key, value in overrides.items() if value is not None}}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON- and checkpoint-friendly)."""
        out = asdict(self)
        out["taus"] = None if self.taus is None else list(self.taus)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClusformerConfig:
        """Inverse of ``to_dict``."""
        values = dict(values)
        taus = values.get("taus")
        values["taus"] = None if taus is None else tuple(taus)
        return cls(**values)

    def with_updates(self, **changes: Any) -> ClusformerConfig:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"clusformer: {name} must be one of {', '.join(choices)}, got {value!r}")
