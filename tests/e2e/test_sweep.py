"""Hydra multirun sweeps through train.py: a grid over fine-tuning modes and an Optuna search."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, TINY_TRAIN


def sweep(tmp_path, *overrides: str) -> list[dict]:
    cmd = [sys.executable, "train.py", "-m", "task=ss3_local", *TINY_TRAIN, *overrides, f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    return [json.loads((run / "test_metrics.json").read_text()) | {"dir": str(run)} for run in runs]


def test_grid_over_finetune_modes(tmp_path):
    results = sweep(tmp_path, "finetune=frozen,lora")
    assert len(results) == 2
    configs = [(tmp_path / str(i) / "config.yaml").read_text() for i in range(2)]
    assert "mode: frozen" in configs[0] and "mode: lora" in configs[1]
    assert all("q3" in r["test"] for r in results)


def test_optuna_search_runs_its_trials(tmp_path):
    results = sweep(
        tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2"
    )
    assert len(results) == 2
    assert (tmp_path / "optimization_results.yaml").exists()  # the sweeper's summary of the best trial
    lrs = {
        float(line.split(":")[1])
        for i in range(2)
        for line in (tmp_path / str(i) / "config.yaml").read_text().splitlines()
        if line.strip().startswith("lr:")
    }
    assert len(lrs) == 2  # the trials drew different learning rates
