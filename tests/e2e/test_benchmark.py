"""benchmark.py: the local suite on a tiny model writes the results table; without the Hub it stops before
anything runs, one line per missing dataset, nothing written; the paper comparison arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import benchmark as benchmark_script
from tasks.accuracy import suite as benchmark

ROOT = Path(__file__).resolve().parents[2]
# every run: one width-32 encoder block, a few batches (the recipes' batch 1 x 16 and 5 epochs are for real runs)
TINY = [
    "model.config.num_layers=1",
    "model.config.d_model=32",
    "model.config.d_kv=8",
    "model.config.d_ff=64",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.accumulate_grad_batches=1",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.progress_bar",
    "data.batch_size=4",
]


def quoted_list(key: str, values: list[str]) -> str:
    """`key=['a=1','~b']`: list items quoted, as on the command line (`=` and `~` need it)."""
    return f"{key}=[{','.join(repr(v) for v in values)}]"


def benchmark_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf" / "cli"), version_base="1.3"):
        return compose(
            "benchmark",
            overrides=[f"output={tmp_path / 'benchmark_results.md'}", f"run_dir={tmp_path / 'runs'}", *overrides],
        )


def test_local_suite_on_ankh_tiny_writes_the_table(tmp_path, capsys):
    suites, entries = benchmark.load_paper()
    cfg = benchmark_config(tmp_path, "model=ankh_tiny", "suite=local", "trainer=cpu", quoted_list("overrides", TINY))
    benchmark_script.main(cfg)
    table = (tmp_path / "benchmark_results.md").read_text()
    print(table)
    assert table.startswith("# Ankh benchmark: `ankh_tiny`")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # one row per local task and metric (contacts: P@L/5 and P@L), in order, on its one test split
    assert [r[0].lstrip("| ") for r in rows] == [n for n in suites["local"] for _ in entries[n].metrics]
    for _task, split, _label, ours, paper, diff in rows:
        assert split == "test" and paper == "–" and diff == "– |"  # no paper number for the shipped data
        assert not math.isnan(float(ours))
    assert f"benchmark table: {tmp_path / 'benchmark_results.md'}" in capsys.readouterr().out
    for name in suites["local"]:  # the runs are train.py's: resolved config, metrics
        assert (tmp_path / "runs" / name / "test_metrics.json").is_file()


def test_without_the_hub_it_stops_at_once_one_line_per_dataset_nothing_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suites, entries = benchmark.load_paper()
    cfg = benchmark_config(tmp_path, "model=ankh_large")
    with pytest.raises(SystemExit) as stop:
        benchmark_script.main(cfg)
    lines = str(stop.value.code).removeprefix("error: ").splitlines()
    hub_ids = {
        "proteinea/secondary_structure_prediction",
        "proteinea/deeploc",
        "proteinea/remote_homology",
        "proteinea/solubility",
        "proteinea/fluorescence",
        "proteinea/thermostability",
        "proteinea/gb1_sampled",
        "proteinea/contact_prediction",
    }
    assert len(lines) == len(hub_ids)
    assert {line.split()[2] for line in lines} == hub_ids
    assert all(line.startswith("missing dataset ") for line in lines)
    assert "(tasks: ss3, ss8)" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no table, no run directory


def test_unknown_task_names_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="tasks: unknown task\\(s\\) ss4"):
        benchmark_script.main(benchmark_config(tmp_path, "tasks=[ss3,ss4]"))


def test_rows_compare_in_the_papers_unit_and_list_untested_paper_splits():
    _, entries = benchmark.load_paper()
    rows = benchmark.rows_of(entries["ss3"], "ankh_large", {"CB513": {"q3": 0.9}, "CASP12": {"q3": 0.8}})
    by_split = {r.split: r for r in rows}
    assert by_split["CB513"].ours == pytest.approx(90.0) and by_split["CB513"].paper == 88.48
    assert by_split["CB513"].difference == pytest.approx(1.52)
    assert by_split["TS115"].ours is None and by_split["TS115"].paper == 88.22  # reported, not tested by us
    text = benchmark.render("ankh_large", rows, Path("runs"), [])
    assert "| ss3 | CB513 | Q3 (%) | 90.00 | 88.48 | +1.52 |" in text
    (fluo,) = benchmark.rows_of(entries["fluorescence"], "ankh_base", {"test": {"spearman": 0.6}})
    assert fluo.difference == pytest.approx(-0.02)
    assert "| 0.600 | 0.620 | -0.020 |" in benchmark.render("ankh_base", [fluo], Path("runs"), [])
