"""The ``fremure`` command: frames, check-data, prepare, extract, train, eval, visualize, predict, demo, freq, bench, info.

Training options use the published code's names (``--mode``, ``--rel-head``, ``--K``,
``--enc-layer``, ``--dec-layer``, ``--lr``, ``--nepoch``, ``--freq``, ``--rel-mem-compute``,
``--mem-fusion``, ``--mem-feat-lambda``). Flags, their help and defaults and the YAML keys of
``--config`` are all generated from :class:`fremure.train.config.TrainConfig` and the
:class:`fremure.model.config.ModelConfig` it nests (``--model.NAME``; :mod:`fremure.cli_args`);
flags given on the command line override the file. The commands only parse and call the library. Several processes (DistributedDataParallel):
``torchrun --nproc_per_node=N -m fremure train ... --videos-per-step N`` (a multiple of N).

Exit codes: 0 success; 2 usage and input errors (bad or conflicting flags, missing paths, bad
config, damaged checkpoint, missing data, optional package needed by a flag); 1 a failure during
the run; 130 interrupted. Errors are one line naming the flag or file; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import time
from typing import Any, Sequence

from .cli_args import DETECTOR_DEFAULTS  # noqa: F401 (re-exported for scripts and tests)
from .cli_args import (UsageError, add_config_options, add_detector_options, add_device_option, add_mean_recall_options,
                       add_progress_option, common_options, exit_code, file_options, given_options, make_train_config,
                       mean_recall_options, need_dir, need_file, non_negative_int, one_line, out_dir, parse_bool,
                       positive_int, resolve_device, setup_logging)
from ._version import __version__
from .train.config import merge_values
from .cli_data import add_freq_command, add_prepare_command
from .cli_predict import add_predict_command
from .demo import DEMO_DEFAULTS

logger = logging.getLogger("fremure.cli")
DEFAULT_WORK = "fremure-demo"
_config = make_train_config           # the name earlier scripts and tests used


# ------------------------------------------------------------------ frames and data checks
def cmd_frames(args: argparse.Namespace) -> int:
    """Writes <data-path>/frames/<VIDEO>.mp4/<NNNNNN>.png for every frame listed in annotations/frame_list.txt
    (else the person_bbox.pkl keys), decoding <videos>/<VIDEO>.mp4 with PyAV. NNNNNN is the 1-based decode
    position, as AG's dump_frames.py (ffmpeg %06d.png) numbers frames. Resumable: existing frames are kept,
    finished videos (done marker) are not decoded again. Exit 1 when a video fails (each is named), 2 on bad
    input; --verify only checks."""
    from .data.frames import dump_frames, summarize, verify
    need_dir(args.data_path, "--data-path")
    if args.verify:
        report, complete = verify(args.data_path, args.video)
        print(report)
        return 0 if complete else 2
    need_dir(args.videos, "--videos")
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
    need_dir(args.data_path, "--data-path")
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
    need_dir(args.data_path, "--data-path")
    out_dir(args.out, "--out")
    if args.detector_checkpoint:
        need_file(args.detector_checkpoint, "--detector-checkpoint")
    device = resolve_device(args.device)
    detector, description = make_detector(args.detector_checkpoint, args.target_size, args.seed, device,
                                          args.proposals)
    print(f"detector: {description}")
    for split in args.split:
        out = os.path.join(args.out, f"{args.mode}_{split}")
        cache = extract_split(args.data_path, split, args.mode, detector, out, args.dtype, progress=args.progress)
        print(f"{split}: {len(cache)} videos cached in {out}")
    return 0


def _check_train_paths(config) -> None:
    need_dir(config.data_path, "--data-path")
    for flag, path in (("--train-cache", config.train_cache), ("--test-cache", config.test_cache)):
        if path and not os.path.isdir(path):
            raise UsageError(f"{flag} {path}: no such directory (make it with fremure extract)")


def cmd_train(args: argparse.Namespace) -> int:
    """Trains FReMuRe. Defaults follow the published recipe: AdamW lr 1e-5, 10 epochs, ReduceLROnPlateau on
    mR@20, clipping 5, one video per step. The run folder (--save-path) gets config.yaml (the resolved
    configuration), train.log, history.jsonl (one line per epoch) and checkpoints/; a folder holding a run
    is refused unless --resume or --overwrite."""
    from .train.config import config_to_yaml
    from .train.run import resumed_config, tensorboard_available, train
    config = make_train_config(args)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if args.resume:
        config = resumed_config(config, merge_values(file_options(args), given_options(args)))
    _check_train_paths(config)
    config = tensorboard_available(config, asked=bool(getattr(args, "tensorboard", None)))
    argv = getattr(args, "argv", None)
    command = "fremure " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    trainer, history = train(config, resume=args.resume, overwrite=args.overwrite, command=command)
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
def _load_for_eval(args):
    """(LoadedModel, train split, test split) for eval/visualize. --checkpoint: the model the
    checkpoint records (model flags and --config change it, e.g. --mode); --published-checkpoint:
    architecture read off the weights, task, memory settings and priors from the flags."""
    from .pipeline import frequencies, load_split
    from .runs import load_published, load_run
    if bool(args.checkpoint) == bool(args.published_checkpoint):
        raise UsageError("give exactly one of --checkpoint and --published-checkpoint")
    need_dir(args.data_path, "--data-path")
    out_dir(args.out, "--out")
    if args.test_cache:
        need_dir(args.test_cache, "--test-cache")
    if args.published_checkpoint:
        need_file(args.published_checkpoint, "--published-checkpoint")
        config = make_train_config(args).model
        train, test = (load_split(args.data_path, split, config.mode) for split in ("train", "test"))
        loaded = load_published(args.published_checkpoint, config, frequencies(config, train, test),
                                train.object_classes, use_memory=args.use_memory)
        return loaded, train, test
    changes = {**file_options(args).get("model", {}), **given_options(args).get("model", {})}
    loaded = load_run(args.checkpoint, overrides=changes, use_memory=args.use_memory, data_path=args.data_path)
    mode = loaded.config.mode
    return loaded, load_split(args.data_path, "train", mode), load_split(args.data_path, "test", mode)


def cmd_eval(args: argparse.Namespace) -> int:
    """R@K / mR@K with / semi / no constraint of a checkpoint on the AG test split: results.json,
    results.txt, per_predicate_R20.png and report.html in --out."""
    from .data.cache import VideoEntrySource
    from .eval import format_table, write_report
    from .pipeline import evaluate, make_detector
    loaded, _, test_ds = _load_for_eval(args)
    device, mode = resolve_device(args.device), loaded.config.mode
    detector = None
    if not args.test_cache:
        detector, description = make_detector(args.detector_checkpoint, args.target_size, 0, device, args.proposals)
        print(f"detector: {description}")
    source = VideoEntrySource(test_ds, mode, False, detector=detector, cache=args.test_cache or None)
    results, preds = evaluate(loaded.model, source, test_ds.gt_annotations, mode, args.max_videos, device,
                              progress=args.progress, evaluator_options=mean_recall_options(args))
    print(format_table(results))
    details = {"checkpoint": loaded.checkpoint, "mode": mode, "test videos evaluated": len(preds),
               "mR@K": f"{args.mean_recall}, over {args.mean_recall_predicates} predicates",
               "data": args.data_path, "fremure": __version__}
    paths = write_report(args.out, results, preds, test_ds, details, args.report_frames,
                         title=f"FReMuRe {mode} evaluation")
    print(f"wrote results.json, results.txt, per_predicate_R20.png and {paths['html'].name} to {args.out}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """Draws test frames of one video with boxes and the top-k relations per pair (PNG)."""
    import torch
    from .data.cache import VideoEntrySource
    from .eval.visualize import draw_video
    from .pipeline import to_device
    loaded, _, test_ds = _load_for_eval(args)
    device = resolve_device(args.device)
    source = VideoEntrySource(test_ds, loaded.config.mode, False, cache=args.test_cache)
    if not 0 <= args.video < len(source):
        raise UsageError(f"--video must lie in [0, {len(source)}), got {args.video}")
    model = loaded.model.to(device).eval()
    with torch.no_grad():
        pred = model(to_device(source[args.video], device), phase="test")
    paths = draw_video(test_ds, args.video, pred, args.out, top_k=args.top_k, max_frames=args.max_frames,
                       scale=args.scale)
    print(f"wrote {len(paths)} PNG files to {args.out}")
    return 0


# ------------------------------------------------------------------ demo
DEMO_SHOWN = {**DEMO_DEFAULTS, "train_cache": "<work-dir>/cache_train", "test_cache": "<work-dir>/cache_test",
              "save_path": "<work-dir>/run"}


def cmd_demo(args: argparse.Namespace) -> int:
    """Runs the whole pipeline on the bundled synthetic AG sample (12 train / 6 test videos, or --generate N):
    feature extraction with the detector (random weights unless --detector-checkpoint; skipped with
    --train-cache/--test-cache), the untrained model's recall, training, evaluation with/semi/no constraint.
    Writes to --work-dir: report.html, results.json, results.txt, per_predicate_R20.png, results_untrained.json,
    the feature caches and the run folder run/ (config.yaml, train.log, history.jsonl, the best-mR@20 checkpoint
    for fremure eval / predict). A finished demo there is refused unless --overwrite. The defaults shown are the
    demo's own; any flag or --config overrides them."""
    from .data.synthetic import generate_synthetic_ag, sample_path
    from .demo import run_demo
    from .eval import format_table
    from .train.config import config_to_yaml
    data_path = os.path.join(args.work_dir, "synthetic_ag") if args.generate else str(sample_path())
    config = make_train_config(args, defaults=DEMO_DEFAULTS, extra={
        "data_path": data_path, "train_cache": args.train_cache or os.path.join(args.work_dir, "cache_train"),
        "test_cache": args.test_cache or os.path.join(args.work_dir, "cache_test"),
        "save_path": args.save_path or os.path.join(args.work_dir, "run")})
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    if bool(args.train_cache) != bool(args.test_cache):
        raise UsageError("give both --train-cache and --test-cache, or neither")
    if args.detector_checkpoint:
        need_file(args.detector_checkpoint, "--detector-checkpoint")
    config = dataclasses.replace(config, device=resolve_device(config.device))
    if args.generate:
        generate_synthetic_ag(data_path, num_videos=args.generate, seed=config.seed, overwrite=True)
        print(f"data: generated synthetic AG with {args.generate} videos in {data_path}")
    else:
        print(f"data: bundled synthetic AG sample {data_path}")
    demo = run_demo(config, args.work_dir, given_caches=bool(args.train_cache),
                    detector_checkpoint=args.detector_checkpoint, target_size=args.target_size,
                    proposals=args.proposals, overwrite=args.overwrite)
    for record in demo.history:
        print(_epoch_line(record))
    print(f"\nuntrained model ({config.model.mode}, test videos):\n{format_table(demo.untrained)}")
    print(f"after {config.nepoch} epochs:\n{format_table(demo.results)}")
    trained, untrained = 100 * demo.results["with"]["R"][20], 100 * demo.untrained["with"]["R"][20]
    print(f"R@20 with constraint: {trained:.2f} trained vs {untrained:.2f} untrained ({trained - untrained:+.2f} points)")
    print(f"demo finished in {demo.seconds:.0f} s; results: {os.path.join(args.work_dir, 'report.html')} "
          f"(and results.json); the run: {config.save_path}")
    return 0


# ------------------------------------------------------------------ bench, info
def cmd_bench(args: argparse.Namespace) -> int:
    from .train.bench import train_throughput
    if args.data_path:
        need_dir(args.data_path, "--data-path")
    device = resolve_device(args.device)
    rows = train_throughput(args.data_path, args.work_dir, videos=args.videos, steps=args.epochs,
                            detector_checkpoint=args.detector_checkpoint, target_size=args.target_size,
                            device=device)
    for row in rows:
        print(f"{row['source']:>9}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s for {row['videos']} videos)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Prints ``python -m fremure_ext.info`` (build and device report)."""
    try:
        from fremure_ext.info import report
    except ImportError as err:          # fremure_ext does not import (extension not built), or has no info module
        print(f"fremure {__version__}: no fremure_ext.info module (the build report) could be loaded: {err}",
              file=sys.stderr)
        return 1
    print(report())
    return 0


# ------------------------------------------------------------------ parser
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
        p.add_argument("--use-memory", type=parse_bool, default=False, metavar="true|false",
                       help="keep the checkpoint's memory (published test.py drops it, Q-T4; default false)")
        p.add_argument("--out", required=True, help="output folder")
        add_device_option(p)
        add_config_options(p, train=False)
        if name == "eval":
            p.add_argument("--max-videos", type=non_negative_int, default=0,
                           help="evaluate the first N test videos (0 = all)")
            p.add_argument("--report-frames", type=non_negative_int, default=4,
                           help="test frames drawn with predictions into report.html (default 4; 0 = none)")
            add_progress_option(p)
            add_detector_options(p)
            add_mean_recall_options(p)
        else:
            p.add_argument("--video", type=int, default=0, help="test video index (default 0)")
            p.add_argument("--top-k", type=positive_int, default=3, help="relations drawn per frame (default 3)")
            p.add_argument("--max-frames", type=positive_int, default=8, help="frames drawn (default 8)")
            p.add_argument("--scale", type=int, default=0,
                           help="each PNG is the frame's size times this factor (default 0: the smallest factor "
                                "giving at least 480 px of height)")
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(prog="fremure", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[-1], parents=[common_options(False)],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fremure {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add_command(sub, common, "frames", cmd_frames, "dump the annotated AG frames from the Charades videos (PyAV)")
    p.add_argument("--videos", default=None, help="folder of the Charades videos (Charades_v1_480/)")
    p.add_argument("--data-path", required=True, help="AG root holding annotations/; frames/ is written there")
    p.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="videos decoded in parallel (processes; default min(8, CPUs))")
    p.add_argument("--video", nargs="+", default=None, metavar="VIDEO.mp4", help="only these videos")
    p.add_argument("--verify", action="store_true",
                   help="decode nothing: list annotated frames missing on disk (exit 2 when some are)")
    add_progress_option(p)

    p = _add_command(sub, common, "check-data", cmd_check_data,
                     "check an AG folder: annotation files and frame coverage")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--mode", nargs="+", choices=["predcls", "sgcls", "sgdet"], default=["predcls", "sgcls", "sgdet"],
                   help="tasks to check for (default all three)")
    add_prepare_command(sub, common)

    p = _add_command(sub, common, "extract", cmd_extract, "run the detector once per video into a feature cache")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="cache root; writes <out>/<mode>_<split>/")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls", help="task (default predcls)")
    p.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored feature precision")
    add_device_option(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random detector (without a checkpoint)")
    add_progress_option(p)
    add_detector_options(p)

    p = _add_command(sub, common, "train", cmd_train, "train on cached features (published recipe by default)")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <save-path>/checkpoints/last.json with its configuration (flags may change "
                        "only --nepoch, --lr and where data, logs and checkpoints go)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --save-path that holds one, deleting the old run's files")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    add_config_options(p)

    _add_eval_commands(sub, common)
    add_predict_command(sub, common)

    p = _add_command(sub, common, "demo", cmd_demo, "synthetic AG end to end: extract, train, evaluate (CPU, minutes)")
    p.add_argument("--work-dir", default=DEFAULT_WORK, help=f"output folder (default {DEFAULT_WORK})")
    p.add_argument("--generate", type=positive_int, default=None, metavar="N",
                   help="generate a synthetic AG with N videos instead of using the bundled sample")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration (YAML) and exit")
    p.add_argument("--overwrite", action="store_true", help="replace a finished demo in --work-dir (caches are reused)")
    add_detector_options(p, target_size=96, proposals=10)     # the sample's own frame height: no resizing
    add_config_options(p, shown=DEMO_SHOWN, exclude=("data_path",))

    add_freq_command(sub, common)

    p = _add_command(sub, common, "bench", cmd_bench,
                     "training throughput: cached features vs the detector every epoch")
    p.add_argument("--data-path", default=None, help="AG root (default: the bundled synthetic sample)")
    p.add_argument("--work-dir", default="fremure-bench")
    p.add_argument("--videos", type=positive_int, default=4)
    p.add_argument("--epochs", type=positive_int, default=1)
    add_device_option(p, ": where the detector and the model run")
    add_detector_options(p, target_size=96)

    _add_command(sub, common, "info", cmd_info, "versions, build and devices (python -m fremure_ext.info)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fremure`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet exclude each other")
    setup_logging(args.verbose, args.quiet)
    import torch
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"fremure {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:                    # noqa: BLE001 (every error becomes one line and an exit code)
        code = exit_code(err)
        if args.verbose:
            import traceback
            traceback.print_exc()
        hint = "" if args.verbose or code == 2 else " (run with -v for the traceback)"
        print(f"fremure {args.command}: error: {one_line(err)}{hint}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
