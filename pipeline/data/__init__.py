"""Data: manifests (Decathlon-format datalists split by subject) and MONAI dataset/loader builders."""

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
    build_manifest,
    find_volumes,
    load_manifest,
    subject_id,
    write_manifest,
)

__all__ = [
    "axial_slices",
    "DEFAULT_SUBJECT_PATTERN",
    "SPLITS",
    "build_manifest",
    "eval_axial_slices",
    "eval_dataset",
    "eval_transforms",
    "find_volumes",
    "load_manifest",
    "make_loader",
    "patch_dataset_3d",
    "patch_transforms_3d",
    "slice_dataset_2d",
    "slice_transforms_2d",
    "subject_id",
    "volume_transforms",
    "write_manifest",
]
