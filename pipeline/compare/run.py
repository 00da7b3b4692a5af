"""``run_comparison(config)``: load (or train, with the bundle's training workflow) the learned methods, tune the
classical ones on validation subjects, evaluate all on the same seeded noisy whole test volumes, with the true and
with the estimated noise level, and write the report and the MLflow runs.

Everything goes to ``config.output_dir``: ``per_subject.csv``, ``summary.csv``, ``report.md``,
``metrics_vs_level.png``, ``panel.png`` (each written under a temporary name and renamed when complete) and
``models/<method>/`` (the bundle training's outputs: checkpoints, ``model.pt``, metrics CSV).
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.compare.config import CompareConfig
from pipeline.compare.evaluation import NoisyVolumes, evaluate, load_volumes
from pipeline.compare.learned import data_overrides, load_learned, train_tracked
from pipeline.compare.methods import LABELS, Method, NonLocalMeans, TunedPeronaMalik
from pipeline.atomic_write import write_text_atomic
from pipeline.compare.report import (common_subjects_table, markdown_tables, metrics_figure, quality_time_figure,
                                     summarise, visual_panel)
from pipeline.compare.tracking import ComparisonTracker, default_tracking_uri
from pipeline.data import load_manifest


def hardware() -> str:
    """``"<CPU model>, <n> cores, torch <version> (<threads> threads)"`` and the GPU, if one is used."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return text + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as ``torch.device`` reads it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def check_output_dir(path: Path) -> None:
    """Create ``path`` and make sure it is writable before any long work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output folder {path} is not writable: {err.strerror or err}") from None


def budget_text(config: CompareConfig) -> str:
    t = config.training
    loaded = ", ".join(f"{LABELS[m]} from {p}" for m, p in config.checkpoints.items() if m in config.learned)
    trained = [LABELS[m] for m in config.learned if m not in config.checkpoints]
    parts = [f"loaded: {loaded}"] if loaded else []
    if trained:
        parts.append(f"trained here by the bundle's training workflow (configs/train.yaml recipe, {t.epochs} epochs, "
                     f"{t.num_volumes or 'all'} training subjects{', ' + str(t.overrides) if t.overrides else ''}): "
                     + ", ".join(trained))
    return "; ".join(parts)


def learned_methods(config: CompareConfig, device: torch.device, tracker: ComparisonTracker, models_dir: Path) -> dict:
    """Load (``checkpoints``) or train with the bundle's workflow (each into a child run) every learned method."""
    data = data_overrides(config.manifest, config.seed, device, config.data_root)
    methods = {}
    for name in config.learned:
        checkpoint = config.checkpoints.get(name)
        if checkpoint is None:
            checkpoint, _ = train_tracked(tracker, name, name, models_dir / name, {"label": LABELS[name]},
                                          **data, **config.training.bundle_overrides())
        methods[name] = load_learned(name, checkpoint, device, **config.training.overrides)
    return methods


def classical_method(name: str, config: CompareConfig) -> Method | None:
    """The classical method ``name``, or None (with a note) when its optional package is missing."""
    tu = config.tuning
    if name == "perona_malik":
        return TunedPeronaMalik(tu.perona_malik_file)
    if name == "nl_means":
        return NonLocalMeans(tu.nl_means_h)
    from pipeline.compare import classical

    note = classical.available(name)
    if note:
        print(f"skipping {LABELS[name]}: {note}", flush=True)
        return None
    return classical.METHODS[name](tu.grids.get(name))


def run_comparison(config: CompareConfig) -> dict:
    """Run the whole comparison; returns ``{"summary": DataFrame, "files": {name: Path}, "tracking_uri": str}``."""
    started = datetime.datetime.now()
    out = Path(config.output_dir)
    check_output_dir(out)
    (out / "models").mkdir(exist_ok=True)
    device = resolve_device(config.device)
    ev, tu = config.evaluation, config.tuning
    validation = load_manifest(config.manifest, "validation", config.data_root)[:tu.num_volumes]
    first = ev.first_subject
    test = load_manifest(config.manifest, ev.split, config.data_root)[first:None if ev.num_subjects is None
                                                                      else first + ev.num_subjects]
    if not test:
        raise ValueError(f"{config.manifest} has no {ev.split} subjects from number {first + 1} on")
    tracking_uri = config.tracking_uri or default_tracking_uri()
    tracker = ComparisonTracker(tracking_uri, config.experiment, f"{config.name} {started:%Y-%m-%d %H:%M:%S}",
                                {"config": config.as_dict(), "hardware": hardware(), "budget": budget_text(config),
                                 "test_subjects": len(test)})
    with tracker.failed_on_error():
        learned = learned_methods(config, device, tracker, out / "models")
        methods: list[Method] = []
        for name in config.methods:
            method = Method("noisy") if name == "noisy" else learned.get(name) or classical_method(name, config)
            if method is not None:
                methods.append(method)
        # validation noise is seeded like the bundle's validation (seed), test noise like its evaluation (seed + 1)
        val = NoisyVolumes(load_volumes(validation, "loading validation volumes"), config.seed)
        for noise in ev.noises:
            for level in ev.levels:
                for method in methods:
                    n = tu.volumes.get(method.name)
                    method.tune(noise, level, val if n is None else lambda *condition: val(*condition)[:n])
        test_volumes = NoisyVolumes(load_volumes(test, f"loading {ev.split} volumes"), config.seed + 1)
        panel_condition = (ev.panel_noise, ev.panel_level)

        def save_rows(rows: list[dict]) -> None:  # after each condition: a crash keeps what was measured
            write_text_atomic(out / "per_subject.csv", pd.DataFrame(rows).to_csv(index=False))

        rows, shown = evaluate(methods, test_volumes, ev.noises, ev.levels, panel_condition, ev.subjects,
                               ev.oracle_subjects, save_rows)
        files = write_report(config, methods, rows, shown, out, started, len(test))
        summary = pd.read_csv(files["summary"])
        for row in summary.itertuples():
            method = next(m for m in methods if m.name == row.method)
            metrics = {k: getattr(row, k) for k in summary.columns
                       if k.endswith(("_mean", "_std")) or k == "seconds_per_volume"}
            params = {"label": LABELS[row.method], "sigma": row.sigma, "parameters": int(row.parameters),
                      "test_subjects": int(row.subjects)}
            tuned = method.settings.get((row.noise, row.level), {})  # e.g. DIPY's "method": "classic" -> tuned_method
            params.update({f"tuned_{k}" if k in (*params, "method", "noise", "level") else k: v
                           for k, v in tuned.items()})
            tracker.result_run(row.method, row.noise, row.level, params,
                               {k: v for k, v in metrics.items() if pd.notna(v)}, [])
        tracker.finish({"minutes": (datetime.datetime.now() - started).total_seconds() / 60},
                       [p for p in files.values()])
    return {"summary": summary, "files": files, "tracking_uri": tracking_uri,
            "minutes": (datetime.datetime.now() - started).total_seconds() / 60}


def subsets_text(config: CompareConfig) -> str:
    """A report line naming the methods (and the oracle runs) limited to the first evaluated subjects, or ""."""
    ev = config.evaluation
    parts = [f"{LABELS[m]} on the first {n}" for m, n in ev.subjects.items() if m in config.methods]
    if ev.oracle_subjects is not None:
        parts.append(f"oracle runs (every method) on the first {ev.oracle_subjects}")
    return f"- subsets of the {ev.split} subjects, for time: {'; '.join(parts)}\n" if parts else ""


def write_report(config: CompareConfig, methods: list[Method], rows: list[dict], shown: dict, out: Path,
                 started: datetime.datetime, num_test: int) -> dict[str, Path]:
    per_subject = pd.DataFrame(rows)
    summary = summarise(per_subject, {m.name: m.parameters for m in methods})
    files = {"per_subject": out / "per_subject.csv", "summary": out / "summary.csv", "report": out / "report.md",
             "figure": out / "metrics_vs_level.png"}
    write_text_atomic(files["per_subject"], per_subject.to_csv(index=False))
    write_text_atomic(files["summary"], summary.to_csv(index=False))
    metrics_figure(summary[summary["sigma"] == "blind"], files["figure"])  # what a user gets
    ev = config.evaluation
    if ((summary["noise"] == ev.panel_noise) & np.isclose(summary["level"], ev.panel_level)).any():
        files["quality_time"] = out / "quality_time.png"
        quality_time_figure(summary, ev.panel_noise, ev.panel_level, files["quality_time"])
    if shown:
        files["panel"] = out / "panel.png"
        visual_panel(shown, [m.name for m in methods], files["panel"],
                     f"{config.evaluation.panel_noise} noise {config.evaluation.panel_level:.0%}, "
                     f"first test subject, middle axial slice")
    tuned = "; ".join(f"{m.label}: " + ", ".join(f"{n} {lv:.0%} {s}" for (n, lv), s in m.settings.items())
                      for m in methods if m.settings)
    header = (f"# Comparison `{config.name}`\n\n"
              f"- date: {started:%Y-%m-%d %H:%M}, wall time {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min\n"
              f"- hardware: {hardware()}\n"
              f"- evaluated on: {num_test} {config.evaluation.split} subjects of `{config.manifest}`"
              f"{f' from number {config.evaluation.first_subject + 1} on' if config.evaluation.first_subject else ''}"
              f", whole volumes, noise seeded ({config.seed + 1}) "
              f"per volume; every method that takes a noise level is run with the true level (oracle) and with "
              f"the level estimated from the noisy volume (blind)\n"
              f"{subsets_text(config)}"
              f"- learned methods: {budget_text(config)}\n"
              f"- classical methods tuned per noise and level on validation subjects: {tuned}\n\n")
    write_text_atomic(files["report"], header + markdown_tables(summary) + "\n" + common_subjects_table(per_subject))
    return files
