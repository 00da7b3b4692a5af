"""What a comparison leaves for the MLflow UI, read back from a real SQLite store: the experiment kind, a saved view
whose filter selects exactly the result runs, and the address and command printed to open it."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline.compare.tracking import EXPERIMENT_KIND, VIEW_TAG, ComparisonTracker, ui_hint, ui_url

EXPERIMENT = "ui_test"


def comparison(uri: str, name: str) -> ComparisonTracker:
    """A parent run, a training child and four result children, as ``pipeline.compare.run`` writes them."""
    tracker = ComparisonTracker(uri, EXPERIMENT, name, {"budget": "tiny"})
    run_id = tracker.training_run("train unet", {"epochs": 1})
    tracker.end_training_run(run_id, {"train_seconds": 1.0}, "FINISHED")
    for method in ("noisy", "perona_malik"):
        for level in (0.03, 0.05):
            tracker.result_run(method, "rician", level, {"label": method},
                               {"psnr_head_mean": 30.0, "psnr_head_std": 0.1, "ssim_head_mean": 0.9})
    tracker.finish({"minutes": 0.1}, [])
    return tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('ui') / 'mlflow.db'}"
    return uri, comparison(uri, "first"), comparison(uri, "second")


def test_experiment_is_marked_machine_learning(store):
    uri, first, _ = store
    experiment = MlflowClient(uri).get_experiment(first.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND[0]] == "custom_model_development"


def test_a_kind_chosen_in_the_ui_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = ComparisonTracker(uri, EXPERIMENT, "first", {})
    MlflowClient(uri).set_experiment_tag(tracker.experiment_id, EXPERIMENT_KIND[0], "genai_development")
    ComparisonTracker(uri, EXPERIMENT, "second", {})
    assert MlflowClient(uri).get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND[0]] == "genai_development"


def test_each_comparison_saves_a_view_of_exactly_its_result_runs(store):
    uri, first, second = store
    client = MlflowClient(uri)
    tags = client.get_experiment(first.experiment_id).tags
    for tracker in (first, second):
        view = json.loads(tags[f"{VIEW_TAG}results-{tracker.parent.info.run_id}"])
        assert view["name"] == f"{tracker.parent.info.run_name}: results" and view["createdAt"] > 0
        state = json.loads(view["state"])
        assert state["selectedColumns"] == ["params.`method`", "params.`noise`", "params.`level`",
                                            "metrics.`psnr_head_mean`", "metrics.`ssim_head_mean`"]
        # the UI runs the view's filter as an MLflow search: it must select this comparison's result runs only
        found = client.search_runs([tracker.experiment_id], state["searchFilter"])
        assert sorted(r.info.run_name for r in found) == sorted(
            f"{m} rician {lv}" for m in ("noisy", "perona_malik") for lv in ("3%", "5%"))
        assert {r.data.tags["mlflow.parentRunId"] for r in found} == {tracker.parent.info.run_id}


def test_url_opens_the_runs_table_on_the_latest_view(store):
    uri, first, second = store
    url = ui_url(uri, EXPERIMENT, "http://127.0.0.1:5055/")
    assert url == (f"http://127.0.0.1:5055/#/experiments/{second.experiment_id}/runs?workflowType=machine_learning"
                   f"&viewStateShareKey=results-{second.parent.info.run_id}")


def test_hint_serves_the_store_with_this_python(store):
    uri, _, second = store
    command, address = ui_hint(uri, EXPERIMENT, port=5001).splitlines()
    assert command.split()[2:] == [*shlex.split(shlex.quote(sys.executable)), "-m", "mlflow", "ui",
                                   "--backend-store-uri", uri, "--port", "5001"]
    assert address.split()[-1] == ui_url(uri, EXPERIMENT, "http://127.0.0.1:5001")


def test_hint_never_creates_a_store(tmp_path):
    missing = tmp_path / "none" / "mlflow.db"
    url = ui_url(f"sqlite:///{missing}", EXPERIMENT)
    assert url == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    assert not missing.parent.exists()
