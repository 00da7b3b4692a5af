"""MONAI transforms: MRI noise models, intensity normalisation to a reference intensity, head masks, the
Perona-Malik forward degradation and atomic saving. Dictionary transforms turn ``{"label": clean}`` into
``{"image": noisy, "label": clean}``."""

from pipeline.transforms.degradation import PeronaMalikDegrade, PeronaMalikDegraded
from pipeline.transforms.intensity import (
    HeadMask,
    HeadMaskd,
    RestoreIntensityd,
    ScaleToReference,
    ScaleToReferenced,
    reference_intensity,
)
from pipeline.transforms.io import AtomicSaveImage, AtomicSaveImaged
from pipeline.transforms.noise import MRINoise, MRINoised, RandMRINoised
from pipeline.transforms.noise_estimation import (
    EstimateNoiseLevel,
    EstimateNoiseLeveld,
    NoiseEstimate,
    NoiseEstimateWarning,
    RecordNoiseLeveld,
)
from pipeline.transforms.noise_map import NoiseMapd
from pipeline.transforms.slice_context import SlicesWithContextd, slices_with_context

__all__ = [
    "AtomicSaveImage",
    "AtomicSaveImaged",
    "EstimateNoiseLevel",
    "EstimateNoiseLeveld",
    "HeadMask",
    "HeadMaskd",
    "MRINoise",
    "MRINoised",
    "NoiseEstimate",
    "NoiseEstimateWarning",
    "NoiseMapd",
    "PeronaMalikDegrade",
    "PeronaMalikDegraded",
    "RandMRINoised",
    "RecordNoiseLeveld",
    "RestoreIntensityd",
    "ScaleToReference",
    "ScaleToReferenced",
    "SlicesWithContextd",
    "reference_intensity",
    "slices_with_context",
]
