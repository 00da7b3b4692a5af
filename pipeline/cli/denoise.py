"""``python -m pipeline denoise INPUT --out OUT_DIR``: denoise every volume of a folder (or one file) with a bundle's
model, skipping bad files.

The pipeline is the bundle's own ``configs/inference.yaml`` (read with ``pipeline.bundle.read_bundle_config``, which says so): checked
loading (:class:`pipeline.data.LoadVolumed`), RAS orientation, head mask, scaling to the reference intensity,
the noise level estimated per file (or ``--noise-level``), slice-by-slice DiffNet, intensity restored, back to the
input's orientation, float32 NIfTI ``<name>_denoised.nii.gz`` with the input's affine, written under a temporary
name and renamed when complete. The file loop is :func:`pipeline.inference.denoise_volumes`, shared with the
bundle's ``inference``: a bad file is reported and skipped, the others are still denoised; one progress line per
file with its noise level; at the end a table of the failures, also written (atomically) to
``OUT_DIR/denoise_summary.csv`` with one row per input. Exit status 1 if any file failed, else 0.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "bundles" / "diffnet_mri_denoising"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "denoise", help="denoise a folder of scans (or one scan) with the bundle's model, skipping bad files",
        description="Denoise every NIfTI / MHA file and DICOM series folder of INPUT (or INPUT itself) with the "
                    "bundle's model and its inference.yaml pipeline. Bad files are reported and skipped; a summary "
                    "is written to OUT_DIR/denoise_summary.csv; the exit status is 1 if any file failed.",
    )
    p.add_argument("input", metavar="INPUT", help="a volume file, a DICOM series folder, or a folder of them")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for <name>_denoised.nii.gz outputs")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA if available)")
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="refuse volumes whose denoising would need more memory (default: the bundle's, 8)")
    p.add_argument("--noise-level", "--noise_level", type=float, default=None, metavar="LEVEL",
                   help="noise sigma as a fraction of the reference intensity (e.g. 0.05) for every input; "
                        "default: estimated per file from the scan")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.bundle import inference_datalist, inference_network, read_bundle_config
    from pipeline.inference import DenoiseFailed, denoise_volumes

    bundle, out = Path(args.bundle), Path(args.out)
    config = bundle / "configs" / "inference.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"bundle {bundle} has no configs/inference.yaml")
    items = inference_datalist(args.input, out)  # a missing INPUT, or an output that would overwrite an input
    parser = read_bundle_config(config, bundle_root=str(bundle), output_dir=str(out))
    if args.device:
        parser["device"] = f"$torch.device({args.device!r})"
    if args.max_memory_gb is not None:
        parser["max_memory_gb"] = float(args.max_memory_gb)
    if args.noise_level is not None:
        parser["noise_level"] = float(args.noise_level)
    device = parser.get_parsed_content("device")
    network = inference_network(parser.get_parsed_content("network_def"), parser.get_parsed_content("ckpt_path"),
                                parser.get_parsed_content("load_weights"), device)
    try:
        # its postprocessing's Invertd undoes this same preprocessing
        denoise_volumes(items, parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
                        network, parser.get_parsed_content("postprocessing"), out, device)
    except DenoiseFailed:
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
