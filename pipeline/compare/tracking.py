"""MLflow records of a comparison: one parent run, a child run per trained network (its loss curve) and a child run
per (method, noise, level) with the summary metrics, so the MLflow UI can compare methods side by side.

The MLflow 3 UI opens an experiment on its GenAI pages (an empty "Overview") unless the URL asks for the
``machine_learning`` workflow, and shows child runs folded under their parent with no metric column. So each
comparison also saves an MLflow *view* of its results (an experiment tag ``mlflow.sharedViewState.<key>``, listed
under "Views" in the runs table): its result runs, flat, sorted by noise level, with their method, noise, level and
metrics as columns; :func:`ui_url` gives the address that opens it and :func:`ui_hint` the command that serves it.

Tracking never costs the results: if the store cannot be reached, :class:`ComparisonTracker` warns once and the
comparison goes on (its CSV and Markdown files are the complete record).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

from mlflow.tracking import MlflowClient


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # "Machine learning", not "GenAI"
VIEW_TAG = "mlflow.sharedViewState."  # + view key: a saved view of the runs table (MLflow 3 UI)
VIEW_PREFIX = "results-"  # + parent run id: the key of a comparison's view


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store ``outputs/mlflow.db`` under the current directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


class ComparisonTracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: dict) -> None:
        self.tracking_uri, self.experiment, self.client, self.parent = tracking_uri, experiment, None, None
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
        if not (found and EXPERIMENT_KIND[0] in found.tags):  # a kind chosen in the UI stays
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        self.experiment_id, self.metric_keys = experiment_id, {}
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

    def training_run(self, name: str, params: dict) -> str | None:
        """An unfinished child run ``name`` for a bundle training: MONAI's ``MLFlowHandler``, given this run name,
        continues it (logs the loss and validation metrics and closes it). Its id, or None without tracking."""
        return self._try(self._child, name, params)

    def end_training_run(self, run_id: str | None, metrics: dict, status: str | None = None) -> None:
        """Log ``metrics`` on a training child run and, with ``status`` (e.g. "FAILED"), close it so."""
        def record():
            for key, value in metrics.items():
                self.client.log_metric(run_id, key, float(value))
            if status:
                self.client.set_terminated(run_id, status)

        if run_id is not None:
            self._try(record)  # after a tracking failure the client is gone: _try then does nothing

    def result_run(self, method: str, noise: str, level: float, params: dict, metrics: dict,
                   artifacts: list[Path] = ()) -> None:
        def record():
            given = f" {params['sigma']}" if "sigma" in params else ""  # oracle / blind noise level
            run_id = self._child(f"{method} {noise} {level:.0%}{given}", {**params, "method": method, "noise": noise,
                                                                           "level": level})
            for key, value in metrics.items():
                self.client.log_metric(run_id, key, float(value))
                self.metric_keys[key] = None
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
            if self.metric_keys:
                self._save_view()
            self.client.set_terminated(run_id, status=status)

        self._try(record)

    def _save_view(self, max_metrics: int = 8) -> None:
        """Save the MLflow UI view of this comparison's result runs (see the module's docstring)."""
        parent = self.parent.info
        metrics = [k for k in self.metric_keys if not k.endswith("_std")][:max_metrics]
        state = {"searchFilter": f"tags.mlflow.parentRunId = '{parent.run_id}' and params.noise != ''",
                 "orderByKey": "params.`level`", "orderByAsc": True, "runsHiddenMode": "SHOW_ALL",
                 "selectedColumns": [f"params.`{k}`" for k in ("method", "noise", "level")]
                 + [f"metrics.`{k}`" for k in metrics]}
        now = int(time.time() * 1000)
        view = {"name": f"{parent.run_name}: results", "createdAt": now, "updatedAt": now,
                "state": json.dumps(state)}
        self.client.set_experiment_tag(self.experiment_id, f"{VIEW_TAG}{VIEW_PREFIX}{parent.run_id}",
                                       json.dumps(view))

    @contextlib.contextmanager
    def failed_on_error(self):
        """Marks the parent run FAILED when the block raises (Ctrl-C included), then lets the error through."""
        try:
            yield
        except BaseException:
            self.finish({}, [], status="FAILED")
            raise


def ui_url(tracking_uri: str, experiment: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address (``ui``: where it is served) that opens ``experiment`` on its runs table, with the view of
    its latest comparison when there is one. Without ``workflowType`` the UI would open on its GenAI pages."""
    url = f"{ui.rstrip('/')}/#/experiments"
    local = Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None
    try:  # never create a store by looking into it
        found = None if local and not local.is_file() else MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - an address without the experiment still helps
        found = None
    if found is None:
        return f"{url}?workflowType=machine_learning"
    views = {key[len(VIEW_TAG):]: json.loads(value).get("createdAt", 0) for key, value in found.tags.items()
             if key.startswith(VIEW_TAG + VIEW_PREFIX)}
    latest = f"&viewStateShareKey={max(views, key=views.get)}" if views else ""
    return f"{url}/{found.experiment_id}/runs?workflowType=machine_learning{latest}"


def ui_hint(tracking_uri: str, experiment: str, port: int = 5000) -> str:
    """How to see ``experiment`` in the MLflow UI: the command that serves a local store (with this Python, so it works
    from any folder, in a fresh clone's ``.venv`` too) and the address to open."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: open {ui_url(tracking_uri, experiment, tracking_uri)}"
    serve = f"{shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"
    return (f"MLflow UI: {serve} --port {port}\n"
            f"           then open {ui_url(tracking_uri, experiment, f'http://127.0.0.1:{port}')}")
