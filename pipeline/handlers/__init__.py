"""Ignite handlers and metrics used by the bundles."""

from pipeline.handlers.image_quality import ImageQuality
from pipeline.handlers.mlflow_summary import MLflowRunSummary
from pipeline.handlers.resume import ResumeCheckpointLoader, ResumeCheckpointSaver

__all__ = ["ImageQuality", "MLflowRunSummary", "ResumeCheckpointLoader", "ResumeCheckpointSaver"]
