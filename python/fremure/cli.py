"""The ``fremure`` command: demo, extract, train, eval, bench, visualize, freq.

Training options use the published code's names (``--mode``, ``--rel-head``, ``--K``,
``--enc-layer``, ``--dec-layer``, ``--lr``, ``--nepoch``, ``--freq``, ``--rel-mem-compute``,
``--mem-fusion``, ``--mem-feat-lambda``); ``--config FILE.yaml`` supplies any TrainConfig field and
flags given on the command line override it. Several processes (DistributedDataParallel):
``torchrun --nproc_per_node=N -m fremure train ... --videos-per-step N`` (a multiple of N).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

import torch

import fremure_ext

DEFAULT_WORK = "fremure-demo"


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


# ------------------------------------------------------------------ shared option groups
MODEL_OPTIONS = (
    ("--mode", dict(choices=["predcls", "sgcls", "sgdet"], help="task (default predcls)")),
    ("--rel-head", dict(choices=["linear", "bayesian", "gmm", "gmm_plus"], help="relation head (default bayesian)")),
    ("--obj-head", dict(choices=["linear", "gmm"], help="object head (default linear)")),
    ("--K", dict(type=_positive_int, help="mixture components of the GMM heads (default 6)")),
    ("--enc-layer", dict(type=_positive_int, help="encoder layers (default 1)")),
    ("--dec-layer", dict(type=_positive_int, help="temporal decoder layers (default 3)")),
    ("--freq", dict(type=_bool, metavar="true|false", help="frequency priors on (default true)")),
    ("--freq-include-test", dict(type=_bool, metavar="true|false",
                                 help="pool test labels into the priors as published (default true; Q-T1)")),
    ("--rel-mem-compute", dict(choices=["none", "joint", "seperate"], help="TEMPURA relation memory (default joint)")),
    ("--mem-fusion", dict(choices=["early", "late"], help="memory fusion (default late)")),
    ("--mem-feat-lambda", dict(type=float, help="memory mixing weight (default 0.5)")),
    ("--decouple", dict(choices=["shared", "separate"], help="one transformer or one per relation type")),
    ("--tracking", dict(type=_bool, metavar="true|false",
                        help="object tracking across frames in sgcls/sgdet, as the published -tracking (default false)")),
    ("--kernels", dict(choices=["auto", "ops", "reference"], help="torch.ops.fremure kernels or plain PyTorch")),
    ("--keep-unused", dict(type=_bool, metavar="true|false",
                           help="keep the published checkpoint's unused modules (default true)")),
    ("--dropout", dict(type=float, help="transformer dropout (default 0.1)")),
)
TRAIN_OPTIONS = (
    ("--data-path", dict(help="AG root (annotations/, frames/)")),
    ("--train-cache", dict(help="feature cache of the train split (fremure extract)")),
    ("--test-cache", dict(help="feature cache of the test split")),
    ("--save-path", dict(help="run folder: checkpoints/, tensorboard/, history.json (default runs/fremure)")),
    ("--lr", dict(type=float, help="learning rate (default 1e-5)")),
    ("--nepoch", dict(type=_positive_int, help="epochs (default 10)")),
    ("--optimizer", dict(choices=["adamw", "adam", "sgd"], help="default adamw")),
    ("--weight-decay", dict(type=float, help="default 1e-2")),
    ("--clip", dict(type=float, help="gradient-norm clipping (default 5)")),
    ("--spatial-loss", dict(choices=["bce", "mlm"], help="spatial/contacting loss: bce (default) or multi-label margin")),
    ("--mem-temperature", dict(type=float, help="softmax temperature of the memory rebuild (default 0.5)")),
    ("--videos-per-step", dict(type=_positive_int, help="videos per optimiser step over all processes, a multiple of "
                                                          "torchrun's process count (default 1)")),
    ("--max-train-videos", dict(type=int, help="use only the first N train videos (0 = all)")),
    ("--max-test-videos", dict(type=int, help="validate on the first N test videos (0 = all)")),
    ("--seed", dict(type=int, help="random seed (default 0)")),
    ("--amp", dict(choices=["none", "bf16", "fp16"], help="mixed precision (default none)")),
    ("--compile", dict(type=_bool, metavar="true|false", help="torch.compile the model")),
    ("--deterministic", dict(type=_bool, metavar="true|false", help="deterministic algorithms")),
    ("--checkpoints", dict(choices=["all", "last", "none"], help="which checkpoints to write (default all)")),
    ("--save-every", dict(type=int, help="also write 'last' every N videos (0 = once per epoch)")),
    ("--log-iter", dict(type=_positive_int, help="log the mean loss every N steps (default 100)")),
    ("--device", dict(help="cpu, cuda, cuda:1 ... (default cpu; under torchrun cuda:LOCAL_RANK)")),
    ("--progress", dict(type=_bool, metavar="true|false", help="tqdm progress bars (default true)")),
    ("--tensorboard", dict(type=_bool, metavar="true|false", help="TensorBoard scalars (default true)")),
)


def _add(parser: argparse.ArgumentParser, options) -> None:
    for flag, kwargs in options:
        parser.add_argument(flag, default=None, **kwargs)


def _overrides(args: argparse.Namespace, options) -> dict[str, Any]:
    out = {}
    for flag, _ in options:
        name = flag.lstrip("-").replace("-", "_")
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    return out


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None):
    """TrainConfig: defaults <- demo defaults <- --config file <- flags."""
    from .train.config import make_config, read_config_file
    values = dict(defaults or {})
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    flags = _overrides(args, MODEL_OPTIONS)
    if any(flag == "--lr" for flag, _ in getattr(args, "_train_options", ())):
        flags.update(_overrides(args, TRAIN_OPTIONS))
    flags.update(extra or {})
    return make_config(values, flags)


def _detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector-checkpoint", default=None,
                   help="published AG Faster R-CNN weights (faster_rcnn_ag.pth); without it a randomly initialised "
                        "detector is used and the output says so")
    p.add_argument("--target-size", type=_positive_int, default=None, help="short side of the resized frames (default 600)")
    p.add_argument("--proposals", type=_positive_int, default=None, help="RPN proposals per frame in sgdet (default 100)")


# ------------------------------------------------------------------ subcommands
def cmd_extract(args: argparse.Namespace) -> int:
    from .pipeline import extract_split, make_detector
    detector, description = make_detector(args.detector_checkpoint, args.target_size, args.seed, args.device,
                                          args.proposals)
    print(f"detector: {description}")
    for split in args.split:
        out = os.path.join(args.out, f"{args.mode}_{split}")
        cache = extract_split(args.data_path, split, args.mode, detector, out, args.dtype, progress=True)
        print(f"{split}: {len(cache)} videos cached in {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Trains; under ``torchrun`` every process joins the group first and leaves it at the end."""
    from .train import distributed as dist_utils
    from .train.pipeline import run_training
    config = _config(args)
    if dist_utils.init_from_env(config.device) and config.device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        import dataclasses
        config = dataclasses.replace(config, device=f"cuda:{local}")
        torch.cuda.set_device(local)
    try:
        trainer, history = run_training(config, resume=args.resume)
    finally:
        dist_utils.destroy()
    if trainer.rank == 0:
        os.makedirs(config.save_path, exist_ok=True)
        with open(os.path.join(config.save_path, "history.json"), "w") as handle:
            json.dump(history, handle, indent=1)
        for record in history:
            print(f"epoch {record['epoch']}: R@20 {100 * record['R@20']:.2f}  mR@20 {100 * record['mR@20']:.2f}  "
                  f"lr {record['lr']:.2e}  {record['videos_per_s']:.2f} videos/s")
        if trainer.skipped:
            print(f"{len(trainer.skipped)} steps skipped for non-finite values (see the log)")
    return 0


def _load_model_for_eval(args, config, train_ds, test_ds):
    """(model, priors) for eval/visualize from --checkpoint (ours: the architecture and priors
    settings come from its saved config, model flags override them) or --published-checkpoint
    (architecture read off the weights; priors and memory settings from the flags)."""
    from .pipeline import build_model
    from .train import CheckpointError, load_checkpoint, load_model_tensors
    from .train.config import make_config
    from .pipeline import frequencies
    if args.published_checkpoint:
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
    saved.update(_overrides(args, MODEL_OPTIONS))
    saved["mode"] = config.mode                  # the task evaluated is --mode's, as for published checkpoints
    model_config = make_config(saved)
    freqs = frequencies(model_config, train_ds, test_ds)
    model = build_model(model_config, train_ds.object_classes, freqs)
    load_model_tensors(model, tensors, args.checkpoint)
    if not args.use_memory:
        model.rel_memory = None
    return model, freqs


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.cache import VideoEntrySource
    from .eval import format_table, plot_per_predicate, write_json
    from .pipeline import evaluate_predictions, load_split, make_detector, predict_videos
    if bool(args.checkpoint) == bool(args.published_checkpoint):
        raise SystemExit("fremure eval: give exactly one of --checkpoint and --published-checkpoint")
    config = _config(args)
    train_ds = load_split(args.data_path, "train", config.mode)
    test_ds = load_split(args.data_path, "test", config.mode)
    model, _ = _load_model_for_eval(args, config, train_ds, test_ds)
    detector = None
    if not args.test_cache:
        detector, description = make_detector(args.detector_checkpoint, args.target_size, 0, args.device, args.proposals)
        print(f"detector: {description}")
    source = VideoEntrySource(test_ds, config.mode, False, detector=detector, cache=args.test_cache or None)
    count = min(len(source), args.max_videos) if args.max_videos else len(source)
    model.to(args.device)
    preds = predict_videos(model, source, range(count), args.device, progress=True)
    results = evaluate_predictions(config.mode, preds, test_ds.gt_annotations)
    os.makedirs(args.out, exist_ok=True)
    write_json(results, os.path.join(args.out, "results.json"))
    plot_per_predicate(results, os.path.join(args.out, "per_predicate_R20.png"), k=20)
    table = format_table(results)
    with open(os.path.join(args.out, "results.txt"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    print(f"wrote results.json, results.txt and per_predicate_R20.png to {args.out}")
    return 0


# The demo fits a 12-video synthetic set in minutes, not AG in days: a linear relation head without
# memory or dropout, lr 3e-5 for 10 epochs (the published lr 1e-5 needs far more steps; at 1e-4 each
# one-video step swings the output biases and recall oscillates), 1 decoder layer.
DEMO_DEFAULTS = {"nepoch": 10, "lr": 3e-5, "dec_layer": 1, "rel_head": "linear", "rel_mem_compute": "none",
                 "dropout": 0.0, "keep_unused": False, "checkpoints": "none", "tensorboard": False, "log_iter": 1000}


def _demo_caches(args, config, data_path: str, started: float) -> None:
    """Feature caches of the demo: the given --train-cache/--test-cache as they are (both needed),
    else extracted once into the work folder (a finished extraction is reused)."""
    from .data.cache import FeatureCache
    from .pipeline import extract_split, make_detector
    if args.train_cache or args.test_cache:
        if not (args.train_cache and args.test_cache):
            raise ValueError("demo: give both --train-cache and --test-cache, or neither")
        for cache in (config.train_cache, config.test_cache):
            missing = FeatureCache(cache).missing()
            if missing:
                raise ValueError(f"demo: feature cache {cache} lacks {len(missing)} videos (e.g. {missing[0]})")
        print(f"features: reusing {config.train_cache} and {config.test_cache}")
        return
    detector, description = make_detector(args.detector_checkpoint, args.target_size or 96, config.seed,
                                          config.device, args.proposals or 10)
    print(f"detector: {description}")
    for split, cache in (("train", config.train_cache), ("test", config.test_cache)):
        extract_split(data_path, split, config.mode, detector, cache, progress=config.progress)
    print(f"features extracted once into {args.work_dir} ({time.perf_counter() - started:.0f} s so far)")


def cmd_demo(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_synthetic_ag, sample_path
    from .eval import format_table, write_json
    from .pipeline import evaluate_predictions, predict_videos
    from .train.pipeline import make_trainer
    started = time.perf_counter()
    seed = args.seed or 0
    if args.generate:
        data_path = os.path.join(args.work_dir, "synthetic_ag")
        generate_synthetic_ag(data_path, num_videos=args.generate, seed=seed, overwrite=True)
        print(f"data: generated synthetic AG with {args.generate} videos in {data_path}")
    else:
        data_path = str(sample_path())
        print(f"data: bundled synthetic AG sample {data_path}")
    config = _config(args, extra={"data_path": data_path,
                                  "train_cache": args.train_cache or os.path.join(args.work_dir, "cache_train"),
                                  "test_cache": args.test_cache or os.path.join(args.work_dir, "cache_test"),
                                  "save_path": args.save_path or os.path.join(args.work_dir, "run")},
                     defaults=DEMO_DEFAULTS)
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
        print(f"epoch {record['epoch']}: R@20 {100 * record['R@20']:.2f}  mR@20 {100 * record['mR@20']:.2f}  "
              f"({record['videos_per_s']:.2f} videos/s)")
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


def cmd_freq(args: argparse.Namespace) -> int:
    from .data.frequency import main as freq_main
    argv = [args.data_path, "--out", args.out]
    if args.train_only:
        argv.append("--train-only")
    if args.mode != "predcls":
        argv.append("--filter-small-box")
    code = freq_main(argv)
    import pandas as pd
    print(pd.read_csv(os.path.join(args.out, "predicate_frequencies.csv")).to_string(index=False))
    return code


def cmd_visualize(args: argparse.Namespace) -> int:
    from .train.visualize import draw_video
    from .data.cache import VideoEntrySource
    from .pipeline import load_split
    config = _config(args)
    train_ds = load_split(args.data_path, "train", config.mode)
    test_ds = load_split(args.data_path, "test", config.mode)
    model, _ = _load_model_for_eval(args, config, train_ds, test_ds)
    source = VideoEntrySource(test_ds, config.mode, False, cache=args.test_cache)
    if not 0 <= args.video < len(source):
        raise SystemExit(f"fremure visualize: --video must lie in [0, {len(source)}), got {args.video}")
    model.eval()
    with torch.no_grad():
        pred = model(source[args.video], phase="test")
    paths = draw_video(test_ds, args.video, pred, args.out, top_k=args.top_k, max_frames=args.max_frames,
                       scale=args.scale)
    print(f"wrote {len(paths)} PNG files to {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .train.bench import train_throughput
    rows = train_throughput(args.data_path, args.work_dir, videos=args.videos, steps=args.epochs,
                            detector_checkpoint=args.detector_checkpoint, target_size=args.target_size or 96,
                            device=args.device)
    for row in rows:
        print(f"{row['source']:>9}: {row['videos_per_s']:.3f} videos/s ({row['seconds']:.1f} s for {row['videos']} videos)")
    return 0


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fremure", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic AG end to end: extract, train, evaluate (CPU, minutes)",
                       description="Runs the whole pipeline on the bundled synthetic AG sample (12 train / 6 test "
                                   "videos, or --generate N): feature extraction with the detector (random weights "
                                   "unless --detector-checkpoint; skipped with --train-cache/--test-cache), the "
                                   "untrained model's recall, training, evaluation with/semi/no constraint. Demo "
                                   "defaults (any flag overrides them): PredCls, linear relation head, no memory, "
                                   "dropout 0, 1 decoder layer, AdamW lr 3e-5, 10 epochs; writes results.json and "
                                   "results_untrained.json to --work-dir.")
    p.add_argument("--work-dir", default=DEFAULT_WORK, help=f"output folder (default {DEFAULT_WORK})")
    p.add_argument("--generate", type=_positive_int, default=None, metavar="N",
                   help="generate a synthetic AG with N videos instead of using the bundled sample")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    _detector_options(p)
    _add(p, MODEL_OPTIONS)
    _add(p, TRAIN_OPTIONS)
    p.set_defaults(func=cmd_demo, _train_options=TRAIN_OPTIONS)

    p = sub.add_parser("extract", help="run the detector once per video into a feature cache")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="cache root; writes <out>/<mode>_<split>/")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls")
    p.add_argument("--split", nargs="+", choices=["train", "test"], default=["train", "test"])
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored feature precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the random detector (without a checkpoint)")
    _detector_options(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="train on cached features (published recipe by default)",
                       description="Trains FReMuRe. Defaults follow the published recipe: AdamW lr 1e-5, 10 epochs, "
                                   "ReduceLROnPlateau on mR@20, clipping 5, one video per step.")
    p.add_argument("--config", default=None, help="YAML file of training options (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue from <save-path>/checkpoints/last.json")
    _add(p, MODEL_OPTIONS)
    _add(p, TRAIN_OPTIONS)
    p.set_defaults(func=cmd_train, _train_options=TRAIN_OPTIONS)

    for name, func, text in (("eval", cmd_eval, "R@K/mR@K with/semi/no constraint: JSON, table, per-predicate plot"),
                             ("visualize", cmd_visualize, "draw frames with boxes and top-k relations (PNG)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data-path", required=True, help="AG root")
        p.add_argument("--checkpoint", default=None, help="our checkpoint JSON (e.g. run/checkpoints/best_mrecall.json)")
        p.add_argument("--published-checkpoint", default=None, help="a published FReMuRe .tar checkpoint (fremure.compat)")
        p.add_argument("--test-cache", default=None, help="feature cache of the test split")
        p.add_argument("--config", default=None, help="YAML file of model options")
        p.add_argument("--use-memory", type=_bool, default=False, metavar="true|false",
                       help="keep the checkpoint's memory (published test.py drops it, Q-T4; default false)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--device", default="cpu")
        _add(p, MODEL_OPTIONS)
        if name == "eval":
            p.add_argument("--max-videos", type=int, default=0, help="evaluate the first N test videos (0 = all)")
            _detector_options(p)
        else:
            p.add_argument("--video", type=int, default=0, help="test video index")
            p.add_argument("--top-k", type=_positive_int, default=3, help="relations drawn per frame")
            p.add_argument("--max-frames", type=_positive_int, default=8, help="frames drawn")
            p.add_argument("--scale", type=int, default=0,
                           help="each PNG is the frame's size times this factor (default 0: the smallest factor "
                                "giving at least 480 px of height)")
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help="training throughput: cached features vs running the detector every epoch")
    p.add_argument("--data-path", default=None, help="AG root (default: the bundled synthetic sample)")
    p.add_argument("--work-dir", default="fremure-bench")
    p.add_argument("--videos", type=_positive_int, default=4)
    p.add_argument("--epochs", type=_positive_int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where the detector and the model run")
    _detector_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("freq", help="predicate frequency table, priors file and long-tail plot")
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls",
                   help="sgcls/sgdet count the filtersmall annotations, as training does")
    p.add_argument("--train-only", action="store_true", help="count train labels only (non-reference)")
    p.set_defaults(func=cmd_freq)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fremure`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        from .train.checkpoint import CheckpointError
        # bad options, config values or damaged checkpoints: a message and exit code 2, not a traceback
        code = 2 if isinstance(err, (ValueError, CheckpointError)) else 1
        print(f"fremure {args.command}: error: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
