"""``python -m pipeline denoise INPUT --out OUT_DIR``: denoise every volume of a folder (or one file) with a bundle's
model, skipping bad files.

The pipeline is the bundle's own ``configs/inference.yaml`` (read with ``pipeline.bundle.read_bundle_config``, which says so): checked
loading (:class:`pipeline.data.LoadVolumed`), RAS orientation, head mask, scaling to the reference intensity,
slice-by-slice DiffNet, intensity restored, back to the input's orientation, float32 NIfTI
``<name>_denoised.nii.gz`` with the input's affine, written under a temporary name and renamed when complete.
A bad file is reported and skipped; the others are still denoised. One progress line per file; at the end a table
of the failures, also written (atomically) to ``OUT_DIR/denoise_summary.csv`` with one row per input. Exit status
1 if any file failed, else 0.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from pathlib import Path

from pipeline.atomic_write import write_text_atomic

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "bundles" / "diffnet_mri_denoising"
SUMMARY = "denoise_summary.csv"


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
    p.set_defaults(func=run)


def _write_summary(rows: list[dict], path: Path) -> None:
    """The CSV, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["input", "status", "output", "seconds", "problem"])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _print_failures(rows: list[dict]) -> None:
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} volume(s) denoised, {len(failed)} failed")
    if failed:
        width = max(len(Path(r["input"]).name) for r in failed)
        print(f"{'input':<{width}}  problem")
        for r in failed:
            name = Path(r["input"]).name
            problem = r["problem"][len(r["input"]) + 2:] if r["problem"].startswith(r["input"]) else r["problem"]
            print(f"{name:<{width}}  {problem}")


def run(args) -> int:
    import torch
    from monai.data import decollate_batch, list_data_collate

    from pipeline.bundle import as_bool, inference_datalist, read_bundle_config
    from pipeline.handlers.checkpoint import load_checkpoint
    from pipeline.data.checks import VolumeWarning, describe_error
    from pipeline.data.manifest import volume_stem

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
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network_def")
    if as_bool(parser.get_parsed_content("load_weights")):
        ckpt = parser.get_parsed_content("ckpt_path")
        network.load_state_dict(load_checkpoint(ckpt, map_location="cpu"))
    network = network.to(device).eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("postprocessing")  # its Invertd undoes this same `preprocessing`
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    try:
        for i, item in enumerate(items, 1):
            path = item["image"]
            start = time.perf_counter()
            output = out / f"{volume_stem(path)}_denoised.nii.gz"
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    data = preprocessing(dict(item))
                    batch = list_data_collate([data])
                    with torch.no_grad():
                        batch["pred"] = inferer(batch["image"].to(device), network)
                    for decollated in decollate_batch(batch, detach=True):
                        postprocessing(decollated)
                notes = [str(w.message) for w in caught if issubclass(w.category, VolumeWarning)]
                row = {"status": "ok", "output": str(output), "problem": "; ".join(notes)}
                line = f"denoised -> {output}" + "".join(f"\n    warning: {n}" for n in notes)
            except Exception as err:  # noqa: BLE001 - a bad file is reported and skipped, whatever failed
                row = {"status": "failed", "output": "", "problem": describe_error(err, path)}
                line = f"FAILED: {row['problem']}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            seconds = time.perf_counter() - start
            rows.append({"input": path, **row, "seconds": f"{seconds:.1f}"})
            print(f"[{i}/{len(items)}] {path}: {line} ({seconds:.1f} s)", flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {len(rows)} of {len(items)} volume(s); no partial output was left", flush=True)
        _write_summary(rows, out / SUMMARY)
        return 130
    _write_summary(rows, out / SUMMARY)
    _print_failures(rows)
    print(f"summary written to {out / SUMMARY}")
    return 1 if any(r["status"] != "ok" for r in rows) else 0
