"""Each of the five scripts, run as a user runs it (a subprocess), ends a bad input in exactly one `error:` line on
stderr, a non-zero exit and no traceback (tasks/cli.py); a missing required key names the key and the usage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"{script}.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


BAD = {
    "train": ["model=ankh_tiny", "trainer=cpu", "model.path=/nonexistent/ckpt"],
    "embed": ["model=ankh_tiny", "input=/nonexistent/proteins.fasta", "output=out.safetensors"],
    "predict": ["model=/nonexistent/model", "input=/nonexistent/proteins.fasta", "output=out.csv"],
    "export": ["checkpoint=/nonexistent/epoch007.ckpt", "output_dir=/nonexistent/export"],
    "benchmark": ["model=ankh_tiny", "suite=local", "tasks=[no_such_task]"],
}


@pytest.mark.parametrize("script", sorted(BAD))
def test_a_bad_input_is_one_error_line_without_traceback(script, tmp_path):
    args = [a.replace("out.", f"{tmp_path}/out.") for a in BAD[script]]
    if script == "train":
        args.append(f"paths.output_dir={tmp_path / 'run'}")
    if script == "benchmark":
        args += [f"output={tmp_path / 'table.md'}", f"run_dir={tmp_path / 'runs'}"]
    done = run_script(script, *args)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert len(error_lines(done)) == 1, done.stderr


@pytest.mark.parametrize("script", ["embed", "predict", "export"])
def test_a_missing_required_key_names_it_and_shows_the_usage(script):
    done = run_script(script)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    (line,) = error_lines(done)
    assert "???" not in line
    required = {"embed": ["model", "input", "output"], "predict": ["model", "input", "output"]}.get(
        script, ["checkpoint", "output_dir"]
    )
    assert line.startswith(f"error: missing required key(s): {', '.join(required)}; usage: python {script}.py ")
