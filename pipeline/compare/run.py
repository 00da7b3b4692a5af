"""``run_comparison(config)``: train the learned methods on one budget, tune the classical ones on validation
subjects, evaluate all on the same seeded noisy test slices, and write the report and the MLflow runs.

Everything goes to ``config.output_dir``: ``per_subject.csv``, ``summary.csv``, ``report.md``,
``metrics_vs_level.png``, ``panel.png`` and ``models/<method>.pt`` (state dicts), each written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import pandas as pd
import torch

from pipeline.compare.config import CompareConfig
from pipeline.compare.evaluation import NoisySlices, evaluate, load_volumes
from pipeline.compare.methods import LABELS, Learned, Method, NonLocalMeans, TunedPeronaMalik, build_network
from pipeline.atomic_write import write_text_atomic
from pipeline.compare.report import markdown_tables, metrics_figure, summarise, visual_panel
from pipeline.compare.tracking import ComparisonTracker, default_tracking_uri
from pipeline.data import load_manifest
from pipeline.handlers.checkpoint import load_checkpoint
from pipeline.training import SliceBank, noise_degradation, train_network


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


def load_weights(network: torch.nn.Module, path: str) -> None:
    """Load a state dict (or a checkpoint holding one under ``"model"``) with ``weights_only=True``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = load_checkpoint(path, map_location="cpu")
    try:
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise ValueError(f"checkpoint {path} does not hold weights of this network: {err}") from None


def save_weights(network: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(network.state_dict(), tmp)
    os.replace(tmp, path)


def budget_text(config: CompareConfig) -> str:
    t = config.training
    return (f"{t.steps} Adam steps x {t.batch_size} patches of {t.patch_size}x{t.patch_size} (lr {t.lr:g}, cosine), "
            f"{'+'.join(t.noises)} noise at {t.level_range[0]:.0%}-{t.level_range[1]:.0%}, loss weighted by "
            f"1/level^2")


def learned_methods(config: CompareConfig, train: list[dict], device: torch.device, tracker: ComparisonTracker,
                    models_dir: Path) -> list[Learned]:
    """Load or train (one shared budget and data) every learned method of the config."""
    to_train = [m for m in config.learned if m not in config.checkpoints]
    bank = SliceBank.from_datalist(train) if to_train else None
    if bank is not None:
        print(f"training data: {len(bank)} axial slices of {len(train)} training volumes", flush=True)
    t = config.training
    methods = []
    for name in config.learned:
        network = build_network(name, config.unet_preset)
        if name in config.checkpoints:
            load_weights(network, config.checkpoints[name])
            network.to(device)
        else:
            log, finish = tracker.training_run(name, {"steps": t.steps, "batch_size": t.batch_size,
                                                      "patch_size": t.patch_size, "lr": t.lr})
            result = train_network(network, bank, noise_degradation(t.noises, t.level_range), t.steps,
                                   t.batch_size, t.patch_size, t.lr, config.seed, device, desc=f"training {name}",
                                   on_log=log)
            finish(result)
            print(f"trained {LABELS[name]} in {result['seconds']:.0f} s (final loss {result['final_loss']:.3g})",
                  flush=True)
            save_weights(network, models_dir / f"{name}.pt")
        methods.append(Learned(name, network, device))
    return methods


def run_comparison(config: CompareConfig) -> dict:
    """Run the whole comparison; returns ``{"summary": DataFrame, "files": {name: Path}, "tracking_uri": str}``."""
    started = datetime.datetime.now()
    out = Path(config.output_dir)
    check_output_dir(out)
    (out / "models").mkdir(exist_ok=True)
    device = resolve_device(config.device)
    ev, tu = config.evaluation, config.tuning
    train = load_manifest(config.manifest, "training", config.data_root)[:config.training.num_volumes]
    validation = load_manifest(config.manifest, "validation", config.data_root)[:tu.num_volumes]
    test = load_manifest(config.manifest, "test", config.data_root)[:ev.num_subjects]
    if not test:
        raise ValueError(f"{config.manifest} has no test subjects")
    tracking_uri = config.tracking_uri or default_tracking_uri()
    tracker = ComparisonTracker(tracking_uri, config.experiment, f"{config.name} {started:%Y-%m-%d %H:%M:%S}",
                                {"config": config.as_dict(), "hardware": hardware(), "budget": budget_text(config),
                                 "test_subjects": len(test)})
    with tracker.failed_on_error():
        methods: list[Method] = []
        learned = {m.name: m for m in learned_methods(config, train, device, tracker, out / "models")}
        for name in config.methods:
            if name == "noisy":
                methods.append(Method("noisy"))
            elif name == "perona_malik":
                methods.append(TunedPeronaMalik(tu.perona_malik_file))
            elif name == "nl_means":
                methods.append(NonLocalMeans(tu.nl_means_h))
            else:
                methods.append(learned[name])
        needs_validation = "nl_means" in config.methods or ("perona_malik" in config.methods
                                                            and not tu.perona_malik_file)
        val = NoisySlices(load_volumes(validation, "loading validation volumes") if needs_validation else [],
                          config.seed + 1, ev.slice_every, ev.min_head)
        for noise in ev.noises:
            for level in ev.levels:
                for method in methods:
                    method.tune(noise, level, val.pooled)
        test_slices = NoisySlices(load_volumes(test, "loading test volumes"), config.seed, ev.slice_every,
                                  ev.min_head)
        panel_condition = (ev.panel_noise, ev.panel_level)
        rows, shown = evaluate(methods, test_slices, ev.noises, ev.levels, panel_condition)
        files = write_report(config, methods, rows, shown, out, started, len(test))
        summary = pd.read_csv(files["summary"])
        for row in summary.itertuples():
            method = next(m for m in methods if m.name == row.method)
            metrics = {k: getattr(row, k) for k in summary.columns
                       if k.endswith(("_mean", "_std")) or k == "seconds_per_volume"}
            artifacts = [files["panel"]] if (row.noise, row.level) == panel_condition and "panel" in files else []
            tracker.result_run(row.method, row.noise, row.level,
                               {"label": LABELS[row.method], "parameters": int(row.parameters),
                                **{k: v for k, v in method.settings.get((row.noise, row.level), {}).items()}},
                               {k: v for k, v in metrics.items() if pd.notna(v)}, artifacts)
        tracker.finish({"minutes": (datetime.datetime.now() - started).total_seconds() / 60},
                       [p for p in files.values()])
    return {"summary": summary, "files": files, "tracking_uri": tracking_uri,
            "minutes": (datetime.datetime.now() - started).total_seconds() / 60}


def write_report(config: CompareConfig, methods: list[Method], rows: list[dict], shown: dict, out: Path,
                 started: datetime.datetime, num_test: int) -> dict[str, Path]:
    per_subject = pd.DataFrame(rows)
    summary = summarise(per_subject, {m.name: m.parameters for m in methods})
    files = {"per_subject": out / "per_subject.csv", "summary": out / "summary.csv", "report": out / "report.md",
             "figure": out / "metrics_vs_level.png"}
    write_text_atomic(files["per_subject"], per_subject.to_csv(index=False))
    write_text_atomic(files["summary"], summary.to_csv(index=False))
    metrics_figure(summary, files["figure"])
    if shown:
        files["panel"] = out / "panel.png"
        visual_panel(shown, [m.name for m in methods], files["panel"],
                     f"{config.evaluation.panel_noise} noise {config.evaluation.panel_level:.0%}, "
                     f"first test subject, middle evaluated axial slice")
    ev = config.evaluation
    tuned = "; ".join(f"{m.label}: " + ", ".join(f"{n} {lv:.0%} {s}" for (n, lv), s in m.settings.items())
                      for m in methods if m.settings)
    header = (f"# Comparison `{config.name}`\n\n"
              f"- date: {started:%Y-%m-%d %H:%M}, wall time {(datetime.datetime.now() - started).total_seconds() / 60:.1f} min\n"
              f"- hardware: {hardware()}\n"
              f"- test: {num_test} subjects of `{config.manifest}`, every {ev.slice_every}th axial slice with at "
              f"least {ev.min_head:.0%} head, noise seeded ({config.seed}) per volume\n"
              f"- learned methods, one budget: {budget_text(config)}\n"
              f"- classical methods tuned per noise and level on validation subjects: {tuned}\n\n")
    write_text_atomic(files["report"], header + markdown_tables(summary))
    return files
