"""MLflow records of a comparison: one parent run, a child run per trained network (its loss curve) and a child run
per (method, noise, level) with the summary metrics, so the MLflow UI can compare methods side by side.

Tracking never costs the results: if the store cannot be reached, :class:`ComparisonTracker` warns once and the
comparison goes on (its CSV and Markdown files are the complete record).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from mlflow.tracking import MlflowClient


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store ``outputs/mlflow.db`` under the current directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


class ComparisonTracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: dict) -> None:
        self.tracking_uri, self.client, self.parent = tracking_uri, None, None
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # fail fast on an unreachable server instead of MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self._try(self._start, experiment, run_name, params, starting=True)

    def _try(self, fn, *args, starting: bool = False):
        if self.client is None and not starting:
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop the comparison
            warnings.warn(f"MLflow tracking at {self.tracking_uri} failed ({type(err).__name__}: {err}); "
                          "going on without it - the CSV and Markdown results are complete", stacklevel=3)
            self.client = None
            return None

    def _start(self, experiment, run_name, params):
        client = MlflowClient(self.tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found:
            experiment_id = found.experiment_id
        else:  # a SQLite store keeps its artifacts beside it, not in the current directory
            location = (Path(self.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri() \
                if self.tracking_uri.startswith("sqlite:///") else None
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        self.experiment_id = experiment_id
        self.parent = client.create_run(experiment_id, run_name=run_name)
        self.client = client
        for key, value in params.items():
            client.log_param(self.parent.info.run_id, key, str(value)[:6000])

    def _child(self, name: str, params: dict):
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.parent.info.run_id})
        for key, value in params.items():
            self.client.log_param(run.info.run_id, key, value)
        return run.info.run_id

    def training_run(self, method: str, params: dict):
        """A child run for training ``method``; returns ``log(step, loss)`` and ``finish(result)`` functions."""
        run_id = self._try(self._child, f"train {method}", {"method": method, **params})

        def log(step: int, loss: float) -> None:
            if run_id and self.client:
                self._try(self.client.log_metric, run_id, "train_loss", loss, 0, step)

        def finish(result: dict) -> None:
            if run_id and self.client:
                for key in ("seconds", "final_loss"):
                    self._try(self.client.log_metric, run_id, f"train_{key}", result[key])
                self._try(self.client.set_terminated, run_id)

        return log, finish

    def result_run(self, method: str, noise: str, level: float, params: dict, metrics: dict,
                   artifacts: list[Path] = ()) -> None:
        def record():
            run_id = self._child(f"{method} {noise} {level:.0%}", {"method": method, "noise": noise,
                                                                    "level": level, **params})
            for key, value in metrics.items():
                self.client.log_metric(run_id, key, float(value))
            for path in artifacts:
                self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id)

        self._try(record)

    def finish(self, metrics: dict, artifacts: list[Path], status: str = "FINISHED") -> None:
        def record():
            run_id = self.parent.info.run_id
            for key, value in metrics.items():
                self.client.log_metric(run_id, key, float(value))
            for path in artifacts:
                self.client.log_artifact(run_id, str(path))
            self.client.set_terminated(run_id, status=status)

        self._try(record)

    @contextlib.contextmanager
    def failed_on_error(self):
        """Marks the parent run FAILED when the block raises (Ctrl-C included), then lets the error through."""
        try:
            yield
        except BaseException:
            self.finish({}, [], status="FAILED")
            raise
