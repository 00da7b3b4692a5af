"""``python -m pipeline data ...``: prepare datalists.

``python -m pipeline data manifest DATA_ROOT --out data_manifests/x.json [--seed 0] [--fractions 0.7 0.15 0.15]
[--pattern REGEX]`` finds the volumes under DATA_ROOT, splits them by subject and writes a Decathlon-format manifest
whose ``data_root`` is relative to the manifest's folder, so a committed manifest keeps working from any clone that
has the data at the same place relative to the repository.

``python -m pipeline data validate MANIFEST [--data-root DIR] [--allow-outside-root]`` prints every problem of a
manifest (errors, then warnings), a table of its volumes per shape and spacing, and "N errors, M warnings"; the exit
status is 1 when there are errors.

``python -m pipeline data proxies [--out outputs/proxies] [--spacing 1]`` writes scans unlike IXI for development
(:mod:`pipeline.data.proxies`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.data.manifest import DEFAULT_SUBJECT_PATTERN, SPLITS, build_manifest, write_manifest
from pipeline.data.proxies import write_mni_proxy, write_resampled_proxy
from pipeline.data.validate import validate_manifest


def add_parser(subparsers) -> None:
    """Register the ``data`` command group on an argparse ``subparsers`` object."""
    data = subparsers.add_parser("data", help="prepare data manifests (datalists split by subject)")
    data.set_defaults(func=lambda args: _print_help(data))
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    manifest = commands.add_parser(
        "manifest",
        help="split the volumes of a folder by subject into a Decathlon-format manifest",
        description="Find NIfTI, MHA/MHD files and DICOM series folders under DATA_ROOT, split them by subject "
        "into training/validation/test with a fixed seed, and write a MONAI Decathlon-format manifest.",
    )
    manifest.add_argument("data_root", metavar="DATA_ROOT", help="folder holding the clean volumes")
    manifest.add_argument("--out", required=True, help="manifest JSON to write, e.g. data_manifests/ixi_t1.json")
    manifest.add_argument("--seed", type=int, default=0, help="seed of the subject shuffle (default: 0)")
    manifest.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of subjects per split, summing to 1 (default: 0.7 0.15 0.15)",
    )
    manifest.add_argument(
        "--pattern",
        default=DEFAULT_SUBJECT_PATTERN,
        help=f"regex whose first group is the subject id in a file name (default: {DEFAULT_SUBJECT_PATTERN!r})",
    )
    manifest.set_defaults(func=run_manifest)

    validate = commands.add_parser(
        "validate",
        help="check a manifest: missing/escaping/duplicate paths, subjects in two splits, unreadable volumes",
        description="Report every problem of a manifest at once (reading volume headers only) and a table of its "
        "volumes per shape and spacing. Exit status 1 when there are errors; warnings alone give 0.",
    )
    validate.add_argument("manifest", metavar="MANIFEST", help="manifest JSON, e.g. data_manifests/ixi_t1.json")
    validate.add_argument(
        "--data-root", help="folder the manifest's paths are relative to (default: $PIPELINE_DATA_ROOT, else the "
        "manifest's data_root)"
    )
    validate.add_argument(
        "--allow-outside-root", action="store_true", help="accept paths that lead outside the data root"
    )
    validate.set_defaults(func=run_validate)

    proxies = commands.add_parser(
        "proxies",
        help="write volumes unlike IXI (MNI 1 mm template, IXI resampled to 1 mm) and their manifests",
        description="Write development proxies for scans unlike the training data: nilearn's skull-stripped 1 mm "
        "MNI template and the first validation/test volumes of MANIFEST resampled to --spacing mm, each with a "
        "manifest that python -m pipeline compare reads (configs/proxy_*.yaml).",
    )
    proxies.add_argument("--out", default="outputs/proxies", help="folder to write into (default: outputs/proxies)")
    proxies.add_argument("--manifest", default="data_manifests/ixi_t1.json", help="manifest to resample from")
    proxies.add_argument("--spacing", type=float, default=1.0, help="isotropic spacing in mm (default: 1)")
    proxies.add_argument("--validation", type=int, default=2, help="validation volumes to resample (default: 2)")
    proxies.add_argument("--test", type=int, default=2, help="test volumes to resample (default: 2)")
    proxies.set_defaults(func=run_proxies)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_manifest(args: argparse.Namespace) -> int:
    """Build, write and summarise a manifest; returns the exit status."""
    out = Path(args.out)
    manifest = build_manifest(args.data_root, fractions=args.fractions, seed=args.seed, pattern=args.pattern)
    # Relative to the manifest's folder, so load_manifest finds the data from wherever the repository is cloned.
    relative_root = os.path.relpath(os.path.abspath(args.data_root), os.path.abspath(out.parent))
    manifest["data_root"] = Path(relative_root).as_posix()
    write_manifest(manifest, out)
    for split in SPLITS:
        entries = manifest[split]
        subjects = {e["subject"] for e in entries}
        print(f"{split:<10} {len(subjects):4d} subjects {len(entries):4d} files")
    print(f"wrote {out} (data_root: {manifest['data_root']})")
    return 0


def run_proxies(args: argparse.Namespace) -> int:
    """Write the MNI and resampled proxies; returns the exit status."""
    print(f"wrote {write_mni_proxy(args.out)}")
    print(f"resampling to {args.spacing:g} mm ...", flush=True)
    print(f"wrote {write_resampled_proxy(args.manifest, args.out, args.spacing, args.validation, args.test)}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Print the validation report of a manifest; 1 when it has errors, else 0."""
    report = validate_manifest(args.manifest, data_root=args.data_root, allow_outside_root=args.allow_outside_root)
    print(report.format())
    return 1 if report.errors else 0
