"""Adds what MONAI's ``MLFlowHandler`` does not log to the same MLflow run: the method, noise model and level,
parameter count and manifest as parameters, and a noisy / clean / denoised / residual figure as an artifact.

It finds the run by its (unique) run name, the one MONAI's handler was given, so it needs no change to
``--tracking mlflow``. Without tracking (no such run) it does nothing. Attach it to an evaluator: at the end of
each evaluation epoch it draws the last evaluated volume.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events

from pipeline.figures import denoising_panel
from pipeline.handlers.safe_mlflow import tracking_available, tracking_failed


class MLflowRunSummary:
    """Args:
        tracking_uri, experiment_name, run_name: the run MONAI's ``MLFlowHandler`` writes to.
        params: parameters to record once (values are converted to strings by MLflow).
        figure_name: artifact file name of the figure (under ``figures/``).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str, params: dict | None = None,
                 figure_name: str = "denoising_panel.png") -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.params = {k: str(v) for k, v in (params or {}).items()}
        self.figure_name = figure_name
        self._params_logged = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _find_run(self):
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///") and not Path(self.tracking_uri[len("sqlite:///"):]).exists():
            return None, None  # tracking is off: do not create an empty store

        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return client, None
        runs = client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{self.run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        return client, (runs[0] if runs else None)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() > 0 or not tracking_available(self.tracking_uri):  # one process writes, as MONAI's does
            return
        try:
            self._log(engine)
        except Exception as err:  # noqa: BLE001 - a tracking problem must never stop a training
            tracking_failed(self.tracking_uri, err)

    def _log(self, engine: Engine) -> None:
        client, run = self._find_run()
        if run is None:
            return
        run_id = run.info.run_id
        if not self._params_logged:
            new = {k: v for k, v in self.params.items() if k not in run.data.params}
            for key, value in new.items():
                client.log_param(run_id, key, value)
            self._params_logged = True
        item = engine.state.output[-1] if isinstance(engine.state.output, list) else None
        if not item or not all(k in item for k in ("image", "label", "pred")):
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = denoising_panel(item["image"], item["label"], item["pred"], Path(tmp) / self.figure_name,
                                   title=f"{self.params.get('method', '')} epoch {engine.state.epoch}")
            client.log_artifact(run_id, str(path), artifact_path="figures")
