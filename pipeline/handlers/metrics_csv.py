"""A local CSV record of a training's metrics, written whatever happens to MLflow."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from pipeline.atomic_write import write_text_atomic

COLUMNS = ("epoch", "iteration", "name", "value")


class MetricsCSV:
    """Appends ``epoch,iteration,name,value`` rows to ``filename``: the loss after every iteration, the epoch's
    learning rate and the validator's metrics (numbers only) after every epoch it validated.

    Each row is flushed at once, so the file survives a killed process. When the training starts (after a resume
    restored its state) rows of later epochs than the restored one are dropped: a resumed training's file reads like
    that of a training never stopped. Only rank 0 writes.

    Args:
        filename: the CSV file (e.g. ``<output_dir>/train_metrics.csv``).
        validator: the evaluator run by ``ValidationHandler`` (attach this handler after that one).
        output_transform: the loss from the engine output.
        loss_name: the name of the loss rows.
    """

    def __init__(self, filename: str | os.PathLike, validator: Engine | None = None, output_transform=None,
                 loss_name: str = "train_loss") -> None:
        self.filename = Path(filename)
        self.validator = validator
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.loss_name = loss_name

    def attach(self, engine: Engine) -> None:
        if idist.get_rank() > 0:
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def _write(self, rows) -> None:
        new = not self.filename.is_file()
        with self.filename.open("a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(COLUMNS)
            writer.writerows(rows)

    def started(self, engine: Engine) -> None:
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.filename.is_file():
            with self.filename.open(newline="", encoding="utf-8") as f:
                kept = [row for row in csv.DictReader(f) if set(row) == set(COLUMNS)
                        and str(row["epoch"]).isdigit() and int(row["epoch"]) <= engine.state.epoch]
        text = io.StringIO()
        writer = csv.DictWriter(text, COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(self.filename, text.getvalue())

    def epoch_started(self, engine: Engine) -> None:
        optimizer = getattr(engine, "optimizer", None)
        self._lr = None if optimizer is None else optimizer.param_groups[0]["lr"]

    def iteration_completed(self, engine: Engine) -> None:
        loss = self.output_transform(engine.state.output)
        self._write([(engine.state.epoch, engine.state.iteration, self.loss_name, float(loss))])

    def epoch_completed(self, engine: Engine) -> None:
        metrics = {"lr": getattr(self, "_lr", None), **engine.state.metrics}
        if self.validator is not None and self.validator.state.epoch == engine.state.epoch:
            metrics.update(self.validator.state.metrics)
        rows = []
        for name, value in metrics.items():
            try:
                rows.append((engine.state.epoch, engine.state.iteration, name, float(value)))
            except (TypeError, ValueError):
                continue  # not a number (None, a per-class tensor, ...)
        self._write(rows)
