"""The ``fremure`` command: frames, check-data, extract, train, eval, visualize, demo, freq, bench, info.

Training options use the published code's names (``--mode``, ``--rel-head``, ``--K``,
``--enc-layer``, ``--dec-layer``, ``--lr``, ``--nepoch``, ``--freq``, ``--rel-mem-compute``,
``--mem-fusion``, ``--mem-feat-lambda``). Flags, their help and defaults and the YAML keys of
``--config`` are all generated from :class:`fremure.train.config.TrainConfig`; flags given on the
command line override the file. Several processes (DistributedDataParallel):
``torchrun --nproc_per_node=N -m fremure train ... --videos-per-step N`` (a multiple of N).

Exit codes: 0 success; 2 usage and input errors (bad or conflicting flags, missing paths, bad
config, damaged checkpoint, missing data, optional package needed by a flag); 1 a failure during
the run; 130 interrupted. Errors are one line naming the flag or file; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from typing import Any, Sequence

logger = logging.getLogger("fremure.cli")
DEFAULT_WORK = "fremure-demo"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UsageError(Exception):
    """Bad or conflicting flags or inputs: exit code 2 with a one-line message."""


def _bool(text: str) -> bool:
    """'true'/'false' (also 1/0, yes/no): the published ``type=bool`` flags took any string as True (Q-T2)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except ImportError:
        from importlib.metadata import version
        return version("fremure")


# ------------------------------------------------------------------ options generated from TrainConfig
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "none"
    return str(value)


def _config_fields(groups: Sequence[str], exclude: Sequence[str] = ()) -> list[dataclasses.Field]:
    from .train.config import TrainConfig
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["group"] in groups and f.name not in exclude]


def _add_config_options(parser: argparse.ArgumentParser, groups: Sequence[str], shown: dict[str, Any] | None = None,
                        exclude: Sequence[str] = ()) -> None:
    """One flag per TrainConfig field of ``groups``: type, choices and help from the field; the help
    shows ``shown[name]`` (the command's real default, e.g. the demo's) or the field's default.
    argparse's own default is None, so that only flags actually given override ``--config``."""
    from .train.config import CHOICES
    shown = shown or {}
    titles = {"model": "model options", "train": "training options"}
    for group in groups:
        section = parser.add_argument_group(titles[group])
        for field in _config_fields((group,), exclude):
            kind, kwargs = type(field.default), {}
            if field.name in CHOICES:
                kwargs["choices"] = CHOICES[field.name]
            elif kind is bool:
                kwargs.update(type=_bool, metavar="true|false")
            elif kind is int:
                kwargs["type"] = _positive_int if field.metadata["positive"] else int
            elif kind is float:
                kwargs["type"] = float
            default = shown.get(field.name, field.default)
            text = f"{field.metadata['help']} (default {_shown(default)})".replace("%", "%%")
            section.add_argument(_flag(field.name), dest=field.name, default=None, help=text, **kwargs)


def _overrides(args: argparse.Namespace, groups: Sequence[str] = ("model", "train")) -> dict[str, Any]:
    """TrainConfig values given as flags (None: not given)."""
    return {f.name: getattr(args, f.name) for f in _config_fields(groups)
            if getattr(args, f.name, None) is not None}


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None):
    """TrainConfig: field defaults <- command defaults <- --config file <- flags <- ``extra``."""
    from .train.config import make_config, read_config_file
    values = dict(defaults or {})
    if getattr(args, "config", None):
        if not os.path.isfile(args.config):
            raise UsageError(f"--config {args.config}: no such file")
        values.update(read_config_file(args.config))
    flags = _overrides(args)
    flags.update(extra or {})
    return make_config(values, flags)


# ------------------------------------------------------------------ checks of paths and devices
def _need_dir(path: str | None, flag: str) -> str:
    if not path:
        raise UsageError(f"{flag} is required")
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: no such directory")
    return path


def _out_dir(path: str, flag: str) -> str:
    """An output folder: UsageError when ``path`` exists as a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a folder")
    return path


def _need_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path} does not exist")
    return path


def _device(name: str) -> str:
    """Resolved device (``auto`` -> cuda when available, else cpu), announced at the start."""
    from .train.config import describe_device, resolve_device
    device = resolve_device(name)
    logger.info("device: %s%s", describe_device(device), " (--device auto)" if name == "auto" else "")
    return device


# DetectorConfig's target_size and rpn_post_nms_top_n (tests/test_cli.py checks they agree; reading
# them here would import torchvision whenever the parser is built)
DETECTOR_DEFAULTS = {"target_size": 600, "proposals": 100}


def _detector_options(p: argparse.ArgumentParser, target_size: int | None = None, proposals: int | None = None) -> None:
    """Detector flags; None leaves DetectorConfig's value (shown), the demo passes its own."""
    p.add_argument("--detector-checkpoint", default=None,
                   help="published AG Faster R-CNN weights (faster_rcnn_ag.pth); without it a randomly initialised "
                        "detector is used and the output says so")
    shown_size = target_size or DETECTOR_DEFAULTS["target_size"]
    shown_proposals = proposals or DETECTOR_DEFAULTS["proposals"]
    p.add_argument("--target-size", type=_positive_int, default=target_size,
                   help=f"short side of the resized frames (default {shown_size})")
    p.add_argument("--proposals", type=_positive_int, default=proposals,
                   help=f"RPN proposals per frame in sgdet (default {shown_proposals})")


def _device_option(p: argparse.ArgumentParser, text: str = "") -> None:
    p.add_argument("--device", default="auto", help=f"auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...{text} "
                                                    "(default auto)")


# ------------------------------------------------------------------ frames and data checks
def cmd_frames(args: argparse.Namespace) -> int:
    """Writes <data-path>/frames/<VIDEO>.mp4/<NNNNNN>.png for every frame listed in annotations/frame_list.txt
    (else the person_bbox.pkl keys), decoding <videos>/<VIDEO>.mp4 with PyAV. NNNNNN is the 1-based decode
    position, as AG's dump_frames.py (ffmpeg %06d.png) numbers frames. Resumable: existing frames are kept,
    finished videos (done marker) are not decoded again. Exit 1 when a video fails (each is named), 2 on bad
    input; --verify only checks."""
    from .data.frames import annotated_frames, dump_frames, frame_name, missing_frames, summarize
    _need_dir(args.data_path, "--data-path")
    if args.verify:
        wanted, source = annotated_frames(args.data_path)
        if args.video:
            wanted = {v: wanted[v] for v in args.video if v in wanted}
        absent = missing_frames(os.path.join(args.data_path, "frames"), wanted)
        total = sum(len(v) for v in wanted.values())
        lost = sum(len(v) for v in absent.values())
        print(f"{total - lost} of {total} annotated frames present ({len(wanted)} videos, list from {source})")
        for video, numbers in list(absent.items())[:50]:
            shown = ", ".join(frame_name(n) for n in numbers[:5]) + (" ..." if len(numbers) > 5 else "")
            print(f"  {video}: {len(numbers)} missing ({shown})")
        if len(absent) > 50:
            print(f"  ... and {len(absent) - 50} more videos")
        return 2 if absent else 0
    _need_dir(args.videos, "--videos")
    started = time.perf_counter()
    try:
        results = dump_frames(args.videos, args.data_path, workers=args.workers, progress=args.progress,
                              only=args.video)
    except ImportError as err:
        raise UsageError(str(err)) from err
    print(summarize(results))
    print(f"frames: {time.perf_counter() - started:.1f} s, into {os.path.join(args.data_path, 'frames')}")
    return 0 if all(r.ok for r in results) else 1


def cmd_check_data(args: argparse.Namespace) -> int:
    """Lists the annotation files each task needs (the filtersmall pickle for sgcls/sgdet) and how many
    annotated frames exist under frames/; exit 2 when something the given modes need is missing."""
    from .data.check import check_data
    _need_dir(args.data_path, "--data-path")
    items = check_data(args.data_path, args.mode)
    for item in items:
        print(item)
    bad = [item for item in items if not item.ok]
    print(f"{args.data_path}: " + ("ready for " + ", ".join(args.mode) if not bad else
                                   f"{len(bad)} problem(s) for {', '.join(args.mode)}"))
    return 2 if bad else 0


# ------------------------------------------------------------------ extract, train
def cmd_extract(args: argparse.Namespace) -> int:
    from .pipeline import extract_split, make_detector
    _need_dir(args.data_path, "--data-path")
    _out_dir(args.out, "--out")
    if args.detector_checkpoint:
        _need_file(args.detector_checkpoint, "--detector-checkpoint")
    device = _device(args.device)
    detector, description = make_detector(args.detector_checkpoint, args.target_size, args.seed, device,
                                          args.proposals)
    print(f"detector: {description}")
    for split in args.split:
        out = os.path.join(args.out, f"{args.mode}_{split}")
        cache = extract_split(args.data_path, split, args.mode, detector, out, args.dtype, progress=args.progress)
        print(f"{split}: {len(cache)} videos cached in {out}")
    return 0


def _check_train_paths(config) -> None:
    _need_dir(config.data_path, "--data-path")
    for flag, path in (("--train-cache", config.train_cache), ("--test-cache", config.test_cache)):
        if path and not os.path.isdir(path):
            raise UsageError(f"{flag} {path}: no such directory (make it with fremure extract)")


def _tensorboard_check(args: argparse.Namespace, config):
    """A missing tensorboard package: an error when --tensorboard true was asked for, else a
    warning and no TensorBoard scalars."""
    if not config.tensorboard:
        return config
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        if getattr(args, "tensorboard", None):
            raise UsageError("--tensorboard true needs the tensorboard package: pip install 'fremure[tensorboard]'") \
                from None
        logger.warning("TensorBoard scalars off: tensorboard is not installed (pip install 'fremure[tensorboard]'); "
                       "history.jsonl and train.log still record every epoch")
        return dataclasses.replace(config, tensorboard=False)
    return config


def _command(argv: Sequence[str] | None) -> str:
    return "fremure " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def _write_config_yaml(config, argv: Sequence[str] | None) -> None:
    """``config.yaml`` (the resolved configuration, loadable with --config), written once the run
    is ready to train (after a resume succeeded), so that it always records what ran."""
    from .train.config import config_to_yaml
    header = [f"fremure {_version()} train, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", f"command: {_command(argv)}",
              "resolved configuration: re-run with fremure train --config config.yaml"]
    path = os.path.join(config.save_path, "config.yaml")
    with open(path + ".tmp", "w") as handle:
        handle.write(config_to_yaml(config, header))
    os.replace(path + ".tmp", path)


def _run_folder(config, argv: Sequence[str] | None) -> logging.Handler:
    """Opens ``train.log`` (appended) in the run folder; returns the log handler to close at the end."""
    os.makedirs(config.save_path, exist_ok=True)
    handler = logging.FileHandler(os.path.join(config.save_path, "train.log"))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.DEBUG)
    logging.getLogger("fremure").addHandler(handler)
    logger.info("run folder %s: %s", config.save_path, _command(argv))
    return handler


def cmd_train(args: argparse.Namespace) -> int:
    """Trains FReMuRe. Defaults follow the published recipe: AdamW lr 1e-5, 10 epochs, ReduceLROnPlateau on
    mR@20, clipping 5, one video per step. The run folder (--save-path) gets config.yaml (the resolved
    configuration), train.log, history.jsonl (one line per epoch) and checkpoints/."""
    # Under torchrun every process joins the group first and leaves it at the end.
    from .train import run_folder
    from .train.config import config_to_yaml
    config = _config(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if args.resume:
        saved = run_folder.saved_config(config.save_path)
        config = _config(args, defaults=saved)
        run_folder.check_resume(saved, config.to_dict())
    _check_train_paths(config)
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    if not args.resume:
        run_folder.prepare_new_run(config.save_path, overwrite=args.overwrite and rank_zero)
    config = _tensorboard_check(args, config)
    import torch
    from .train import distributed as dist_utils
    from .train.config import describe_device, resolve_device
    asked = config.device
    device = resolve_device(asked)
    if dist_utils.init_from_env(device) and device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    config = dataclasses.replace(config, device=device)
    rank = dist_utils.rank()
    handler = _run_folder(config, getattr(args, "argv", None)) if rank == 0 else None
    try:
        if rank == 0:
            logger.info("device: %s%s", describe_device(device), " (--device auto)" if asked == "auto" else "")
        from .train.pipeline import run_training
        argv = getattr(args, "argv", None)
        ready = (lambda trainer: _write_config_yaml(trainer.config, argv)) if rank == 0 else None
        trainer, history = run_training(config, resume=args.resume, on_ready=ready)
    finally:
        dist_utils.destroy()
        if handler is not None:
            logging.getLogger("fremure").removeHandler(handler)
            handler.close()
    if trainer.rank == 0:
        for record in history:
            print(_epoch_line(record))
        if trainer.skipped:
            print(f"{len(trainer.skipped)} steps skipped for non-finite values (see train.log)")
        print(f"run folder: {config.save_path} (config.yaml, train.log, history.jsonl, checkpoints/)")
    return 0


def _epoch_line(record: dict[str, Any]) -> str:
    loss = record.get("loss")
    loss_text = f"loss {loss:.4f}  " if isinstance(loss, (int, float)) else ""
    return (f"epoch {record['epoch']}: {loss_text}R@20 {100 * record['R@20']:.2f}  mR@20 {100 * record['mR@20']:.2f}  "
            f"lr {record['lr']:.2e}  {record['videos_per_s']:.2f} videos/s")


# ------------------------------------------------------------------ eval, visualize
def _load_model_for_eval(args, config, train_ds, test_ds):
    """(model, priors) for eval/visualize from --checkpoint (ours: the architecture and priors
    settings come from its saved config, model flags override them) or --published-checkpoint
    (architecture read off the weights; priors and memory settings from the flags)."""
    from .pipeline import build_model
    from .train import CheckpointError, load_checkpoint, load_model_tensors
    from .train.config import make_config
    from .pipeline import frequencies
    if args.published_checkpoint:
        import fremure_ext
        from .compat import load_reference_checkpoint
        freqs = frequencies(config, train_ds, test_ds)
        fremure_ext.dispatch.set_kernels(config.kernels)
        model = load_reference_checkpoint(args.published_checkpoint, mode=config.mode, freq=freqs,
                                          obj_classes=train_ds.object_classes,
                                          mem_fusion=config.mem_fusion, selection_lambda=config.mem_feat_lambda,
                                          restore_memory=args.use_memory)
        return model, freqs
    state, tensors, _ = load_checkpoint(args.checkpoint)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{args.checkpoint} has no training configuration (not written by fremure train)")
    saved = dict(saved)
    saved.update(_overrides(args, ("model",)))
    saved["mode"] = config.mode                  # the task evaluated is --mode's, as for published checkpoints
    saved["device"] = "auto"                     # where it was trained does not matter here
    model_config = make_config(saved)
    freqs = frequencies(model_config, train_ds, test_ds)
    model = build_model(model_config, train_ds.object_classes, freqs)
    differing = [f"{_flag(name)}: checkpoint {state['config'][name]!r}, asked {value!r}"
                 for name, value in _overrides(args, ("model",)).items()
                 if name in state["config"] and state["config"][name] != value]
    load_model_tensors(model, tensors, args.checkpoint, differing)
    if not args.use_memory:
        model.rel_memory = None
    return model, freqs


def _eval_inputs(args):
    """Checks the flags shared by eval and visualize; returns (config, train split, test split)."""
    from .pipeline import load_split
    if bool(args.checkpoint) == bool(args.published_checkpoint):
        raise UsageError("give exactly one of --checkpoint and --published-checkpoint")
    _need_dir(args.data_path, "--data-path")
    _out_dir(args.out, "--out")
    if args.test_cache:
        _need_dir(args.test_cache, "--test-cache")
    if args.published_checkpoint:
        _need_file(args.published_checkpoint, "--published-checkpoint")
    config = _config(args)
    return config, load_split(args.data_path, "train", config.mode), load_split(args.data_path, "test", config.mode)


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.cache import VideoEntrySource
    from .eval import format_table, plot_per_predicate, write_json
    from .pipeline import evaluate_predictions, make_detector, predict_videos
    config, train_ds, test_ds = _eval_inputs(args)
    device = _device(args.device)
    model, _ = _load_model_for_eval(args, config, train_ds, test_ds)
    detector = None
    if not args.test_cache:
        detector, description = make_detector(args.detector_checkpoint, args.target_size, 0, device, args.proposals)
        print(f"detector: {description}")
    source = VideoEntrySource(test_ds, config.mode, False, detector=detector, cache=args.test_cache or None)
    count = min(len(source), args.max_videos) if args.max_videos else len(source)
    model.to(device)
    preds = predict_videos(model, source, range(count), device, progress=args.progress)
    results = evaluate_predictions(config.mode, preds, test_ds.gt_annotations)
    os.makedirs(args.out, exist_ok=True)
    write_json(results, os.path.join(args.out, "results.json"))
    chart = plot_per_predicate(results, os.path.join(args.out, "per_predicate_R20.png"), k=20)
    table = format_table(results)
    with open(os.path.join(args.out, "results.txt"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    report = _html_report(args, config, test_ds, preds, results, chart, count)
    print(f"wrote results.json, results.txt, per_predicate_R20.png and {os.path.basename(report)} to {args.out}")
    return 0


def _html_report(args, config, test_ds, preds, results, chart, count: int) -> str:
    """report.html: the recall table, the per-predicate chart and a few frames with predictions."""
    from .eval import write_html
    from .eval.visualize import draw_video
    frames: list[str] = []
    folder = os.path.join(args.out, "report_frames")
    for video, pred in preds:
        if len(frames) >= args.report_frames:
            break
        try:
            frames += draw_video(test_ds, video, pred, folder, top_k=2,
                                 max_frames=min(2, args.report_frames - len(frames)), min_height=240)
        except (OSError, ValueError) as err:        # frames not dumped: the report says so, no pictures
            logger.warning("report: no frames drawn for test video %d: %s", video, err)
            break
    details = {"checkpoint": args.checkpoint or args.published_checkpoint, "mode": config.mode,
               "test videos evaluated": count, "data": args.data_path, "fremure": _version()}
    return str(write_html(results, os.path.join(args.out, "report.html"), chart=chart, frames=frames,
                          title=f"FReMuRe {config.mode} evaluation", details=details))


def cmd_visualize(args: argparse.Namespace) -> int:
    import torch
    from .data.cache import VideoEntrySource
    from .eval.visualize import draw_video
    config, train_ds, test_ds = _eval_inputs(args)
    device = _device(args.device)
    model, _ = _load_model_for_eval(args, config, train_ds, test_ds)
    source = VideoEntrySource(test_ds, config.mode, False, cache=args.test_cache)
    if not 0 <= args.video < len(source):
        raise UsageError(f"--video must lie in [0, {len(source)}), got {args.video}")
    model.to(device).eval()
    with torch.no_grad():
        entry = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in source[args.video].items()}
        pred = model(entry, phase="test")
    paths = draw_video(test_ds, args.video, pred, args.out, top_k=args.top_k, max_frames=args.max_frames,
                       scale=args.scale)
    print(f"wrote {len(paths)} PNG files to {args.out}")
    return 0


# ------------------------------------------------------------------ demo
# The demo fits a 12-video synthetic set in minutes, not AG in days: a linear relation head without
# memory or dropout, lr 3e-5 for 10 epochs (the published lr 1e-5 needs far more steps; at 1e-4 each
# one-video step swings the output biases and recall oscillates), 1 decoder layer.
DEMO_DEFAULTS = {"nepoch": 10, "lr": 3e-5, "dec_layer": 1, "rel_head": "linear", "rel_mem_compute": "none",
                 "dropout": 0.0, "keep_unused": False, "checkpoints": "none", "tensorboard": False, "log_iter": 1000}
DEMO_SHOWN = {**DEMO_DEFAULTS, "train_cache": "<work-dir>/cache_train", "test_cache": "<work-dir>/cache_test",
              "save_path": "<work-dir>/run"}


def _demo_caches(args, config, data_path: str, started: float) -> None:
    """Feature caches of the demo: the given --train-cache/--test-cache as they are (both needed),
    else extracted once into the work folder (a finished extraction is reused)."""
    from .data.cache import FeatureCache
    from .pipeline import extract_split, make_detector
    if args.train_cache or args.test_cache:
        if not (args.train_cache and args.test_cache):
            raise UsageError("give both --train-cache and --test-cache, or neither")
        for flag, cache in (("--train-cache", config.train_cache), ("--test-cache", config.test_cache)):
            _need_dir(cache, flag)
            missing = FeatureCache(cache).missing()
            if missing:
                raise UsageError(f"{flag} {cache} lacks {len(missing)} videos (e.g. {missing[0]})")
        print(f"features: reusing {config.train_cache} and {config.test_cache}")
        return
    detector, description = make_detector(args.detector_checkpoint, args.target_size, config.seed,
                                          config.device, args.proposals)
    print(f"detector: {description}")
    for split, cache in (("train", config.train_cache), ("test", config.test_cache)):
        extract_split(data_path, split, config.mode, detector, cache, progress=config.progress)
    print(f"features extracted once into {args.work_dir} ({time.perf_counter() - started:.0f} s so far)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Runs the whole pipeline on the bundled synthetic AG sample (12 train / 6 test videos, or --generate N):
    feature extraction with the detector (random weights unless --detector-checkpoint; skipped with
    --train-cache/--test-cache), the untrained model's recall, training, evaluation with/semi/no constraint;
    writes results.json and results_untrained.json to --work-dir. The defaults shown are the demo's own; any
    flag or --config overrides them."""
    import torch
    from .data.synthetic import generate_synthetic_ag, sample_path
    from .eval import format_table, write_json
    from .pipeline import evaluate_predictions, predict_videos
    from .train.config import config_to_yaml
    from .train.pipeline import make_trainer
    started = time.perf_counter()
    data_path = os.path.join(args.work_dir, "synthetic_ag") if args.generate else str(sample_path())
    config = _config(args, extra={"data_path": data_path,
                                  "train_cache": args.train_cache or os.path.join(args.work_dir, "cache_train"),
                                  "test_cache": args.test_cache or os.path.join(args.work_dir, "cache_test"),
                                  "save_path": args.save_path or os.path.join(args.work_dir, "run")},
                     defaults=DEMO_DEFAULTS)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if bool(args.train_cache) != bool(args.test_cache):
        raise UsageError("give both --train-cache and --test-cache, or neither")
    if args.detector_checkpoint:
        _need_file(args.detector_checkpoint, "--detector-checkpoint")
    config = dataclasses.replace(config, device=_device(config.device))
    if args.generate:
        generate_synthetic_ag(data_path, num_videos=args.generate, seed=config.seed, overwrite=True)
        print(f"data: generated synthetic AG with {args.generate} videos in {data_path}")
    else:
        print(f"data: bundled synthetic AG sample {data_path}")
    torch.manual_seed(config.seed)
    _demo_caches(args, config, data_path, started)
    trainer = make_trainer(config)
    untrained = evaluate_predictions(config.mode, predict_videos(trainer.model, trainer.test_source,
                                                                 range(trainer.num_test), config.device),
                                     trainer.test_gt)
    print(f"training: {config.nepoch} epochs over {trainer.num_train} videos, {config.rel_head} head, "
          f"lr {config.lr:g}, memory {config.rel_mem_compute}")
    history = trainer.fit()
    for record in history:
        print(_epoch_line(record))
    preds = predict_videos(trainer.model, trainer.test_source, range(trainer.num_test), config.device)
    results = evaluate_predictions(config.mode, preds, trainer.test_gt)
    os.makedirs(args.work_dir, exist_ok=True)
    write_json(results, os.path.join(args.work_dir, "results.json"))
    write_json(untrained, os.path.join(args.work_dir, "results_untrained.json"))
    print(f"\nuntrained model ({config.mode}, {trainer.num_test} test videos):")
    print(format_table(untrained))
    print(f"after {config.nepoch} epochs:")
    print(format_table(results))
    gain = 100 * (results["with"]["R"][20] - untrained["with"]["R"][20])
    print(f"R@20 with constraint: {100 * results['with']['R'][20]:.2f} trained vs "
          f"{100 * untrained['with']['R'][20]:.2f} untrained ({gain:+.2f} points)")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; results in {args.work_dir}/results.json")
    return 0


# ------------------------------------------------------------------ freq, bench, info
def cmd_freq(args: argparse.Namespace) -> int:
    import csv
    from .data.frequency import main as freq_main
    _need_dir(args.data_path, "--data-path")
    _out_dir(args.out, "--out")
    argv = [args.data_path, "--out", args.out]
    if args.train_only:
        argv.append("--train-only")
    if args.mode != "predcls":
        argv.append("--filter-small-box")
    code = freq_main(argv)
    with open(os.path.join(args.out, "predicate_frequencies.csv"), newline="") as handle:
        rows = list(csv.reader(handle))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from .train.bench import train_throughput
    if args.data_path:
        _need_dir(args.data_path, "--data-path")
    device = _device(args.device)
    rows = train_throughput(args.data_path, args.work_dir, videos=args.videos, steps=args.epochs,
                            detector_checkpoint=args.detector_checkpoint, target_size=args.target_size,
                            device=device)
    for row in rows:
        print(f"{row['source']:>9}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s for {row['videos']} videos)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Runs ``python -m fremure_ext.info`` (build and device report) in this process."""
    import importlib.util
    import runpy
    try:
        spec = importlib.util.find_spec("fremure_ext.info")
    except ImportError as err:          # fremure_ext itself does not import (extension not built)
        print(f"fremure {_version()}: fremure_ext does not import: {err}", file=sys.stderr)
        return 1
    if spec is None:
        print(f"fremure {_version()}: this installation has no fremure_ext.info module (the build report); "
              "reinstall fremure to get it", file=sys.stderr)
        return 1
    saved_argv = sys.argv
    sys.argv = ["python -m fremure_ext.info", *args.args]        # the module parses its own arguments
    try:
        runpy.run_module("fremure_ext.info", run_name="__main__", alter_sys=True)
    except SystemExit as exit_info:
        code = exit_info.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0


# ------------------------------------------------------------------ parser
def _common(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """-v/-q, accepted before and after the subcommand (the subcommands' copies default to
    SUPPRESS, so that they do not reset a flag given before the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging and tracebacks of errors")
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="warnings and errors only")
    return common


def _progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", type=_bool, default=True, metavar="true|false", help="tqdm progress bar (default true)")


def _add_command(sub, common, name: str, func, help_text: str) -> argparse.ArgumentParser:
    """Subcommand ``name`` running ``func``, described in its --help by func's docstring (none without one;
    argparse rewraps the docstring's lines)."""
    p = sub.add_parser(name, parents=[common], help=help_text, description=func.__doc__)
    p.set_defaults(func=func)
    return p


def _add_eval_commands(sub, common) -> None:
    for name, func, text in (("eval", cmd_eval, "R@K/mR@K with/semi/no constraint: JSON, table, per-predicate plot, "
                                                "HTML report"),
                             ("visualize", cmd_visualize, "draw frames with boxes and top-k relations (PNG)")):
        p = sub.add_parser(name, help=text, parents=[common], description=text)
        p.add_argument("--data-path", required=True, help="AG root")
        p.add_argument("--checkpoint", default=None, help="our checkpoint JSON (e.g. run/checkpoints/best_mrecall.json)")
        p.add_argument("--published-checkpoint", default=None, help="a published FReMuRe .tar checkpoint (fremure.compat)")
        p.add_argument("--test-cache", default=None, help="feature cache of the test split")
        p.add_argument("--config", default=None, help="YAML file of model options")
        p.add_argument("--use-memory", type=_bool, default=False, metavar="true|false",
                       help="keep the checkpoint's memory (published test.py drops it, Q-T4; default false)")
        p.add_argument("--out", required=True, help="output folder")
        _device_option(p)
        _add_config_options(p, ("model",))
        if name == "eval":
            p.add_argument("--max-videos", type=_non_negative_int, default=0,
                           help="evaluate the first N test videos (0 = all)")
            p.add_argument("--report-frames", type=_non_negative_int, default=4,
                           help="test frames drawn with predictions into report.html (default 4; 0 = none)")
            _progress_option(p)
            _detector_options(p)
        else:
            p.add_argument("--video", type=int, default=0, help="test video index (default 0)")
            p.add_argument("--top-k", type=_positive_int, default=3, help="relations drawn per frame (default 3)")
            p.add_argument("--max-frames", type=_positive_int, default=8, help="frames drawn (default 8)")
            p.add_argument("--scale", type=int, default=0,
                           help="each PNG is the frame's size times this factor (default 0: the smallest factor "
                                "giving at least 480 px of height)")
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="fremure", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[-1], parents=[_common(False)],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fremure {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add_command(sub, common, "frames", cmd_frames, "dump the annotated AG frames from the Charades videos (PyAV)")
    p.add_argument("--videos", default=None, help="folder of the Charades videos (Charades_v1_480/)")
    p.add_argument("--data-path", required=True, help="AG root holding annotations/; frames/ is written there")
    p.add_argument("--workers", type=_positive_int, default=min(8, os.cpu_count() or 1),
                   help="videos decoded in parallel (processes; default min(8, CPUs))")
    p.add_argument("--video", nargs="+", default=None, metavar="VIDEO.mp4", help="only these videos")
    p.add_argument("--verify", action="store_true",
                   help="decode nothing: list annotated frames missing on disk (exit 2 when some are)")
    _progress_option(p)

    p = _add_command(sub, common, "check-data", cmd_check_data,
                     "check an AG folder: annotation files and frame coverage")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--mode", nargs="+", choices=["predcls", "sgcls", "sgdet"], default=["predcls", "sgcls", "sgdet"],
                   help="tasks to check for (default all three)")

    p = _add_command(sub, common, "extract", cmd_extract, "run the detector once per video into a feature cache")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="cache root; writes <out>/<mode>_<split>/")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls", help="task (default predcls)")
    p.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored feature precision")
    _device_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random detector (without a checkpoint)")
    _progress_option(p)
    _detector_options(p)

    p = _add_command(sub, common, "train", cmd_train, "train on cached features (published recipe by default)")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <save-path>/checkpoints/last.json with its configuration (flags may change "
                        "only --nepoch, --lr and where data, logs and checkpoints go)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --save-path that holds one, deleting the old run's files")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    _add_config_options(p, ("model", "train"))

    _add_eval_commands(sub, common)

    p = _add_command(sub, common, "demo", cmd_demo, "synthetic AG end to end: extract, train, evaluate (CPU, minutes)")
    p.add_argument("--work-dir", default=DEFAULT_WORK, help=f"output folder (default {DEFAULT_WORK})")
    p.add_argument("--generate", type=_positive_int, default=None, metavar="N",
                   help="generate a synthetic AG with N videos instead of using the bundled sample")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    _detector_options(p, target_size=96, proposals=10)     # the sample's own frame height: no resizing
    _add_config_options(p, ("model", "train"), shown=DEMO_SHOWN, exclude=("data_path",))

    p = _add_command(sub, common, "freq", cmd_freq, "predicate frequency table, priors file and long-tail plot")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls",
                   help="sgcls/sgdet count the filtersmall annotations, as training does")
    p.add_argument("--train-only", action="store_true", help="count train labels only (non-reference)")

    p = _add_command(sub, common, "bench", cmd_bench,
                     "training throughput: cached features vs the detector every epoch")
    p.add_argument("--data-path", default=None, help="AG root (default: the bundled synthetic sample)")
    p.add_argument("--work-dir", default="fremure-bench")
    p.add_argument("--videos", type=_positive_int, default=4)
    p.add_argument("--epochs", type=_positive_int, default=1)
    _device_option(p, ": where the detector and the model run")
    _detector_options(p, target_size=96)

    # Not _add_command: cmd_info's docstring is not meant as a --help description.
    p = sub.add_parser("info", parents=[common], help="versions, build and devices (python -m fremure_ext.info)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed on to python -m fremure_ext.info")
    p.set_defaults(func=cmd_info)
    return parser


# ------------------------------------------------------------------ logging and errors
class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm bars (written through ``tqdm.write``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:                       # noqa: BLE001 (logging must never raise)
            self.handleError(record)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    """fremure's INFO lines (per-epoch loss, R@K, device) on stderr by default; -q warnings only,
    -v debug. Other libraries' records are shown from WARNING up."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_fremure_cli", False)]:
        root.removeHandler(handler)
    handler = _TqdmHandler()
    handler._fremure_cli = True                 # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    handler.addFilter(lambda r: r.name.startswith("fremure") or r.levelno >= logging.WARNING)
    root.addHandler(handler)
    logging.getLogger("fremure").setLevel(logging.DEBUG if verbose else logging.INFO)
    # the loader's per-split summary is long: shown with -v (and in train.log at debug level)
    logging.getLogger("fremure.data.ag").setLevel(logging.INFO if verbose else logging.WARNING)


def _exit_code(err: BaseException) -> int:
    """2 for input and usage errors, 1 for failures during the run."""
    import pickle
    if isinstance(err, (UsageError, ValueError, FileNotFoundError, NotADirectoryError, ImportError,
                        pickle.UnpicklingError)):
        return 2
    # damaged checkpoints and feature caches; their modules are loaded whenever such an error exists
    for module, name in (("fremure.train.checkpoint", "CheckpointError"), ("fremure.data.cache", "CacheCorruptedError")):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(err, getattr(loaded, name)):
            return 2
    return 1


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (UsageError, ValueError, FileNotFoundError)):
        return text
    return f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fremure`` console script; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "info":          # info hands its arguments to fremure_ext.info
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "info":
        args.args = list(args.args) + unknown
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    _setup_logging(args.verbose, args.quiet)
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"fremure {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:                    # noqa: BLE001 (every error becomes one line and an exit code)
        code = _exit_code(err)
        if args.verbose:
            import traceback
            traceback.print_exc()
        hint = "" if args.verbose or code == 2 else " (run with -v for the traceback)"
        print(f"fremure {args.command}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
