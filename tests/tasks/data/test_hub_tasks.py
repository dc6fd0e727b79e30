"""Every Ankh paper hub task read offline from a small local copy of its Hub repo: the same file names, split
files and columns as the authors' code reads (the proteinea/* Hub dataset repos), found through
FASTANKH_DATASETS_DIR and loaded by the same `datasets.load_dataset` call and everything after it."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import tasks.task.schema  # noqa: F401  (task schema + ${class_ids:N}, as train.py registers them)
from fastankh import load_tokenizer
from tasks.data.datamodule import TaskDataModule
from tasks.data.sources import DATASETS_DIR_ENV
from tasks.task.spec import IGNORE_INDEX, TaskSpec

ROOT = Path(__file__).resolve().parents[3]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("ankh_tiny")


def task_spec(name: str) -> TaskSpec:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return TaskSpec.from_config(compose("config", overrides=[f"task={name}"]).task)


def sequences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(RESIDUES) for _ in range(rng.randint(5, 12))) for _ in range(n)]


def hub_copy(root: Path, hub_id: str, files: dict[str, pd.DataFrame]) -> None:
    """A local folder laid out like the Hub repo `hub_id`: these file names, these columns."""
    folder = root / hub_id
    folder.mkdir(parents=True)
    for name, frame in files.items():
        frame.to_csv(folder / name, index=False)


def loaded(tmp_path, monkeypatch, tok, name: str) -> TaskDataModule:
    monkeypatch.setenv(DATASETS_DIR_ENV, str(tmp_path))
    dm = TaskDataModule(task_spec(name), tok, batch_size=2)
    dm.prepare_data()
    dm.setup()
    return dm


def ss_frame(n: int, seed: int) -> pd.DataFrame:
    """`input`, `dssp3`, `dssp8`, `disorder` (space-separated floats written as "0", "0.0", "0.00" or "1.0")."""
    rng = random.Random(seed)
    rows = []
    for seq in sequences(n, seed):
        rows.append(
            {
                "input": seq,
                "dssp3": "".join(rng.choice("CEH") for _ in seq),
                "dssp8": "".join(rng.choice("HGIEBTSC") for _ in seq),
                "disorder": " ".join(rng.choice(["1.0", "1.0", "0", "0.0", "0.00"]) for _ in seq),
            }
        )
    return pd.DataFrame(rows)


SS_FILES = ["training_hhblits.csv", "CASP12.csv", "CASP13.csv", "CASP14.csv", "TS115.csv", "CB513.csv"]


@pytest.mark.parametrize(
    "task, column, alphabet", [("secondary_structure", "dssp3", "HEC"), ("secondary_structure_8", "dssp8", "HGIEBTSC")]
)
def test_secondary_structure_files_columns_and_disorder_mask(tmp_path, monkeypatch, tok, task, column, alphabet):
    frames = {name: ss_frame(20 if i == 0 else 3, seed=i) for i, name in enumerate(SS_FILES)}
    hub_copy(tmp_path, "proteinea/secondary_structure_prediction", frames)
    dm = loaded(tmp_path, monkeypatch, tok, task)
    assert dm.test_split_names == ["CASP12", "CASP14", "TS115", "CB513"]
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 20 and len(dm.splits["val"]) >= 1
    cb513 = frames["CB513.csv"]
    for i in range(3):
        labels, counted = dm.splits["CB513"]["labels"][i], dm.splits["CB513"]["label_mask"][i]
        disorder = cb513["disorder"][i].split()
        assert counted == [float(v) != 0 for v in disorder]  # "0", "0.0" and "0.00" all mask
        want = [IGNORE_INDEX if float(v) == 0 else alphabet.index(c) for v, c in zip(disorder, cb513[column][i])]
        assert labels == want


def test_localization_splits_columns_and_ten_classes(tmp_path, monkeypatch, tok):
    spec = task_spec("localization")
    rng = random.Random(0)

    def frame(n, seed):
        return pd.DataFrame(
            {"input": sequences(n, seed), "loc": [rng.choice(spec.labels) for _ in range(n)], "membrane": "S"}
        )

    train, test = frame(20, 1), frame(4, 2)
    hub_copy(tmp_path, "proteinea/deeploc", {"deeploc_train.csv": train, "deeploc_test.csv": test})
    dm = loaded(tmp_path, monkeypatch, tok, "localization")
    assert len(spec.labels) == 10 and dm.test_split_names == ["test"]
    assert dm.splits["test"]["labels"][:] == [spec.labels.index(x) for x in test["loc"]]
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 20


def test_solubility_named_splits_and_binary_labels(tmp_path, monkeypatch, tok):
    files = {
        f"{split}.csv": pd.DataFrame({"sequences": sequences(4, i), "labels": [0, 1, 1, 0]})
        for i, split in enumerate(["train", "validation", "test"])
    }
    hub_copy(tmp_path, "proteinea/solubility", files)
    dm = loaded(tmp_path, monkeypatch, tok, "solubility")
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert dm.splits["test"]["labels"][:] == [0, 1, 1, 0]
    assert dm.splits["val"]["labels"][:] == [0, 1, 1, 0] and dm.label_names == ["0", "1"]


def test_fluorescence_splits_from_its_file_names(tmp_path, monkeypatch, tok):
    files = {
        f"fluorescence_{part}.csv": pd.DataFrame(
            {"primary": sequences(3, i), "log_fluorescence": [1.5 + i, 2.0, 3.25], "num_mutations": [1, 2, 3]}
        )
        for i, part in enumerate(["train", "valid", "test"])
    }
    hub_copy(tmp_path, "proteinea/fluorescence", files)
    dm = loaded(tmp_path, monkeypatch, tok, "fluorescence")
    assert dm.test_split_names == ["test"]
    assert dm.splits["val"]["labels"][:] == [2.5, 2.0, 3.25]  # fluorescence_valid.csv is the validation split
    assert dm.splits["test"]["labels"][:] == [3.5, 2.0, 3.25]


def test_remote_homology_splits_fold_holdout_file_and_1195_folds(tmp_path, monkeypatch, tok):
    def frame(n, seed, folds):
        return pd.DataFrame({"primary": sequences(n, seed), "fold_label": folds})

    files = {
        "remote_homology_train.csv": frame(3, 0, [0, 1194, 7]),
        "remote_homology_valid.csv": frame(2, 1, [3, 4]),
        "test_fold_holdout.csv": frame(2, 2, [1193, 12]),
        "test_family_holdout.csv": frame(2, 3, [5, 6]),
        "test_superfamily_holdout.csv": frame(2, 4, [8, 9]),
    }
    hub_copy(tmp_path, "proteinea/remote_homology", files)
    dm = loaded(tmp_path, monkeypatch, tok, "remote_homology")
    assert len(dm.task.labels) == 1195 and dm.task.labels[1194] == "1194"
    assert dm.test_split_names == ["test_fold_holdout"]
    assert dm.splits["train"]["labels"][:] == [0, 1194, 7]
    assert dm.splits["val"]["labels"][:] == [3, 4]
    assert dm.splits["test_fold_holdout"]["labels"][:] == [1193, 12]


@pytest.mark.parametrize(
    "task, hub_id, names",
    [
        ("thermostability", "proteinea/thermostability", ["thermo_train.csv", "thermo_eval.csv", "thermo_test.csv"]),
        ("gb1", "proteinea/gb1_sampled", ["gb1-sampled-train.csv", "gb1-sampled-eval.csv", "gb1-sampled-test.csv"]),
    ],
)
def test_fitness_regression_files_and_columns(tmp_path, monkeypatch, tok, task, hub_id, names):
    files = {
        name: pd.DataFrame({"sequence": sequences(3, i), "target": [0.5 * i, 1.0, -2.0]})
        for i, name in enumerate(names)
    }
    hub_copy(tmp_path, hub_id, files)
    dm = loaded(tmp_path, monkeypatch, tok, task)
    test_split = Path(names[2]).stem
    assert dm.test_split_names == [test_split]
    assert dm.splits["val"]["labels"][:] == [0.5, 1.0, -2.0]
    assert dm.splits[test_split]["labels"][:] == [1.0, 1.0, -2.0]
    assert dm.train_label_mean == pytest.approx(-1.0 / 3)


def test_contact_prediction_guessed_layout_pairs_and_validity(tmp_path, monkeypatch, tok):
    """The schema is a guess (see conf/task/contact_prediction.yaml): `primary`, `contacts` as 0-based `i-j`
    pairs, `valid_mask` per residue (0 = no coordinates), splits train / validation / test."""
    seqs = ["MKTAYIAKQRQISFVK", "MKVLAAGIVGLLLAAC"]
    frame = pd.DataFrame(
        {
            "primary": seqs,
            "contacts": ["0-7 1-9 2-14", "3-10"],
            "valid_mask": [" ".join("1" * 15 + "0"), " ".join("0" + "1" * 15)],
        }
    )
    hub_copy(tmp_path, "proteinea/contact_prediction", {f"{s}.csv": frame for s in ("train", "validation", "test")})
    dm = loaded(tmp_path, monkeypatch, tok, "contact_prediction")
    assert dm.test_split_names == ["test"]
    test = dm.splits["test"]
    assert test["labels"][0] == [[0, 7], [1, 9], [2, 14]] and test["labels"][1] == [[3, 10]]
    assert test["label_mask"][0] == [True] * 15 + [False] and test["label_mask"][1] == [False] + [True] * 15
