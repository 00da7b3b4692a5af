"""One table from several ``python -m pipeline compare`` runs made with the same manifest, seed and conditions (for
example ``configs/compare_full.yaml`` and ``configs/compare_shipped.yaml``): their rows pair, because every run adds
bit-identical seeded noise to each volume. The script checks that (the noisy input's PSNR of every subject and
condition must agree across the runs) and prints Markdown tables of the mean PSNR inside the head per method,
noise model and level: on every subject each method ran on, and on the subjects all of them ran on.

    .venv/bin/python benchmarks/paired_comparisons.py outputs/compare_full outputs/compare_shipped \
        --rename compare_full:diffnet_guided=diffnet_2d [--sigma blind]

``--rename RUN:OLD=NEW`` files a method of the run in folder ``RUN`` under another name, e.g. a run made before the
shipped model changed (compare_full's ``diffnet_guided`` was the 0.2.0 2D model, ``diffnet_2d`` today).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline.compare.methods import LABELS


def load_runs(folders: list[str], sigma: str, renames: list[str] = ()) -> pd.DataFrame:
    """The ``per_subject.csv`` rows of every run at ``sigma`` ("blind" or "oracle"), methods renamed by ``renames``
    (``"RUN:OLD=NEW"``); a method found in several runs is taken from the one where it has the most subjects (the
    last of those given on a tie). Refuses runs whose noisy inputs differ."""
    names = {}
    for rename in renames:
        run, _, change = rename.partition(":")
        old, _, new = change.partition("=")
        if not (run and old and new):
            raise SystemExit(f"--rename {rename!r}: expected RUN:OLD=NEW")
        names.setdefault(run, {})[old] = new
    runs = []
    for folder in folders:
        path = Path(folder) / "per_subject.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run python -m pipeline compare first)")
        rows = pd.read_csv(path)
        rows = rows[rows["sigma"] == sigma].assign(run=len(runs))
        runs.append(rows.assign(method=rows["method"].replace(names.get(Path(folder).name, {}))))
    noisy = [r[r["method"] == "noisy"].set_index(["noise", "level", "subject"])["psnr_head"] for r in runs]
    for run, other in zip(folders[1:], noisy[1:]):
        common = noisy[0].index.intersection(other.index)
        if len(common) == 0 or (noisy[0][common] - other[common]).abs().max() > 1e-4:
            raise SystemExit(f"{run}: its noisy inputs differ from {folders[0]}'s: the runs do not pair")
    rows = pd.concat(runs)
    subjects = rows.groupby(["method", "run"])["subject"].nunique().reset_index()
    best = subjects.sort_values(["subject", "run"]).groupby("method").tail(1).set_index("method")["run"]
    return rows[rows["run"] == rows["method"].map(best)]


def table(rows: pd.DataFrame) -> str:
    means = rows.pivot_table(index="method", columns=["noise", "level"], values="psnr_head", aggfunc="mean")
    counts = rows.groupby("method")["subject"].nunique()
    order = [m for m in LABELS if m in means.index]
    noises = list(dict.fromkeys(rows["noise"]))
    means = means.loc[order, sorted(means.columns, key=lambda c: (noises.index(c[0]), c[1]))]
    header = [f"{noise[0].upper()} {level:.0%}" for noise, level in means.columns]
    lines = ["| method | subjects | " + " | ".join(header) + " |", "|:--|--:|" + "--:|" * len(header)]
    for method, values in means.iterrows():
        lines.append(f"| {LABELS[method]} | {counts[method]} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of python -m pipeline compare")
    parser.add_argument("--sigma", default="blind", choices=["blind", "oracle"])
    parser.add_argument("--rename", action="append", default=[], metavar="RUN:OLD=NEW",
                        help="file method OLD of the run in folder RUN as NEW (repeatable)")
    args = parser.parse_args()
    rows = load_runs(args.runs, args.sigma, args.rename)
    print(f"PSNR head (dB), {args.sigma}, mean over the subjects each method ran on\n\n{table(rows)}\n")
    subjects = set.intersection(*(set(g) for _, g in rows.groupby("method")["subject"]))
    common = rows[rows["subject"].isin(subjects)]
    print(f"PSNR head (dB), {args.sigma}, on the {len(subjects)} subject(s) every method ran on "
          f"({', '.join(sorted(subjects))})\n\n{table(common)}")


if __name__ == "__main__":
    main()
