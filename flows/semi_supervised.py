"""Flow ``semi-supervised``: one run of the pipeline at one r_U/L (wiring only; the work is in tasks/).

prepare data -> train backbone (labelled) -> extract features -> kNN + train clusterer (labelled) ->
sample N_U = r_U/L x N_L unlabelled rows, kNN, cluster -> merge pseudo-labels -> retrain -> extract ->
evaluate both models. Every stage is cached under ``<run_dir>/stages`` (see tasks/stage_cache.py):
a rerun with the same parameters skips every stage, a crashed run resumes at the stage that failed,
and several runs sharing one ``run_dir`` (the r_U/L sweep) compute their common stages once.

``labels`` picks what the retraining set holds: ``clusters`` (pseudo-labels, the method),
``ground_truth`` (the sampled rows' true identities: the upper bound) or ``labelled_only`` (no
unlabelled rows: the lower bound, which is the first model itself, so nothing is retrained).
"""

from __future__ import annotations

if __name__ == "__main__":  # the command line, parsed before the heavy imports (--help answers at once)
    from flows.cli import parse_flow_arguments

    COMMAND_LINE = parse_flow_arguments(__file__, "semi_supervised")

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.notifications import notify_failure
from flows.parameters import DataOptions, EvalSet, TrainOptions, as_options
from flows.preflight import (
    check_device_here,
    check_distractor_sizes,
    check_prepared_distractors,
    known_distractor_count,
    runtime_eval_set,
)
from semiface.atomic import save_json
from semiface.code_version import code_version, version_tag
from semiface.errors import ConfigError, DataError
from semiface.markdown import markdown_table
from tasks.align_eval import aligned_eval_set
from tasks.build_knn import build_knn_task
from tasks.cluster import cluster_task
from tasks.common import (
    StageContext,
    artifact_key,
    experiment_name,
    result_of,
    route_library_logs,
    tag_flow_run,
)
from tasks.embed_dlib import embed_dlib_task
from tasks.evaluate import evaluate_task
from tasks.extract_features import extract_features_task
from tasks.merge_pseudo_labels import merge_pseudo_labels_task
from tasks.prepare_data import check_inputs, data_options_for, labelled_identities, with_current_inputs
from tasks.prepare_data import prepare_data as prepare_data_task
from tasks.prepare_eval import eval_set_inputs, prepare_eval_task, with_image_links
from tasks.retrain import retrain_task
from tasks.stage_cache import StageResult
from tasks.train_backbone import LAUNCH_OPTIONS, TASK_OWNED, train_backbone_task
from tasks.train_clusterer import build_method, train_clusterer_task

DataSource = Literal["demo", "folder", "recordio", "features"]
LabelsMode = Literal["clusters", "ground_truth", "labelled_only"]
ClusterFeatures = Literal["backbone", "dlib"]
RetrainFrom = Literal["scratch", "first_model"]
# The registered clustering methods (clustering.base.available_methods) and the learned linkages
# partitioned by Infomap instead of union-find.
Method = Literal["knn_uf", "infomap", "dbscan", "hac", "kmeans_oracle", "pair_gbdt", "pair_gbdt+infomap",
                 "link_stack", "link_stack+infomap", "facet", "facet+infomap", "clusformer", "clusformer+infomap"]
# auto: CUDA when torch can use it, else the CPU (a GPU torch cannot use is a loud warning); cuda: fail
# without one; cuda:N: that GPU (or one worker per GPU with CUDA_VISIBLE_DEVICES and cuda).
Device = Literal["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:4", "cuda:5", "cuda:6",
                 "cuda:7"]
# The cached stages, by the names ``refresh`` and ``stage_timeouts`` take (their folders under
# <run_dir>/stages carry them too).
StageName = Literal["prepare_data", "prepare_eval", "align_eval", "train_backbone", "extract_features", "embed_dlib", "evaluate",
                    "build_knn", "train_clusterer", "cluster", "merge_pseudo_labels", "retrain"]
STAGES = get_args(StageName)
DEFAULT_SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)
# The Prefect Variable an empty ``data_path`` is read from, per source, when the run starts (not when
# a deployment is created): `prefect variable set ms1m_path /data/faces_emore`.
DATA_PATH_VARIABLES = {"recordio": "ms1m_path", "folder": "faces_path", "features": "features_path"}


def runtime_data_path(data_source: str, data_path: str | None) -> str | None:
    """``data_path``, or when it is empty the source's Prefect Variable as it is now."""
    if data_path or data_source not in DATA_PATH_VARIABLES:
        return data_path
    from prefect.variables import Variable

    name = DATA_PATH_VARIABLES[data_source]
    value = Variable.get(name)
    if not value:
        raise ConfigError(f"data_path: required for data_source={data_source!r}: pass it (--param data_path=...) or "
                          f"set the Prefect variable {name!r} (prefect variable set {name} /path/to/data)")
    return str(value)


def train_settings(backbone: str, image_size: int, epochs: int, seed: int,
                   train_options: dict[str, Any] | None) -> dict[str, Any]:
    """The TrainConfig fields of both trainings, with the launch options (``nproc_per_node``)
    (validated; run-time fields are the tasks')."""
    from backbone.train_config import TrainConfig

    settings = {"trunk": backbone, "image_size": image_size, "epochs": epochs, "seed": seed, **(train_options or {})}
    owned = sorted(TASK_OWNED & set(settings))
    if owned:
        raise ConfigError(f"train_options: {owned} are set by the flow (device, num_workers) or the stage (init)")
    config = TrainConfig.from_dict({k: v for k, v in settings.items() if k not in LAUNCH_OPTIONS})
    nproc = settings.get("nproc_per_node", 1)
    if not isinstance(nproc, int) or nproc < 1 or config.batch_size % nproc or config.batch_size // nproc < 2:
        raise ConfigError(f"train_options.nproc_per_node: a whole number of processes >= 1 that splits batch_size "
                          f"{config.batch_size} into >= 2 images each, got {nproc!r}")
    return settings


def validate_parameters(
    data_source: str, data_path: str | None, data_options: dict[str, Any], method: str,
    method_params: dict[str, Any], ratio: float, labels: str, device: str,
    k: int, min_cluster_size: int, min_confidence: float, distractor_sizes: list[int], here: bool = True,
) -> None:
    """Fail fast, before anything is written: every ConfigError / DataError names the parameter.
    ``here`` False: the run executes elsewhere (see ``run_settings``), its input files are checked
    only where this machine sees them."""
    if labels not in get_args(LabelsMode):
        raise ConfigError(f"labels: {labels!r} is not one of {', '.join(get_args(LabelsMode))}")
    if not ratio > 0:
        raise ConfigError(f"ratio: r_U/L must be > 0, got {ratio}")
    if device not in get_args(Device):
        raise ConfigError(f"device: {device!r} is not one of {list(get_args(Device))}")
    if k < 2:
        raise ConfigError(f"k: at least 2 neighbours (self + one), got {k}")
    if min_cluster_size < 1 or not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_cluster_size >= 1 and 0 <= min_confidence <= 1, got {min_cluster_size}, "
                          f"{min_confidence}")
    if not distractor_sizes or any(int(s) < 1 for s in distractor_sizes):
        raise ConfigError(f"distractor_sizes: positive sizes needed, got {distractor_sizes}")
    build_method(method, method_params, device)  # unknown method or parameter -> ConfigError
    data_options_for(data_source, data_options)
    if here or _visible(data_source, data_path, data_options):
        check_inputs(data_source, data_path, data_options)
    if data_source == "features" and labels == "labelled_only":
        raise ConfigError("labels='labelled_only' needs images to train on; data_source='features' has none")


def validate_eval_set(data_source: str, data_options: dict[str, Any], eval_set: dict[str, Any] | None,
                      here: bool = True) -> None:
    """An evaluation set needs images to extract; without one the source must hold probes and distractors."""
    if eval_set is None:
        if data_source in ("folder", "recordio") and not data_options_for(data_source, data_options)["probe"]:
            raise ConfigError(f"data_options ({data_source}): probe and distractor shares are 0 and no eval_set is "
                              "given: there is nothing to evaluate on")
        return
    if data_source == "features":
        raise ConfigError("eval_set: data_source='features' has no backbone to extract the evaluation images with")
    for name, path in eval_set_inputs(eval_set).items():
        if here and not path.exists():
            raise DataError(path, f"eval_set.{name}: not found")


def validate_holdout(share: float, data_source: str, data_path: str | None, data_options: dict[str, Any],
                     here: bool = True) -> None:
    """``clusterer_holdout``: a share in [0, 1) that leaves at least 2 labelled identities on each side,
    counted from the source before anything is read (the demo's settings, a folder's identity folders,
    a RecordIO's ``property`` file; a source this machine does not see is counted where it runs)."""
    from clustering.clusterer_holdout import holdout_count

    if not 0.0 <= share < 1.0:
        raise ConfigError(f"clusterer_holdout: a share of the labelled identities in [0, 1), got {share}")
    if share and data_source == "features":
        raise ConfigError("clusterer_holdout keeps identities out of backbone training; data_source='features' has none")
    if share and (here or _visible(data_source, data_path, data_options)):
        identities = labelled_identities(data_source, data_path, data_options)
        if identities is not None:
            holdout_count(share, identities)


def _visible(data_source: str, data_path: str | None, data_options: dict[str, Any]) -> bool:
    """Whether this machine sees the source's inputs (a sweep's machine may not see its workers' data)."""
    try:
        check_inputs(data_source, data_path, data_options)
    except DataError:
        return False
    return True


def sizes_chosen(sizes: list[int]) -> bool:
    """Whether ``distractor_sizes`` were chosen (an error when one exceeds the set) rather than the defaults
    (capped by the set, which the evaluation report and the run log say)."""
    return tuple(sizes) != DEFAULT_SIZES


@dataclass(frozen=True)
class RunSettings:
    """One run's parameters as its stages take them: normalised and checked by ``run_settings``."""

    data_path: str | None
    data_options: dict[str, Any]
    method_params: dict[str, Any]
    eval_set: dict[str, Any] | None
    sizes: list[int]
    train: dict[str, Any] | None  # None: data_source="features" trains nothing
    retrain: dict[str, Any] | None
    timeouts: dict[str, float | None]


def run_settings(
    *, data_source: str, data_path: str | None, data_options: Mapping[str, Any] | DataOptions | None, method: str,
    method_params: Mapping[str, Any] | None, cluster_features: str, clusterer_holdout: float, ratio: float,
    labels: str, backbone: str, image_size: int, epochs: int, train_options: TrainOptions | Mapping[str, Any] | None,
    retrain_from: str, retrain_options: TrainOptions | Mapping[str, Any] | None, k: int, min_cluster_size: int,
    min_confidence: float, distractor_sizes: Any, eval_set: EvalSet | Mapping[str, Any] | None, device: str,
    seed: int, refresh: list[str] | None, stage_timeouts: Mapping[str, float | None] | None, here: bool = True,
    **_: Any,
) -> RunSettings:
    """Every check of a run's parameters (``semi_supervised``'s, by name), before anything is written;
    each ConfigError / DataError names the parameter. The run calls it first, and a sweep calls it for
    every run it will start before starting any. ``here`` False: the run executes on another machine (a
    deployment's worker), so input files, the dlib extra and a Prefect-Variable ``data_path`` are
    checked only where this machine can see them."""
    data_options = as_options(data_options) or {}
    eval_set = as_options(eval_set)
    train_options, retrain_options = as_options(train_options) or {}, as_options(retrain_options) or {}
    if data_source == "demo":
        data_options.setdefault("image_size", image_size)
        data_options.setdefault("seed", seed)
    if eval_set and data_source in ("folder", "recordio"):
        data_options.setdefault("probe", 0.0)
        data_options.setdefault("distractor", 0.0)
    method_params = dict(method_params or {})
    sizes = [int(s) for s in distractor_sizes]
    has_images = data_source != "features"
    train = train_settings(backbone, image_size, epochs, seed, train_options) if has_images else None
    retrain = train_settings(backbone, image_size, epochs, seed, {**train_options, **retrain_options}
                             ) if has_images else None
    if train is not None and train.get("head_init") == "class_means":
        raise ConfigError("train_options: head_init='class_means' needs a starting model and the first training "
                          "starts from scratch; set it in retrain_options (with retrain_from='first_model')")
    if retrain is not None and retrain.get("head_init") == "class_means" and retrain_from == "scratch":
        raise ConfigError("retrain_options: head_init='class_means' starts the head at the first model's class means; "
                          "it needs retrain_from='first_model'")
    for name, stages in (("refresh", refresh or ()), ("stage_timeouts", stage_timeouts or {})):
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ConfigError(f"{name}: unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    timeouts = dict(stage_timeouts or {})
    if any(hours is not None and not hours > 0 for hours in timeouts.values()):
        raise ConfigError(f"stage_timeouts: hours > 0 (or null: no timeout) by stage, got {timeouts}")
    if here:
        check_device_here(device)  # a GPU deployment picked up by a worker without one fails here, naming why
    data_path = runtime_data_path(data_source, data_path)
    eval_set = runtime_eval_set(eval_set)
    validate_parameters(data_source, data_path, data_options, method, method_params, ratio, labels, device,
                        k, min_cluster_size, min_confidence, sizes, here)
    validate_eval_set(data_source, data_options, eval_set, here)
    if here:
        check_distractor_sizes(sizes, known_distractor_count(data_source, data_path, data_options, eval_set, seed),
                               explicit=sizes_chosen(sizes))
    validate_holdout(clusterer_holdout, data_source, data_path, data_options, here)
    if cluster_features == "dlib" and not has_images:
        raise ConfigError("cluster_features='dlib' embeds images; data_source='features' has none")
    if cluster_features == "dlib" and here:
        from backbone.dlib_embedder import load_dlib_models

        load_dlib_models()  # the extra missing -> ConfigError before anything is written
    return RunSettings(data_path, data_options, method_params, eval_set, sizes, train, retrain, timeouts)


@flow(name="semi-supervised", flow_run_name="semi-supervised[{label}]", log_prints=True,
      on_failure=[notify_failure], on_crashed=[notify_failure])
def semi_supervised(
    data_source: DataSource = "demo",
    data_path: str | None = None,
    data_options: DataOptions | None = None,
    method: Method = "facet",
    method_params: dict[str, Any] | None = None,
    cluster_features: ClusterFeatures = "backbone",
    clusterer_holdout: float = 0.0,
    clusterer_density_match: bool = False,
    ratio: float = 1.0,
    labels: LabelsMode = "clusters",
    backbone: str = "resnet50",
    image_size: int = 112,
    epochs: int = 20,
    train_options: TrainOptions | None = None,
    retrain_from: RetrainFrom = "scratch",
    retrain_options: TrainOptions | None = None,
    k: int = 80,
    min_cluster_size: int = 2,
    min_confidence: float = 0.0,
    distractor_sizes: tuple[int, ...] = DEFAULT_SIZES,
    eval_set: EvalSet | None = None,
    extract_batch_size: int = 256,
    device: Device = "auto",
    num_workers: int = 4,
    run_dir: str = "runs/semi-supervised",
    seed: int = 0,
    label: str = "run",
    refresh: list[StageName] | None = None,
    stage_timeouts: dict[StageName, float | None] | None = None,
) -> dict[str, Any]:
    """One semi-supervised run at one r_U/L: the summary it returns is also written to <run_dir>/<label>.json.

    Args:
        data_source: where the faces come from: demo (generated), folder (root/<identity>/<image>),
            recordio (InsightFace train.rec / train.idx, e.g. MS1M) or features (learn-to-cluster
            .bin / .meta: no images, so no backbone is trained and nothing is evaluated).
        data_path: the image folder (folder), the folder holding train.rec (recordio) or the
            learn-to-cluster root (features); unused for demo. Empty: the Prefect Variable faces_path,
            ms1m_path or features_path, read when the run starts.
        data_options: how the source is read or generated: DemoConfig fields (demo), the shares of the
            identities labelled / unlabelled / probe / distractor (folder, recordio; default 0.1 / 0.7 /
            0.1 / 0.1) or the part names (features).
        method: the clustering method; X+infomap partitions X's learned links with Infomap instead of
            union-find.
        method_params: the method's own parameters (e.g. {"preset": "paper"}); default: the method's
            defaults.
        cluster_features: what is clustered: the first backbone's features, or dlib's pretrained face
            descriptors (extra "reference"; image sources only) when the first backbone is too weak to
            cluster with. The retrained model is the project's backbone either way.
        clusterer_holdout: a share of the labelled identities kept out of the first backbone's training
            and used alone to fit the clusterer, so that its thresholds are tuned on people the backbone
            has not seen, as the unlabelled ones; at least 2 identities on each side. The retraining, and
            then the lower bound (retrained too, on the same schedule), use every labelled identity.
        clusterer_density_match: fit the clusterer on a random share of its labelled rows equal to the
            share of the unlabelled pool sampled at this r_U/L, so that its people have as many images
            each as those it clusters.
        ratio: r_U/L, the unlabelled images sampled and clustered per labelled image (> 0; capped by the
            pool).
        labels: what the retraining set holds: clusters (pseudo-labels: the method), ground_truth (the
            sampled rows' true identities: the upper bound) or labelled_only (no unlabelled rows: the
            lower bound, which is the first model itself unless clusterer_holdout or
            retrain_from=first_model retrains it).
        backbone: the trunk: a timm model name (resnet50: the papers' setting).
        image_size: face crop side in pixels, for training and extraction.
        epochs: epochs of the first training (and of the retraining unless retrain_options sets them).
        train_options: TrainConfig fields for both trainings (batch_size, lr, margin, s, m, schedule...;
            nproc_per_node > 1 trains under torchrun, DDP).
        retrain_from: the retraining starts from scratch or fine-tunes the first model (the lower bound is
            then fine-tuned on the labelled rows too, so a gain comes from the pseudo-labels).
        retrain_options: TrainConfig fields for the retraining only, over train_options (e.g. fewer
            epochs when it fine-tunes; heads=multi: one margin head for the labelled and one for the
            pseudo-labelled set).
        k: neighbours in the kNN graphs (self included); FaceT needs k > hop1.
        min_cluster_size: clusters smaller than this are not pseudo-labelled (2: singletons dropped).
        min_confidence: pseudo-labelled images whose cluster confidence is below this are dropped.
        distractor_sizes: identification is measured against each of these numbers of distractors
            (capped by the distractors there are).
        eval_set: evaluate on the MegaFace Challenge 1 layout (FaceScrub probes, MegaFace distractors)
            instead of the source's probe / distractor split; the folder / recordio sources then default
            to probe and distractor shares of 0.
        extract_batch_size: images per batch of feature extraction.
        device: auto (CUDA when torch can use it), cpu, cuda (fails without a usable GPU) or cuda:N.
        num_workers: DataLoader worker processes (reading and decoding images).
        run_dir: the run folder: every stage's outputs, cached under <run_dir>/stages (a rerun with the
            same parameters skips every stage; runs sharing a folder compute their common stages once).
        seed: the seed of every random choice (splits, sampling, training).
        label: the run's name in its folder (<run_dir>/<label>.json) and in artifact keys.
        refresh: stages to recompute although cached (e.g. ["evaluate"]).
        stage_timeouts: hours by stage name over the defaults (train_backbone and retrain 72, the others
            2 to 48: sized for MS1M on one GPU); null: no timeout for that stage.
    """
    parameters = dict(locals())  # the run's parameters as Prefect validated them: nothing else is local yet
    logger = get_run_logger()
    route_library_logs()
    settings = run_settings(**parameters)
    data_path, data_options, eval_set = settings.data_path, settings.data_options, settings.eval_set
    method_params, sizes, train, retrain = settings.method_params, settings.sizes, settings.train, settings.retrain
    has_images = data_source != "features"
    version = code_version()
    tag_flow_run(version_tag(version))

    root = Path(run_dir)
    ctx = StageContext(cache_root=str(root / "stages"), label=label, experiment=experiment_name(root), device=device,
                       num_workers=num_workers, refresh=tuple(refresh or ()), timeouts=settings.timeouts,
                       code_version=version)
    logger.info("run %s: %s data, method %s, r_U/L=%g, labels=%s, stages cached in %s (code %s)",
                label, data_source, method, ratio, labels, ctx.cache_root, version_tag(version))

    data = with_current_inputs(result_of(prepare_data_task, ctx, data_source, data_path, data_options, seed),
                               data_source, data_path, data_options)
    eval_data = aligned_eval_set(ctx, with_image_links(ctx, result_of(prepare_eval_task, ctx, eval_set), eval_set),
                                 image_size) if eval_set else None
    if has_images:  # the distractors there are, counted, before anything is trained
        check_prepared_distractors(sizes, sizes_chosen(sizes), (eval_data or data).summary,
                                   "the evaluation set" if eval_data else f"the {data_source} split")

    def evaluation(model: StageResult, name: str, model_features: StageResult | None = None) -> StageResult:
        """Identification with ``model`` on the source's split (its features given or extracted) or on eval_set."""
        if eval_data is None:
            model_features = model_features or result_of(extract_features_task, ctx, data, model, extract_batch_size)
            return result_of(evaluate_task, ctx, data, model_features, name, sizes, seed)
        eval_features = result_of(extract_features_task, ctx, eval_data, model, extract_batch_size)
        return result_of(evaluate_task, ctx, eval_data, eval_features, name, sizes, seed, data)

    first_model = features = first_eval = None
    if has_images:
        first_model = result_of(train_backbone_task, ctx, data, train, clusterer_holdout, seed)
        features = result_of(extract_features_task, ctx, data, first_model, extract_batch_size)
        first_eval = evaluation(first_model, "first-model", features)
    else:
        features = data  # the features source carries its own features.npy

    clusters = sample = None
    to_cluster = features
    if cluster_features == "dlib" and labels != "labelled_only":
        to_cluster = result_of(embed_dlib_task, ctx, data)
    if labels == "labelled_only":
        merged = result_of(merge_pseudo_labels_task, ctx, data, "lower_bound")
    else:
        sample = result_of(build_knn_task, ctx, data, to_cluster, "unlabelled", k, ratio, seed)
        if labels == "ground_truth":
            merged = result_of(merge_pseudo_labels_task, ctx, data, "upper_bound", sample)
        else:
            knn_labelled = result_of(build_knn_task, ctx, data, to_cluster, "labelled", k, None, seed, clusterer_holdout)
            drawn = sample.summary["sample"]
            share = drawn["sampled"] / drawn["available"] if clusterer_density_match else 1.0
            trained = result_of(train_clusterer_task, ctx, data, to_cluster, knn_labelled, method, method_params,
                                drawn["sampled"], share, seed)
            clusters = result_of(cluster_task, ctx, data, to_cluster, sample, trained, method, method_params)
            merged = result_of(merge_pseudo_labels_task, ctx, data, "pseudo", sample, clusters,
                               min_cluster_size, min_confidence)

    final_eval = first_eval
    # The lower bound is retrained too when the ratio runs fine-tune the first model (the same extra
    # epochs on the labelled rows alone: a gain then comes from the pseudo-labels, not from the
    # epochs) or when the first model left identities out (clusterer_holdout).
    if has_images and (labels != "labelled_only" or clusterer_holdout or retrain_from == "first_model"):
        init = first_model if retrain_from == "first_model" else None
        retrained = result_of(retrain_task, ctx, data, merged, retrain, init)
        final_eval = evaluation(retrained, "retrained")

    summary = run_summary(label, ratio, labels, method, data, sample, clusters, merged, first_eval, final_eval)
    summary["code_version"] = version
    publish_verdict(ctx, summary, method)
    save_json(root / f"{label}.json", summary)
    return summary


def run_summary(label: str, ratio: float, labels: str, method: str, data: StageResult, sample: StageResult | None,
                clusters: StageResult | None, merged: StageResult, first_eval: StageResult | None,
                final_eval: StageResult | None) -> dict[str, Any]:
    """The numbers a run is judged by (small, JSON-able)."""
    m = merged.summary
    metrics = (clusters.summary.get("metrics") or {}) if clusters else {}
    effective = sample.summary["sample"]["effective_ratio"] if sample else 0.0
    summary: dict[str, Any] = {
        "label": label, "labels": labels, "method": method if labels == "clusters" else None,
        "ratio": ratio, "effective_ratio": effective,
        "n_labelled": m["n_labelled"], "n_unlabelled_pool": data.summary["images"]["unlabelled"],
        "n_sampled": m.get("n_sampled", 0), "n_kept": m["n_kept"],
        "n_pseudo_classes": m.get("n_pseudo_classes", 0), "purity": m.get("purity"),
        "pairwise_f": metrics.get("pairwise_f"), "bcubed_f": metrics.get("bcubed_f"), "nmi": metrics.get("nmi"),
        "retrain_manifest": str(merged.path("manifest")),
    }
    for name, result in (("before", first_eval), ("after", final_eval)):
        if result is not None:
            summary[f"rank1_{name}"] = result.summary["rank1"]
            summary[f"rank1_{name}_largest"] = result.summary["rank1_at_largest"]
            summary[f"results_{name}"] = str(result.path("results"))
    if final_eval is not None:
        summary["largest_distractor_size"] = final_eval.summary["largest_size"]
    summary["retrained"] = final_eval is not first_eval
    return summary


def comparison_name(method: str) -> str:
    """The folder under run_dir, and the artifact key's part, of a compare-ratios sweep of ``method``'s runs."""
    return f"compare-{method}"


def publish_verdict(ctx: StageContext, summary: dict[str, Any], method: str) -> None:
    """The run's final artifact: did retraining help, and by how much (rank-1 at every distractor size);
    it names where a sweep of ``method`` over the same run folder compares this run with the others."""
    label, comparison = summary["label"], comparison_name(method)
    compared = (f"\n\nBeside the other runs of this run folder: artifact `{artifact_key(ctx.experiment, comparison)}`"
                f" and `{Path(ctx.cache_root).parent / comparison / 'comparison.md'}` (when compare-ratios ran them).\n")
    if "rank1_before" not in summary:
        body = (f"No identification evaluation for `{label}` (feature-only data): "
                f"kept {summary['n_kept']} of {summary['n_sampled']} sampled images as pseudo-labels; "
                f"retraining manifest `{summary['retrain_manifest']}`.\n")
        create_markdown_artifact(body + compared, key=artifact_key(ctx.experiment, label, "verdict"),
                                 description="outcome of the run")
        return
    before, after = summary["rank1_before"], summary["rank1_after"]
    rows = []
    for size, b in before.items():
        a = after[size]
        rows.append({"distractors": size, "rank1_before": b, "rank1_after": a, "gain_points": 100 * (a - b),
                     "error_reduction": (a - b) / (1 - b) if b < 1 else 0.0})
    if summary["labels"] == "labelled_only":
        retrained = "retrained on them like the ratio runs" if summary["retrained"] else "nothing retrained"
        body = (f"## `{label}`: lower bound\n\nTrained on the {summary['n_labelled']} labelled images only "
                f"({retrained}): rank-1 {100 * after[list(after)[-1]]:.2f} % at the largest distractor set.\n")
    else:
        gain = rows[-1]["gain_points"]
        verdict = "**Yes**" if gain > 0 else ("**No**" if gain < 0 else "**No change**")
        what = "ground-truth labels (upper bound)" if summary["labels"] == "ground_truth" else "pseudo-labels"
        body = (f"## Did retraining help? {verdict}: {gain:+.2f} points of rank-1 at {rows[-1]['distractors']} "
                f"distractors ({100 * rows[-1]['rank1_before']:.2f} % -> {100 * rows[-1]['rank1_after']:.2f} %)\n\n"
                f"`{label}`: retrained on {summary['n_labelled']} labelled + {summary['n_kept']} images with {what} "
                f"(r_U/L = {summary['ratio']:g}, reached {summary['effective_ratio']:g}).\n\n")
        body += markdown_table(rows)
    create_markdown_artifact(body + compared, key=artifact_key(ctx.experiment, label, "verdict"),
                             description="did retraining help")
    create_table_artifact(rows, key=artifact_key(ctx.experiment, label, "identification"),
                          description="rank-1 before / after")


if __name__ == "__main__":
    print(semi_supervised(**COMMAND_LINE))
