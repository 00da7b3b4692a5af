"""Ignite handlers and metrics used by the bundles."""

from pipeline.handlers.checkpoint import SafeCheckpointLoader, SafeCheckpointSaver, load_checkpoint
from pipeline.handlers.image_quality import ImageQuality
from pipeline.handlers.metrics_csv import MetricsCSV
from pipeline.handlers.mlflow_summary import MLflowRunSummary
from pipeline.handlers.resume import ResumeCheckpointLoader, ResumeCheckpointSaver
from pipeline.handlers.safe_mlflow import guard_tracking
from pipeline.handlers.seeding import EpochSeed

__all__ = ["EpochSeed", "ImageQuality", "MLflowRunSummary", "MetricsCSV", "ResumeCheckpointLoader",
           "ResumeCheckpointSaver", "SafeCheckpointLoader", "SafeCheckpointSaver", "guard_tracking", "load_checkpoint"]
