"""``fremure predict``: parses the flags and calls :mod:`fremure.predict` (docs/predict.md)."""

from __future__ import annotations

import argparse
import os
import pathlib

from .cli_args import (UsageError, add_detector_options, add_device_option, add_progress_option, need_file, out_dir,
                       positive_int, resolve_device)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
BOX_TASKS = ("predcls", "sgcls")


def cmd_predict(args: argparse.Namespace) -> int:
    """Scene graphs of your videos with a trained model: per video NAME.jsonl (one frame per line),
    NAME.html (a viewer; index.html lists the videos) and with --overlay NAME.overlay.mp4. SGDet
    (detector boxes) by default, or PredCls/SGCls with --boxes. Finished videos are skipped; a video
    that fails is named and the others go on (exit 1)."""
    from .predict import PredictConfig, Predictor, predict_videos, read_boxes_file
    videos = _videos(args.videos)
    out_dir(args.out, "--out")
    try:
        config = PredictConfig(fps=args.fps, every=args.every, all_frames=args.all_frames, top_k=args.top_k,
                               min_score=args.min_score, constraint=args.constraint, overlay=args.overlay,
                               overwrite=args.overwrite, progress=args.progress)
    except ValueError as err:
        raise UsageError(f"{err} (give one of --fps, --every and --all-frames)") from None
    boxes = read_boxes_file(need_file(args.boxes, "--boxes")) if args.boxes else None
    if args.detector_checkpoint is None and not args.random_detector:
        raise UsageError("--detector-checkpoint is required (the published faster_rcnn_ag.pth); "
                         "--random-detector runs with random weights, whose scene graphs are noise")
    device = resolve_device(args.device)
    predictor = _predictor(args, device, boxes is not None)
    outcomes = predict_videos(predictor, videos, args.out, config, boxes)
    done = sum(1 for o in outcomes if not o.error and not o.skipped)
    skipped = sum(1 for o in outcomes if o.skipped)
    failed = [o for o in outcomes if o.error]
    print(f"{len(outcomes)} videos: {done} done, {skipped} skipped (outputs exist), {len(failed)} failed; "
          f"outputs in {args.out} (open index.html)")
    for outcome in failed:
        print(f"failed: {outcome.video}: {outcome.error}", file=__import__("sys").stderr)
    return 1 if failed else 0


def _videos(paths: list[str]) -> list[str]:
    """Video files, folders expanded to the videos directly inside them (sorted)."""
    videos = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(str(p) for p in pathlib.Path(path).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise UsageError(f"VIDEO {path}: a folder without videos ({', '.join(VIDEO_SUFFIXES)})")
            videos += found
        else:
            videos.append(path)
    return videos


def _predictor(args: argparse.Namespace, device: str, with_boxes: bool):
    from .predict import Predictor
    if bool(args.run) == bool(args.checkpoint):
        raise UsageError("give exactly one of --run and --checkpoint")
    detector = {"target_size": args.target_size, "proposals": args.proposals}
    common = dict(detector_checkpoint=args.detector_checkpoint, device=device, random_detector=args.random_detector,
                  detector_options={k: v for k, v in detector.items() if v is not None})
    if args.checkpoint and not args.checkpoint.endswith(".json"):
        return _published(args, with_boxes, common)
    predictor = Predictor.from_run(args.run or need_file(args.checkpoint, "--checkpoint"), mode=args.mode,
                                   data_path=args.data_path, **common)
    _check_task(predictor.mode, with_boxes, args.mode)
    return predictor


def _published(args: argparse.Namespace, with_boxes: bool, common: dict):
    from .model import ModelConfig
    from .pipeline import frequencies, load_split
    from .predict import Predictor
    need_file(args.checkpoint, "--checkpoint")
    mode = args.mode or ("sgcls" if with_boxes else "sgdet")
    _check_task(mode, with_boxes, mode)
    if not args.data_path:
        raise UsageError("--data-path is required with a published checkpoint: the AG annotations give its "
                         "frequency priors and class names, which the file does not record")
    config = ModelConfig(mode=mode)
    train, test = (load_split(args.data_path, split, mode) for split in ("train", "test"))
    return Predictor.from_published(args.checkpoint, config, frequencies(config, train, test), **common)


def _check_task(mode: str, with_boxes: bool, asked: str | None) -> None:
    if with_boxes and mode not in BOX_TASKS:
        raise UsageError(f"--boxes needs a predcls or sgcls model, this one runs {mode} (give --mode sgcls to run "
                         f"it on your boxes)")
    if not with_boxes and mode != "sgdet":
        raise UsageError(f"the checkpoint is a {mode} model; without --boxes predict runs SGDet (detector boxes): "
                         f"give --boxes FILE{'' if asked else ', or --mode sgdet to run it on detector boxes'}")


def add_predict_command(sub, common) -> None:
    """The ``predict`` subcommand and its flags."""
    text = "scene graphs of your videos (JSONL, HTML viewer, overlay mp4)"
    p = sub.add_parser("predict", parents=[common], help=text, description=cmd_predict.__doc__)
    p.set_defaults(func=cmd_predict)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, or folders of videos")
    p.add_argument("--run", default=None, help="run folder of fremure train (its best checkpoint)")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint JSON of fremure train, or a published FReMuRe .tar (needs --data-path)")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default=None,
                   help="task to run the model in (default: the checkpoint's)")
    p.add_argument("--data-path", default=None,
                   help="AG root: priors and class names of a published checkpoint or an old checkpoint")
    p.add_argument("--boxes", default=None,
                   help="JSON {video: {frame number: [{\"box\": [x1, y1, x2, y2], \"class\": NAME}]}}: your boxes "
                        "(PredCls/SGCls); its frames are the frames predicted")
    p.add_argument("--random-detector", action="store_true",
                   help="run without --detector-checkpoint, on random detector weights (for trying the command)")
    p.add_argument("--fps", type=float, default=None, help="frames per second of video taken (default 1, the AG rate)")
    p.add_argument("--every", type=positive_int, default=None, help="take every N-th frame instead")
    p.add_argument("--all-frames", action="store_true", help="take every frame")
    p.add_argument("--top-k", type=positive_int, default=100, help="relations kept per frame (default 100)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop relations scored below this (default 0)")
    p.add_argument("--constraint", choices=["no", "with"], default="no",
                   help="no: every predicate of a pair (default); with: the best of each relation type")
    p.add_argument("--overlay", action="store_true", help="also write NAME.overlay.mp4 with boxes and triplets")
    p.add_argument("--overwrite", action="store_true", help="redo videos whose outputs exist (default: skip them)")
    p.add_argument("--out", required=True, help="output folder")
    add_device_option(p)
    add_progress_option(p)
    add_detector_options(p)
