"""Data: manifests (Decathlon-format datalists split by subject), their validation, and MONAI dataset/loader
builders."""

from pipeline.data.checks import (
    LoadVolumed,
    MissingVolumeError,
    VolumeError,
    VolumeWarning,
    check_volume_file,
    describe_error,
    load_checked_volume,
)
from pipeline.data.loaders import (
    axial_slices,
    eval_axial_slices,
    eval_dataset,
    eval_transforms,
    make_loader,
    patch_dataset_3d,
    patch_transforms_3d,
    slice_dataset_2d,
    slice_transforms_2d,
    volume_transforms,
)
from pipeline.data.manifest import (
    DEFAULT_SUBJECT_PATTERN,
    SPLITS,
    Problem,
    build_manifest,
    find_volumes,
    load_manifest,
    manifest_problems,
    subject_id,
    write_manifest,
)
from pipeline.data.validate import ValidationReport, read_header, validate_manifest

__all__ = [
    "LoadVolumed",
    "MissingVolumeError",
    "VolumeError",
    "VolumeWarning",
    "check_volume_file",
    "describe_error",
    "load_checked_volume",
    "axial_slices",
    "DEFAULT_SUBJECT_PATTERN",
    "SPLITS",
    "Problem",
    "ValidationReport",
    "build_manifest",
    "eval_axial_slices",
    "eval_dataset",
    "eval_transforms",
    "find_volumes",
    "load_manifest",
    "make_loader",
    "manifest_problems",
    "patch_dataset_3d",
    "patch_transforms_3d",
    "read_header",
    "slice_dataset_2d",
    "slice_transforms_2d",
    "subject_id",
    "validate_manifest",
    "volume_transforms",
    "write_manifest",
]
