"""The main job end to end on a few real IXI volumes: train, tune, evaluate, write results and weights."""

import pandas as pd
import torch

from conftest import IXI_MANIFEST
from pipeline.cli import main
from pipeline.networks import DiffNet


def test_demo_trains_evaluates_and_writes_results(ixi_dir, tmp_path, capsys):
    status = main(["demo", "--manifest", str(IXI_MANIFEST), "--data-root", str(ixi_dir), "--out", str(tmp_path),
                   "--steps", "3", "--train-volumes", "2", "--eval-volumes", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "DiffNet + guidance" in printed and "Perona-Malik" in printed

    table = pd.read_csv(tmp_path / "demo_results.csv", index_col="method")
    assert len(table) == 3
    assert table.notna().all().all()
    noisy = table.loc["noisy input"]
    pm = table.loc[[m for m in table.index if m.startswith("Perona-Malik")][0]]
    assert 15 < noisy["PSNR head (dB)"] < 40  # 5 % Rician noise on real slices, not a degenerate number
    assert pm["PSNR head (dB)"] > noisy["PSNR head (dB)"]  # tuned on validation, it must help on test

    net = DiffNet.paper(2, guidance=True)
    net.load_state_dict(torch.load(tmp_path / "diffnet_demo.pt", weights_only=True))
    assert not list(tmp_path.glob("*.tmp"))


def test_help_lists_the_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "data" in out
