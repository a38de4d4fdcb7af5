"""Typed models of the flows' nested parameters: ``data_options``, ``train_options`` / ``retrain_options``
and ``eval_set``.

Prefect builds the parameter form (the UI, the deployment's schema) from them and validates a run's
parameters against them, so a misspelt field is refused when the run is created, naming the field.
They accept the plain dicts that deployments and callers pass (``{"batch_size": 512}``). Every field
of the option models defaults to None, "not set": the flow passes on only the fields that are not
None (``as_options``), so the source's, TrainConfig's or the first training's value holds for the
rest, and a form that sends every empty field back as null means the same as one that sends none.
(TrainConfig's ``grad_clip: None``, no clipping, is therefore out of reach: a very large value does it.)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from backbone.data.demo_faces import DemoConfig
from backbone.margin import MARGINS
from backbone.model import POOLINGS
from backbone.train_config import HEAD_INITS, HEADS, OPTIMIZERS, SCHEDULES, TrainConfig
from tasks.prepare_data import FEATURE_OPTIONS, SPLIT_OPTIONS
from tasks.train_backbone import TASK_OWNED

_FORBID = ConfigDict(extra="forbid")
# TrainConfig fields with a fixed set of values: a choice in the form.
_TRAIN_CHOICES = {"margin": MARGINS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "pooling": POOLINGS,
                  "heads": HEADS, "head_init": HEAD_INITS}
# TrainConfig fields that the flow fills from its own parameters when the options leave them unset.
_FROM_THE_FLOW = {"trunk": "backbone", "image_size": "image_size", "epochs": "epochs", "seed": "seed"}
_SPLIT_HELP = {
    "labelled": "share of the identities labelled (folder / recordio; default 0.1)",
    "unlabelled": "share of the identities unlabelled, the pool to cluster (folder / recordio; default 0.7)",
    "probe": "share of the identities used as probes (folder / recordio; default 0.1, 0 with eval_set)",
    "distractor": "share of the identities used as distractors (folder / recordio; default 0.1, 0 with eval_set)",
    "max_identities": "keep a seeded random subset of this many identities, for trials (folder / recordio; "
                      "default: all)",
    "verify": "decode every image of a folder once, naming corrupt files (folder; default true)",
    "labelled_part": "the labelled part's name: features/<part>.bin, labels/<part>.meta (features; default "
                     f"{FEATURE_OPTIONS['labelled_part']})",
    "unlabelled_part": f"the unlabelled part's name (features; default {FEATURE_OPTIONS['unlabelled_part']})",
    "dim": "the features' dimension (features; default: read from each part's sizes)",
}


def _optional(annotation: Any) -> Any:
    return annotation | None


def _demo_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(DemoConfig)
    fields = {}
    for f in dataclasses.fields(DemoConfig):
        default = {"image_size": "the flow's image_size", "seed": "the flow's seed"}.get(f.name, repr(f.default))
        fields[f.name] = (_optional(hints[f.name]), Field(None, description=f"demo faces (default {default})"))
    return fields


def _split_fields() -> dict[str, Any]:
    types = {"max_identities": int, "verify": bool, "labelled_part": str, "unlabelled_part": str, "dim": int}
    return {name: (_optional(types.get(name, float)), Field(None, description=_SPLIT_HELP[name]))
            for name in (*SPLIT_OPTIONS, *FEATURE_OPTIONS)}


DataOptions = create_model(
    "DataOptions", __config__=_FORBID, __doc__=(
        "How the data source is read or generated: DemoConfig fields (demo), identity shares (folder, recordio) "
        "or part names (features). A field of another source is refused when the run starts."),
    **_demo_fields(), **_split_fields())


def _train_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in TASK_OWNED:
            continue
        annotation = Literal[_TRAIN_CHOICES[f.name]] if f.name in _TRAIN_CHOICES else hints[f.name]
        default = (f"the flow's {_FROM_THE_FLOW[f.name]}" if f.name in _FROM_THE_FLOW
                   else repr(f.default if f.default is not dataclasses.MISSING else f.default_factory()))
        fields[f.name] = (_optional(annotation), Field(None, description=f"TrainConfig.{f.name} (default {default})"))
    fields["nproc_per_node"] = (int | None, Field(None, ge=1, description=(
        "train under torchrun with this many processes (DDP, batch_size split between them; default 1)")))
    return fields


TrainOptions = create_model(
    "TrainOptions", __config__=_FORBID, __doc__=(
        "Backbone training settings (TrainConfig fields, and nproc_per_node); device, num_workers and the "
        "starting model are the flow's and the stage's."),
    **_train_fields())


class EvalSet(BaseModel):
    """An evaluation set in the MegaFace Challenge 1 layout, instead of the source's probe / distractor split."""

    model_config = _FORBID

    probes: str | None = Field(None, description="FaceScrub folder (<identity>/<image>) or a MegaFace devkit list")
    distractors: str | None = Field(None, description="MegaFace distractor folder or a devkit list")
    probe_root: str | None = Field(None, description="the folder a probe list's paths are under (lists only)")
    distractor_root: str | None = Field(None, description="the folder a distractor list's paths are under (lists only)")
    probe_noise: str | None = Field(None, description="list of probe images to drop (the cleaned protocol)")
    distractor_noise: str | None = Field(None, description="list of distractor images to drop (the cleaned protocol)")
    from_variables: str | None = Field(None, description="instead of the fields above: read them when the run starts "
                                       "from the Prefect Variables PREFIX_probes, PREFIX_distractors, ... (e.g. megaface)")

    @model_validator(mode="after")
    def _one_form(self) -> EvalSet:
        paths = [name for name in type(self).model_fields if name != "from_variables" and getattr(self, name)]
        if self.from_variables is not None and paths:
            raise ValueError(f"from_variables takes no other field, got {paths}")
        if self.from_variables is None and not (self.probes and self.distractors):
            raise ValueError("probes and distractors are required (or from_variables alone)")
        return self


def as_options(value: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields of a model (or a dict: a direct call of the undecorated flow) that are not None, as a
    plain dict; None stays None."""
    if value is None:
        return None
    items = value.model_dump(mode="json").items() if isinstance(value, BaseModel) else value.items()
    return {k: v for k, v in items if v is not None}
