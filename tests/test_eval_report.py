"""evaluate / compare / CLIs on a small manifest; the identity-overlap guard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recognition_eval import compare as compare_cli
from recognition_eval.__main__ import main as evaluate_cli
from recognition_eval.identification import identification_cmc
from recognition_eval.inputs import EvaluationWarning
from recognition_eval.overlap import check_identity_overlap
from recognition_eval.report import compare, evaluate
from semiface.errors import DataError
from semiface.features import save_features
from semiface.manifest import write_manifest

DIM = 32


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _split_data(rng, *, probe_names, train_names, shared_centre=None, noise=0.8):
    """Manifest + features: labelled rows (train_names), probe rows (probe_names), 400 distractors.

    ``shared_centre = (probe_name, train_name)`` gives that training class the probe identity's centre.
    """
    centres = {name: rng.standard_normal(DIM) for name in [*probe_names, *train_names]}
    if shared_centre is not None:
        centres[shared_centre[1]] = centres[shared_centre[0]]
    rows, feats = [], []
    for label, name in enumerate(train_names):
        for _ in range(5):
            rows.append(("labelled", label, name))
            feats.append(centres[name] + noise * rng.standard_normal(DIM))
    for name in probe_names:
        for _ in range(int(rng.integers(2, 6))):
            rows.append(("probe", -1, name))
            feats.append(centres[name] + noise * rng.standard_normal(DIM))
    for i in range(400):
        rows.append(("distractor", -1, f"distractor{i}"))
        feats.append(rng.standard_normal(DIM))
    frame = pd.DataFrame(rows, columns=["split", "label", "identity"])
    frame.insert(0, "path", [f"img/{i}.jpg" for i in range(len(frame))])
    return frame, _unit(np.array(feats))


@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    frame, feats = _split_data(
        rng, probe_names=[f"probe{i}" for i in range(10)], train_names=[f"t{i}" for i in range(8)]
    )
    write_manifest(frame, root / "manifest.parquet")
    save_features(root / "features.npy", feats)
    return root, frame, feats


def test_evaluate_writes_tables_json_and_plots(split_files, tmp_path):
    root, frame, feats = split_files
    before = (root / "features.npy").read_bytes()
    summary = evaluate(
        root / "features.npy", root / "manifest.parquet", tmp_path, sizes=(10, 100, 1000), device="cpu"
    )

    probes = frame["split"] == "probe"
    direct = identification_cmc(
        feats[probes.to_numpy()],
        frame.loc[probes, "identity"],
        feats[(frame["split"] == "distractor").to_numpy()],
        sizes=(10, 100, 1000),
        device="cpu",
    )
    assert summary["largest_size"] == 400
    assert list(summary["rank1"]) == ["10", "100", "400"]
    np.testing.assert_allclose(list(summary["rank1"].values()), direct.rank1)
    assert summary["overlap_found"] is False
    n, counts = probes.sum(), frame.loc[probes, "identity"].value_counts().to_numpy()
    assert summary["n_negatives"] == n * (n - 1) // 2 - (counts * (counts - 1) // 2).sum() + 400 * n

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["identification"]["tie_rule"].startswith("ties count against the probe")
    assert results["verification"]["n_negative_distractor_pairs"] == 400 * probes.sum()
    assert results["overlap"]["checked_names"] and results["overlap"]["checked_features"]
    table = pd.read_parquet(tmp_path / "identification.parquet")
    assert table["n_distractors"].tolist() == [10, 100, 400]
    np.testing.assert_allclose(table[[f"rank_{r}" for r in range(1, 11)]].to_numpy(), direct.cmc)
    verification = pd.read_parquet(tmp_path / "verification.parquet")
    assert verification["far"].tolist() == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    assert verification["tar"].isna().tolist() == (~verification["measurable"]).tolist()
    for name in ("rank1_vs_distractors.png", "cmc.png", "roc.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000
    assert (root / "features.npy").read_bytes() == before
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_overlap_guard_fires_on_planted_overlap_by_name_and_features():
    rng = np.random.default_rng(1)
    probe_names = ["alice", "bob", "carol", "dave"]
    frame, feats = _split_data(
        rng, probe_names=probe_names, train_names=[" Alice", "t1", "t2", "t3"], shared_centre=("bob", "t2")
    )
    probes = (frame["split"] == "probe").to_numpy()
    labels = np.where(frame["split"] == "labelled", frame["label"], -1)
    with pytest.warns(EvaluationWarning, match="identity overlap"):
        report = check_identity_overlap(
            frame.loc[probes, "identity"],
            train_identities=frame.loc[~probes, "identity"],
            probe_features=feats[probes],
            train_features=feats,
            train_labels=labels,
        )
    assert report.by_name == ("alice",)
    matches = {(o.probe_identity, o.train_label) for o in report.by_features}
    assert matches == {("bob", 2)}  # the class drawn around bob's centre; " Alice" has its own centre
    assert report.by_features[0].cosine >= report.threshold


def test_overlap_guard_quiet_on_disjoint_identities():
    rng = np.random.default_rng(2)
    frame, feats = _split_data(rng, probe_names=["p0", "p1", "p2"], train_names=["t0", "t1", "t2"])
    probes = (frame["split"] == "probe").to_numpy()
    report = check_identity_overlap(
        frame.loc[probes, "identity"],
        train_identities=["t0", "t1", "t2"],
        probe_features=feats[probes],
        train_features=feats,
        train_labels=np.where(frame["split"] == "labelled", frame["label"], -1),
    )
    assert not report.found and report.checked_names and report.checked_features


def test_evaluate_records_overlap_and_left_out_probes(tmp_path):
    rng = np.random.default_rng(3)
    frame, feats = _split_data(rng, probe_names=["p0", "p1", "t1"], train_names=["t0", "t1"])
    frame.loc[len(frame) - 401, "identity"] = "lonely"  # last probe row gets an identity of its own
    with pytest.warns(EvaluationWarning):
        summary = evaluate(feats, frame, tmp_path, sizes=(10, 100), device="cpu")
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["overlap_found"] is True
    assert results["overlap"]["by_name"] == ["t1"]
    assert results["identification"]["left_out_identities"] == ["lonely"]
    assert any("single image" in note for note in results["notes"])
    assert any("identity overlap" in note for note in results["notes"])


def test_compare_and_clis(split_files, tmp_path, capsys):
    root, _, _ = split_files
    runs = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert (
            evaluate_cli(
                [
                    "--features",
                    str(root / "features.npy"),
                    "--manifest",
                    str(root / "manifest.parquet"),
                    "--out",
                    str(out),
                    "--sizes",
                    "10",
                    "100",
                    "1K",
                    "--seed",
                    str(seed),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        runs[seed] = json.loads((out / "results.json").read_text())
    assert '"rank1_at_largest"' in capsys.readouterr().out  # the summary is printed as JSON

    path = compare(
        {"labelled-only": tmp_path / "seed0/results.json", "r=1": tmp_path / "seed1/results.json"},
        tmp_path / "cmp",
    )
    table = pd.read_parquet(tmp_path / "cmp/comparison.parquet")
    assert table["label"].tolist() == ["labelled-only", "r=1"]
    assert table["rank1@10"].tolist() == [
        runs[0]["identification"]["rank1"][0],
        runs[1]["identification"]["rank1"][0],
    ]
    assert table["rank1@400"].tolist() == [
        runs[0]["identification"]["rank1"][-1],
        runs[1]["identification"]["rank1"][-1],
    ]
    assert json.loads(path.read_text())["rows"][1]["label"] == "r=1"
    assert "| r=1 |" in (tmp_path / "cmp/comparison.md").read_text()
    assert (tmp_path / "cmp/comparison.png").stat().st_size > 5_000

    assert (
        compare_cli.main(["r=3=" + str(tmp_path / "seed1/results.json"), "--out", str(tmp_path / "cli")]) == 0
    )
    assert "| r=3 |" in capsys.readouterr().out
    assert compare_cli.main(["x=" + str(tmp_path / "missing.json"), "--out", str(tmp_path / "cli")]) == 2
    assert "missing.json: results file not found" in capsys.readouterr().err


def test_evaluate_bad_inputs(split_files, tmp_path):
    root, frame, feats = split_files
    with pytest.raises(DataError, match="no rows with split == 'distractor'"):
        evaluate(
            feats,
            frame.assign(split=frame["split"].replace("distractor", "unlabelled")),
            tmp_path,
            device="cpu",
        )
    with pytest.raises(DataError, match="features: 10 feature rows but the manifest has"):
        evaluate(feats[:10], frame, tmp_path, device="cpu")
    with pytest.raises(DataError, match="feature file not found"):
        evaluate(root / "nope.npy", frame, tmp_path, device="cpu")
    bad = feats.copy()
    bad[-1, 0] = np.nan
    with pytest.raises(DataError, match=rf"features: NaN .* rows \[{len(feats) - 1}\]"):
        evaluate(bad, frame, tmp_path, sizes=(1000,), device="cpu")
    assert not (tmp_path / "results.json").exists()
