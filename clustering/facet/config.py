"""FaceT configuration: the paper's defaults, a small preset for demos and tests, and checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clustering.identities import EPOCH_VAL_SAMPLES, TUNE_SAMPLES
from clustering.link_tuning import RULE_CHOICES
from clustering.partition import LINK_WEIGHTS, infomap_search
from semiface.devices import INFERENCE_PRECISIONS
from semiface.errors import ConfigError, reject_unknown
from semiface.training.settings import after_training

VARIANTS = ("full", "only_re", "only_lp")
EDGE_EMBEDDINGS = ("concat", "concat_product")
LOSS_WEIGHTINGS = ("none", "weighted", "balanced")
PARTITIONS = ("union_find", "infomap")
PRESETS = ("paper", "demo")
# The paper's algorithm (section 3): RE + LP on the embeddings, e_qk = cat(g_q, g_qk), plain
# cross-entropy, a link q -> k when p_qk > tau (either direction: rule "any"), union-find. The
# ``paper`` preset sets these over the defaults, which add the project's pieces (see the fields).
PAPER_ALGORITHM = {"pair_stats": False, "edge_embedding": "concat", "loss_weighting": "none", "link_rule": "any",
                   "partition": "union_find"}


@dataclass(frozen=True)
class FaceTConfig:
    """Every FaceT setting; defaults are the paper's (section 4.1) unless noted.

    Neighbour counts exclude the node itself: a node's LP sequence is itself followed by its
    ``hop1`` nearest neighbours, its RE context itself followed by its ``hop2`` nearest ones.
    """

    # model
    variant: str = "full"  # full | only_re (eq. 11-12 linkage) | only_lp (raw features into LP)
    hop1: int = 150
    hop2: int = 5
    depth: int = 2  # d_e: self-attention layers in RE and in LP
    heads: int = 4
    head_dim: int = 64
    ff_dim: int = 1024  # not given by the paper: 4 x model width, as in the original Transformer
    dropout: float = 0.4
    # e_qk = cat(g_q, g_qk) as the paper (eq. 8); concat_product appends g_q * g_qk, which lets the
    # MLP read a learned similarity directly and trains much faster on small labelled sets.
    edge_embedding: str = "concat"
    # Neighbourhood statistics of each pair (cosine, ranks, shared neighbours, densities:
    # clustering.pair_stats) concatenated to e_qk: not in the paper. With little labelled data the
    # LP then starts from what a cosine threshold knows instead of re-learning it; on real faces
    # (dlib descriptors) it turns a loss to the tuned baselines into a lead (see docs/experiments/clustering.md).
    pair_stats: bool = True
    # training
    epochs: int = 60
    batch_size: int = 32
    lr: float = 0.002
    weight_decay: float = 5e-4
    warmup_steps: int = 500
    # Training budget (not in the paper): pivots each epoch trains on, a fresh seeded sample every epoch
    # (None: every training row). Sets the steps per epoch, and so the warm-up and cosine schedule, like
    # Clusformer's max_train_centres; sized from a measured step time (bench/gpu_check.py, docs/gpu.md).
    max_train_pivots: int | None = None
    loss_weighting: str = "balanced"  # none | weighted (inverse class frequency) | balanced (1:1 sampling)
    val_fraction: float = 0.2  # identities held out of training (validated in context of all labelled rows)
    # Where tau is tuned: "heldout" = links between held-out identities only (scored in the context
    # of the whole labelled set); "all" = the whole labelled set, trained identities included (their
    # links score higher than unseen people's, which pulls tau too low for new data).
    tune_on: str = after_training("all")
    # Rows (whole labelled identities, clustering.identities) tau is tuned on after training: the
    # same slice the baselines tune on; the flow sets it to the size of the set to be clustered.
    tune_samples: int = after_training(TUNE_SAMPLES)
    # Rows each epoch is scored on (the first rows of the tune slice): epoch choice only.
    epoch_val_samples: int = EPOCH_VAL_SAMPLES
    # None: candidates from quantiles of the validation link scores, refined (clustering.thresholds)
    tau_grid: tuple[float, ...] | None = after_training(None)
    seed: int = 0
    # clustering
    partition: str = after_training("union_find")  # union_find | infomap
    # One weight per pair from p(q->k) and p(k->q): any = max (the paper: a link when either
    # direction passes tau), mutual = min of both, average = mean (a side not scored counts 0).
    # "average" is the default (not the paper's "any"): on generated benchmark features it gave
    # +3 to +12 points of pairwise F over "any" at the best tau of each (see docs/experiments/clustering.md).
    # "tuned": each rule is tuned on the labelled tune slice like tau (epochs are scored with
    # "average") and the one with the best tune score is kept (``FaceT.link_rule_``;
    # clustering.link_tuning).
    link_rule: str = after_training("average")
    # How Infomap weighs a link (clustering.partition.LINK_WEIGHTS). "sqrt_odds", not the probability:
    # FaceT's probabilities crowd near 1, and with the square root of their odds FaceT + Infomap led
    # plain Infomap on three draws of generated features by +2.2 / +1.6 / +1.4 FP instead of +1.8 / -0.0
    # / -0.6; on real faces it lost 0.5-1.8 FP and gained 0.3-0.9 BCubed F (docs/experiments/clustering.md, "Clustering on real faces").
    infomap_weight: str = after_training("sqrt_odds")
    # Infomap searches per partition, the one of least code length kept, where tau is tuned after training and
    # where a set is clustered (an epoch's quick score uses one); Infomap's Markov time (> 1: fewer, larger
    # modules). See clustering.partition.InfomapSearch. Markov time 2, not Infomap's 1: with root-odds weights
    # at time 1 FaceT + Infomap split identities into sub-modules on some draws (-1.7 +- 7.1 FP over the best
    # baseline on ten confirmation draws of generated features); chosen at 2 on the development draws, it led
    # every baseline on all 15 confirmation draws (docs/experiments/clustering.md, "Infomap's search").
    infomap_trials: int = after_training(1)
    infomap_markov_time: float = after_training(2.0)
    # link threshold as a probability; None = tuned on the validation slice (as log-odds: ``FaceT.tau_``)
    tau: float | None = after_training(None)
    max_cluster_size: int | None = after_training(None)
    min_cluster_size: int = after_training(1)
    # execution
    device: str = after_training("auto")
    inference_batch: int = after_training(512)  # pivots per LP batch (RE batches are 8x larger; at most 128 on the CPU)
    # autocast of inference (semiface.devices.INFERENCE_PRECISIONS): "bfloat16" speeds the CPU inference up on a
    # CPU with bf16 instructions, at the cost of bf16 rounding in the link scores
    inference_precision: str = after_training("auto")
    memmap_bytes: int = after_training(1 << 30)  # enhanced features larger than this go to a memory map
    work_dir: str | None = after_training(None)  # checkpoints (resume) and memory maps; None = no checkpoints

    @property
    def model_dim(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def demo(cls, **overrides: object) -> FaceTConfig:
        """A small, CPU-friendly preset for the demo flow and the tests."""
        small = dict(
            hop1=20, hop2=5, depth=1, heads=2, head_dim=32, ff_dim=128, dropout=0.1, epochs=6, batch_size=32,
            lr=0.002, warmup_steps=50, edge_embedding="concat_product",
        )
        return cls.from_dict({**small, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: object) -> FaceTConfig:
        """``paper`` (the paper's algorithm and sizes: ``PAPER_ALGORITHM`` over the defaults) or ``demo``
        (CPU sizes, the project's algorithm), with overrides."""
        if name == "paper":
            return cls.from_dict({**PAPER_ALGORITHM, **overrides})
        if name == "demo":
            return cls.demo(**overrides)
        raise ConfigError(f"facet: unknown preset {name!r}; known: {', '.join(PRESETS)}")

    @classmethod
    def from_dict(cls, params: dict) -> FaceTConfig:
        """Build from a dict, refusing unknown keys (ConfigError names them)."""
        reject_unknown(params, {f.name for f in dataclasses.fields(cls)}, "facet")
        if params.get("tau_grid") is not None:
            params = {**params, "tau_grid": tuple(float(t) for t in params["tau_grid"])}
        return cls(**params)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: object) -> FaceTConfig:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        infomap_search(self)  # refuses trials under 1 and a Markov time <= 0
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {VARIANTS}, got {self.variant!r}"),
            (self.edge_embedding in EDGE_EMBEDDINGS, f"edge_embedding must be one of {EDGE_EMBEDDINGS}, got {self.edge_embedding!r}"),
            (self.loss_weighting in LOSS_WEIGHTINGS, f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"),
            (self.partition in PARTITIONS, f"partition must be one of {PARTITIONS}, got {self.partition!r}"),
            (self.infomap_weight in LINK_WEIGHTS, f"infomap_weight must be one of {LINK_WEIGHTS}, got {self.infomap_weight!r}"),
            (self.tune_on in ("heldout", "all"), f"tune_on must be heldout or all, got {self.tune_on!r}"),
            (self.link_rule in RULE_CHOICES, f"link_rule must be one of {RULE_CHOICES}, got {self.link_rule!r}"),
            (self.hop1 >= 1 and self.hop2 >= 1, f"hop1 and hop2 must be >= 1, got {self.hop1}, {self.hop2}"),
            (self.depth >= 1 and self.heads >= 1 and self.head_dim >= 1 and self.ff_dim >= 1, "depth, heads, head_dim, ff_dim must be >= 1"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.epochs >= 0 and self.batch_size >= 1, f"epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"),
            (self.lr > 0 and self.weight_decay >= 0 and self.warmup_steps >= 0, "lr > 0, weight_decay >= 0, warmup_steps >= 0"),
            (self.max_train_pivots is None or self.max_train_pivots >= 1,
             f"max_train_pivots must be None or >= 1, got {self.max_train_pivots}"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.tune_samples >= 1 and self.epoch_val_samples >= 1,
             f"tune_samples and epoch_val_samples must be >= 1, got {self.tune_samples}, {self.epoch_val_samples}"),
            (self.tau_grid is None or (len(self.tau_grid) > 0 and all(0.0 < t < 1.0 for t in self.tau_grid))
             , "tau_grid must be None (adaptive) or values in (0, 1)"),
            (self.tau is None or 0.0 <= self.tau < 1.0, f"tau must be in [0, 1) or None, got {self.tau}"),
            (self.inference_batch >= 1 and self.memmap_bytes >= 0, "inference_batch >= 1, memmap_bytes >= 0"),
            (self.inference_precision in INFERENCE_PRECISIONS,
             f"inference_precision must be one of {INFERENCE_PRECISIONS}, got {self.inference_precision!r}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise ConfigError(f"facet: {problem}")
