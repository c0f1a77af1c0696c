"""The fremure command: help of every subcommand, config errors, freq, error messages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fremure.cli import build_parser, main
from fremure.data.synthetic import sample_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"demo": ["--detector-checkpoint", "--nepoch", "--work-dir", "--config"],
            "extract": ["--data-path", "--out", "--mode", "--detector-checkpoint", "--dtype"],
            "train": ["--mode", "--rel-head", "--K", "--enc-layer", "--dec-layer", "--lr", "--nepoch", "--freq",
                      "--rel-mem-compute", "--mem-fusion", "--resume", "--amp", "--compile", "--deterministic",
                      "--config", "--videos-per-step", "--save-every"],
            "eval": ["--checkpoint", "--published-checkpoint", "--test-cache", "--out", "--use-memory"],
            "bench": ["--videos", "--epochs", "--device"],
            "visualize": ["--video", "--top-k", "--out"],
            "freq": ["--data-path", "--out", "--train-only"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in COMMANDS[command]:
        assert option in text, (command, option)


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-m", "fremure", "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_bad_config_values_give_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: fast\n")
    assert main(["train", "--config", str(bad), "--data-path", str(sample_path())]) == 2
    assert "'lr' must be a number" in capsys.readouterr().err
    bad.write_text("nepoch: 3\nrel_head: mlp\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "'rel_head' must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--freq", "maybe"])
    assert "expected true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--nepoch", "0"])


def test_flags_override_config_file(tmp_path):
    from fremure.cli import _config
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.01\nnepoch: 7\n")
    args = build_parser().parse_args(["train", "--config", str(good), "--nepoch", "2"])
    config = _config(args)
    assert (config.lr, config.nepoch) == (0.01, 2)


def test_train_without_features_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--data-path", str(sample_path()), "--save-path", str(tmp_path), "--progress", "false",
                 "--tensorboard", "false"])
    assert code == 2
    assert "needs a detector, a cache or both" in capsys.readouterr().err


def test_freq_writes_table_and_plot(tmp_path, capsys):
    assert main(["freq", "--data-path", str(sample_path()), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "long_tail.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "looking_at" in out and "predicate_frequencies.csv" in out
