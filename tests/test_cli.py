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
            "eval": ["--checkpoint", "--published-checkpoint", "--test-cache", "--out", "--use-memory",
                     "--mean-recall", "--mean-recall-predicates", "per_frame", "seen"],
            "prepare": ["AG_ROOT", "--overwrite", "filtersmall"],
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


# ------------------------------------------------------------------ options from the config dataclass
def test_help_comes_from_the_config_dataclass(capsys):
    """Every TrainConfig field is a flag of train, with the field's help and default; eval takes the
    model fields only."""
    import dataclasses
    from fremure.train.config import TrainConfig
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from fremure.model.config import ModelConfig
    fields = [("--", f) for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    fields += [("--model.", f) for f in dataclasses.fields(ModelConfig)]
    for prefix, field in fields:
        flag = prefix + field.name.replace("_", "-")
        default = field.default if not isinstance(field.default, bool) else str(field.default).lower()
        help_text = " ".join(field.metadata["help"].split())
        assert flag in text, flag
        assert f"{help_text} (default {'none' if default == '' else default})" in text, (flag, help_text)
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = capsys.readouterr().out
    assert "--rel-head" in text and "--model.window" in text and "--lr" not in text and "--nepoch" not in text


def test_demo_help_shows_the_demo_defaults(capsys):
    from fremure.cli import DEMO_DEFAULTS
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "relation head (default linear)" in text and "learning rate (default 3e-05)" in text
    assert "transformer dropout (default 0.0)" in text and "(default bayesian)" not in text
    assert "TensorBoard scalars" in text and "pip install 'fremure[tensorboard]') (default false)" in text
    assert "--data-path" not in text                       # the demo brings its own data
    assert "resized frames (default 96)" in text and "per frame in sgdet (default 10)" in text
    # and the help is what the demo really runs with
    args = build_parser().parse_args(["demo"])
    from fremure.cli import _config
    config = _config(args, defaults=DEMO_DEFAULTS)
    assert (config.model.rel_head, config.lr, config.model.dropout, config.tensorboard) == ("linear", 3e-5, 0.0, False)


def test_print_config_is_loadable_yaml(tmp_path, capsys):
    from fremure.train.config import make_config, read_config_file
    assert main(["train", "--rel-head", "gmm_plus", "--nepoch", "3", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "  rel_head: gmm_plus  # relation head" in text and "device: auto  #" in text
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    config = make_config(read_config_file(path))
    assert (config.model.rel_head, config.nepoch, config.lr) == ("gmm_plus", 3, 1e-5)
    assert main(["demo", "--print-config", "--nepoch", "2"]) == 0
    text = capsys.readouterr().out
    assert "rel_head: linear" in text and "nepoch: 2" in text and "lr: 3.0e-05" in text


def test_device_auto_resolves():
    import torch
    from fremure.train.config import resolve_device
    assert build_parser().parse_args(["extract", "--data-path", "x", "--out", "y"]).device == "auto"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


# ------------------------------------------------------------------ verbosity, version, exit codes
def test_verbosity_flags_after_the_subcommand(capsys):
    for argv in (["-v", "freq", "--help"], ["freq", "-v", "--help"], ["freq", "-q", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    args = build_parser().parse_args(["check-data", "--data-path", "x", "-v"])
    assert args.verbose and not args.quiet
    args = build_parser().parse_args(["-q", "check-data", "--data-path", "x"])
    assert args.quiet and not args.verbose
    with pytest.raises(SystemExit) as exit_info:
        main(["-q", "check-data", "--data-path", "x", "-v"])
    assert exit_info.value.code == 2
    assert "exclude each other" in capsys.readouterr().err


def test_version(capsys):
    import fremure
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fremure {fremure.__version__}"


def test_info_runs_fremure_ext_info_or_says_it_is_absent(capsys):
    import importlib.util
    code = main(["info"])
    captured = capsys.readouterr()
    if importlib.util.find_spec("fremure_ext.info") is None:
        assert code == 1 and "no fremure_ext.info module" in captured.err
    else:
        assert code == 0 and captured.out.strip()


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--data-path", "/nonexistent/ag"], 2, "--data-path /nonexistent/ag: no such directory"),
    (["train", "--config", "/nonexistent.yaml"], 2, "--config /nonexistent.yaml: no such file"),
    (["train", "--data-path", "{sample}", "--train-cache", "/nonexistent/c"], 2, "--train-cache /nonexistent/c: no such"),
    (["extract", "--data-path", "/nonexistent/ag", "--out", "x"], 2, "--data-path /nonexistent/ag: no such directory"),
    (["eval", "--data-path", "{sample}", "--out", "x"], 2, "give exactly one of --checkpoint and --published-checkpoint"),
    (["eval", "--data-path", "{sample}", "--out", "x", "--checkpoint", "a.json", "--published-checkpoint", "b.tar"], 2,
     "give exactly one of --checkpoint and --published-checkpoint"),
    (["eval", "--data-path", "{sample}", "--out", "x", "--published-checkpoint", "/nonexistent.tar"], 2,
     "--published-checkpoint /nonexistent.tar does not exist"),
    (["visualize", "--data-path", "/nonexistent/ag", "--out", "x", "--checkpoint", "a.json"], 2, "--data-path"),
    (["freq", "--data-path", "/nonexistent/ag", "--out", "x"], 2, "--data-path /nonexistent/ag: no such directory"),
    (["check-data", "--data-path", "/nonexistent/ag"], 2, "--data-path /nonexistent/ag: no such directory"),
    (["train", "--data-path", "{sample}", "--device", "tpu7"], 2, "config 'device' must be auto, cpu, cuda or cuda:N"),
    (["demo", "--train-cache", "/nonexistent/c"], 2, "give both --train-cache and --test-cache, or neither"),
])
def test_exit_codes_and_one_line_messages(argv, code, message, capsys):
    argv = [a.replace("{sample}", str(sample_path())) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fremure {argv[0]}: error: {message}"), err


def test_failures_during_a_run_exit_1_and_verbose_shows_the_traceback(monkeypatch, capsys):
    import fremure.data.check as check

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(check, "check_data", broken)
    assert main(["check-data", "--data-path", str(sample_path())]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("fremure check-data: error: RuntimeError: disk on fire "
                           "(run with -v for the traceback)")
    assert main(["check-data", "--data-path", str(sample_path()), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("disk on fire")' in err


def test_tensorboard_asked_for_but_missing(monkeypatch, tmp_path, capsys):
    """Without the tensorboard package: --tensorboard true is an input error naming the extra."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)        # import tensorboard -> ImportError
    argv = ["train", "--data-path", str(sample_path()), "--save-path", str(tmp_path), "--tensorboard", "true"]
    assert main(argv) == 2
    assert "--tensorboard true needs the tensorboard package: pip install 'fremure[tensorboard]'" in \
        capsys.readouterr().err


def test_lean_imports():
    """The CLI's parser and the frames/check-data code load neither pandas nor tensorboard nor the model."""
    code = ("import sys, fremure.cli as c, fremure.data.frames, fremure.data.check; c.build_parser();"
            "print(sorted(m for m in ('pandas', 'tensorboard', 'fremure.model.relation_model', 'fremure_ext') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_detector_defaults_shown_are_the_detector_config_ones():
    pytest.importorskip("torchvision")
    from fremure.cli import DETECTOR_DEFAULTS
    from fremure.data.detector import DetectorConfig
    assert DETECTOR_DEFAULTS == {"target_size": DetectorConfig().target_size,
                                 "proposals": DetectorConfig().rpn_post_nms_top_n}


@pytest.mark.parametrize("flags, shown", [([], {"INFO", "WARNING"}), (["-q"], {"WARNING"}),
                                          (["-v"], {"DEBUG", "INFO", "WARNING"})])
def test_console_logging_levels(flags, shown, monkeypatch, capsys):
    """INFO lines of fremure (per-epoch loss and recall, the device) show by default; -q keeps
    warnings only, -v adds debug lines; other libraries' INFO lines stay hidden."""
    import logging
    import fremure.cli as cli

    def emit(args):
        for level in ("DEBUG", "INFO", "WARNING"):
            logging.getLogger("fremure.train").log(getattr(logging, level), "line at %s", level)
        logging.getLogger("some.library").info("library chatter")
        return 0

    monkeypatch.setattr(cli, "cmd_check_data", emit)
    assert main(["check-data", "--data-path", "x", *flags]) == 0
    err = capsys.readouterr().err
    assert {level for level in ("DEBUG", "INFO", "WARNING") if f"line at {level}" in err} == shown
    assert "library chatter" not in err


def test_unknown_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check-data", "--data-path", "x", "--bogus"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
