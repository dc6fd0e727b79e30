"""The Ankh benchmark: every task of a suite, trained with the paper's recipe on one model, compared with the
paper's numbers in one markdown table.

    python benchmark.py model=ankh_large                      # the paper suite, from the Hub, on a GPU
    python benchmark.py model=ankh_tiny suite=local trainer=cpu

1. Compose each task's train.py config: `experiment=<recipe>` (conf/experiment/ankh_paper/), `model=`,
   `trainer=`, the task's own `task=` for local entries, then the user's `overrides`.
2. Check every dataset those configs read (local files exist; hub datasets load, which downloads and caches
   them): anything missing stops here with one line per dataset, before any training and any file is written.
3. Train and test each task with tasks.train.recipe.train (what train.py runs); run directories under `run_dir`.
4. Write the table to `output` atomically (all tasks or nothing).

Tasks, recipes, metrics and the paper's numbers (with their sources): tasks/accuracy/ankh_paper.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from fastankh.atomic import atomic_path
from fastankh.errors import BenchmarkError

PAPER_FILE = Path(__file__).with_name("ankh_paper.yaml")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@dataclass
class Entry:
    """One benchmark task: what it runs and what the paper reported."""

    name: str
    recipe: str
    metrics: dict[str, str]  # metric (a key of test_metrics.json) -> label in the table, the paper's unit
    scale: float = 1.0
    task: str | None = None
    paper: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # model -> split -> metric -> value


def load_paper(path: Path = PAPER_FILE) -> tuple[dict[str, list[str]], dict[str, Entry]]:
    """(suites, entries) of tasks/accuracy/ankh_paper.yaml. An entry names one `metric` + `label` (its paper values are
    numbers) or several `metrics: {metric: label}` (its paper values are {metric: number})."""
    raw = yaml.safe_load(path.read_text())
    entries = {}
    for name, spec in raw["tasks"].items():
        spec = dict(spec)
        if "metric" in spec:
            metric = spec.pop("metric")
            spec["metrics"] = {metric: spec.pop("label")}
            spec["paper"] = {
                model: {split: {metric: value} for split, value in splits.items()}
                for model, splits in (spec.get("paper") or {}).items()
            }
        entries[name] = Entry(name=name, **spec)
    return raw["suites"], entries


def select(suite: str, names: Sequence[str] | None, entries: Mapping[str, Entry], suites: Mapping) -> list[Entry]:
    if names is None:
        if suite not in suites:
            raise BenchmarkError(f"suite={suite!r}: known suites are {', '.join(suites)}")
        names = suites[suite]
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise BenchmarkError(f"tasks: unknown task(s) {', '.join(unknown)}; known: {', '.join(entries)}")
    return [entries[n] for n in names]


@contextmanager
def train_config_dir() -> Iterator[None]:
    """Compose from conf/ (train.py's configs), also inside benchmark.py's own Hydra app (conf/cli)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import tasks.task.schema  # noqa: F401  (the task schema and resolvers train.py registers)

    outer = GlobalHydra.instance()
    saved = outer.hydra if outer.is_initialized() else None
    outer.clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


def run_overrides(entry: Entry, model: str, trainer: str, extra: Sequence[str], run_dir: Path) -> list[str]:
    """train.py overrides of one benchmark task, in order: recipe, model, trainer, local task, the user's."""
    task = [f"task={entry.task}"] if entry.task else []
    return [
        f"experiment={entry.recipe}",
        f"model={model}",
        f"trainer={trainer}",
        *task,
        *extra,
        f"paths.output_dir={run_dir / entry.name}",
    ]


def compose_runs(entries: Sequence[Entry], model: str, trainer: str, extra: Sequence[str], run_dir: Path) -> dict:
    """name -> composed train.py config of every task (a bad override fails here, before anything runs)."""
    from hydra import compose

    with train_config_dir():
        return {e.name: compose("config", overrides=run_overrides(e, model, trainer, extra, run_dir)) for e in entries}


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """None when the Hub answers (or offline mode is on already), else a short reason. When it does not answer,
    this process goes offline (HF_HUB_OFFLINE): datasets then come from the local cache at once, instead of
    every request waiting for its network timeout."""
    import os

    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return None
    except Exception as err:  # DNS, refused, timeout, proxy: the Hub cannot be reached
        reason = f"the Hub ({constants.ENDPOINT}) is unreachable ({type(err).__name__}) and it is not cached"
    import datasets.config

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    return reason


def missing_data(configs: Mapping[str, DictConfig]) -> list[str]:
    """One line per dataset (hub id or local file) that a run could not read; [] when everything is there.

    Hub sources are read as training reads them (tasks.data.sources.read_source: `datasets` downloads and
    caches them, or reads the local copy under FASTANKH_DATASETS_DIR); the first unreadable source of a hub
    dataset stands for the whole dataset."""
    from tasks.data.sources import hub_location, local_path, read_source
    from tasks.task.spec import TaskSpec

    sources = []  # (task name, data spec, source) that training would read
    for name, cfg in configs.items():
        spec = TaskSpec.from_config(cfg.task).data
        sources += [(name, spec, s) for s in (spec.train, spec.val, *spec.test) if s and local_path(s) is None]
    needs_hub = any(spec.hub_id and hub_location(spec.hub_id) == spec.hub_id for _, spec, _ in sources)
    offline_reason = hub_unreachable() if needs_hub else None
    users: dict[str, list[str]] = {}  # dataset -> task names
    problems: dict[str, str] = {}  # dataset -> problem
    for name, spec, source in sources:
        dataset = spec.hub_id or source
        users.setdefault(dataset, [])
        if name not in users[dataset]:
            users[dataset].append(name)
        if dataset in problems:
            continue
        if not spec.hub_id:
            problems[dataset] = "file not found"
            continue
        try:
            read_source(source, spec)
        except Exception as err:  # offline, no such repo, no such file or split: all mean "missing"
            local = hub_location(spec.hub_id) != spec.hub_id
            problems[dataset] = f"{source}: {offline_reason if offline_reason and not local else _first_line(err)}"
    return [f"missing dataset {d} (tasks: {', '.join(users[d])}): {problem}" for d, problem in problems.items()]


@dataclass
class Row:
    task: str
    split: str
    label: str
    ours: float | None
    paper: float | None
    digits: int = 3  # decimals: 2 for percentages, 3 for correlations

    @property
    def difference(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


def rows_of(entry: Entry, model: str, results: Mapping[str, Mapping[str, float]]) -> list[Row]:
    """One row per test split of our run and metric, then any split the paper reports that we did not test."""
    paper = entry.paper.get(model, {})
    rows = []
    for split in [*results, *(s for s in paper if s not in results)]:
        for metric, label in entry.metrics.items():
            value = results.get(split, {}).get(metric)
            ours = None if value is None or math.isnan(value) else value * entry.scale
            digits = 2 if entry.scale != 1 else 3
            rows.append(Row(entry.name, split, label, ours, paper.get(split, {}).get(metric), digits))
    return rows


def _number(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int) -> str:
    return "–" if value is None else ("+" if value >= 0 else "") + _number(value, digits)


def render(model: str, rows: Sequence[Row], run_dir: Path, overrides: Sequence[str]) -> str:
    extra = f" Extra overrides: `{' '.join(overrides)}`." if overrides else ""
    lines = [
        f"# Ankh benchmark: `{model}`",
        "",
        f"Each task trained and tested with its Ankh paper recipe (conf/experiment/ankh_paper/), `model={model}`."
        f"{extra} Runs: `{run_dir}`. Paper numbers and their sources: tasks/accuracy/ankh_paper.yaml"
        " ('–': not reported for this model and test set).",
        "",
        "| task | test set | metric | ours | paper | ours − paper |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.task} | {r.split} | {r.label} | {_number(r.ours, r.digits)} | {_number(r.paper, r.digits)} "
            f"| {_signed(r.difference, r.digits)} |"
        )
    return "\n".join(lines) + "\n"


def run_benchmark(cfg: DictConfig) -> Path:
    """benchmark.py's body: the benchmark of conf/cli/benchmark.yaml's `cfg`; prints and returns the table's
    path. BenchmarkError (nothing run, nothing written) when a task name is unknown or a dataset is missing."""
    from tasks.train.recipe import train

    suites, entries = load_paper()
    chosen = select(cfg.suite, list(cfg.tasks) if cfg.tasks is not None else None, entries, suites)
    run_dir, extra = Path(cfg.run_dir), [str(o) for o in cfg.overrides]
    configs = compose_runs(chosen, cfg.model, cfg.trainer, extra, run_dir)
    missing = missing_data(configs)
    if missing:
        raise BenchmarkError("\n".join(missing))
    rows: list[Row] = []
    for entry in chosen:
        result = train(configs[entry.name])
        rows += rows_of(entry, cfg.model, result.test_results)
    output = Path(cfg.output)
    with atomic_path(output) as tmp:
        tmp.write_text(render(cfg.model, rows, run_dir, extra))
    print(f"benchmark table: {output}")
    return output
