"""PSNR / SSIM as ignite metrics for MONAI engines, over the whole volume or inside the head mask.

MONAI's ``PSNRMetric`` / ``SSIMMetric`` handlers see only ``(pred, label)``; the head-mask variants also need the
mask. The bundles copy the batch's ``"mask"`` into the engine output as ``"head_mask"`` in their postprocessing
(``CopyItemsd(keys="mask", names="head_mask")``), and this metric reads ``pred``, ``label`` and ``head_mask`` from
the (decollated) engine output.
"""

from __future__ import annotations

import ignite.distributed as idist
import torch
from ignite.metrics import Metric
from monai.handlers import from_engine

from pipeline.metrics import psnr, ssim

FUNCTIONS = {"psnr": psnr, "ssim": ssim}
REGIONS = ("head", "image")


class ImageQuality(Metric):
    """Mean PSNR (dB) or SSIM over the evaluated volumes; ``region="head"`` restricts it to the head mask.

    Items are channel-first ``(1, *spatial)`` tensors with intensities normalised to the reference (peak 1.0).
    The per-volume values are kept in ``values`` (this process's share) for reports.
    """

    def __init__(self, metric: str = "psnr", region: str = "head", mask_key: str = "head_mask",
                 output_transform=None, device: str | torch.device = "cpu") -> None:
        if metric not in FUNCTIONS:
            raise ValueError(f"metric must be one of {sorted(FUNCTIONS)}, got {metric!r}")
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        self.function = FUNCTIONS[metric]
        self.region = region
        keys = ["pred", "label", mask_key] if region == "head" else ["pred", "label"]
        super().__init__(output_transform=output_transform or from_engine(keys), device=device)

    def reset(self) -> None:
        self.values: list[float] = []

    def update(self, output) -> None:
        preds, labels = output[0], output[1]
        masks = output[2] if self.region == "head" else [None] * len(preds)
        for pred, label, mask in zip(preds, labels, masks):
            pred, label = torch.as_tensor(pred)[None], torch.as_tensor(label)[None]
            mask = None if mask is None else torch.as_tensor(mask)[None].to(pred.device)
            self.values.append(float(self.function(pred, label.to(pred.device), mask)))

    def iteration_completed(self, engine) -> None:
        # ignite would split lists of tensors into (y_pred, y) pairs; the outputs here are (pred, label, mask) lists
        self.update(self._output_transform(engine.state.output))

    def all_values(self) -> torch.Tensor:
        """Per-volume values of all processes, shape ``(N,)``."""
        values = torch.tensor(self.values, dtype=torch.float64)
        return idist.all_gather(values) if idist.get_world_size() > 1 else values

    def compute(self) -> float:
        values = self.all_values()
        if values.numel() == 0:
            raise RuntimeError("ImageQuality has no volumes to average: was the evaluation data empty?")
        return float(values.mean())

    def completed(self, engine, name: str) -> None:
        """Also publish the per-volume values as ``engine.state.metric_details[name]`` (``(N, 1)``), the form
        MONAI's ``MetricsSaver`` writes one row per volume from."""
        super().completed(engine, name)
        if not hasattr(engine.state, "metric_details") or engine.state.metric_details is None:
            engine.state.metric_details = {}
        engine.state.metric_details[name] = self.all_values()[:, None]
