"""``fremure prepare`` and ``fremure freq``: parse the flags and call :mod:`fremure.data`."""

from __future__ import annotations

import argparse
import os

from .cli_args import need_dir, out_dir


def cmd_prepare(args: argparse.Namespace) -> int:
    """After fremure frames: checks the annotation files and frames of AG_ROOT (as check-data) and writes
    annotations/object_bbox_and_relationship_filtersmall.pkl, which SGCls/SGDet read and the AG download lacks:
    the object pickle with every visible box whose short edge is at most 16 px marked not visible (the
    published rule, "short edges larger than 16 pixels" are kept). A second run writes nothing and says so;
    an existing file that differs (e.g. the one the STTran authors distributed) is reported and kept unless
    --overwrite. Exit 2 when something is missing or damaged."""
    from .data.prepare import prepare
    need_dir(args.ag_root, "AG_ROOT")
    report = prepare(args.ag_root, overwrite=args.overwrite)
    print(report)
    return 2 if report.problems else 0


def add_prepare_command(sub, common) -> None:
    """The ``prepare`` subcommand and its flags."""
    text = "write the filtersmall annotations SGCls/SGDet need and check an AG folder"
    p = sub.add_parser("prepare", parents=[common], help=text, description=cmd_prepare.__doc__)
    p.set_defaults(func=cmd_prepare)
    p.add_argument("ag_root", metavar="AG_ROOT", help="AG root holding annotations/ and frames/")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing filtersmall pickle that differs from the rule or cannot be read")


def cmd_freq(args: argparse.Namespace) -> int:
    import csv
    from .data.frequency import main as freq_main
    need_dir(args.data_path, "--data-path")
    out_dir(args.out, "--out")
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


def add_freq_command(sub, common) -> None:
    """The ``freq`` subcommand and its flags."""
    text = "predicate frequency table, priors file and long-tail plot"
    p = sub.add_parser("freq", parents=[common], help=text)
    p.set_defaults(func=cmd_freq)
    p.add_argument("--data-path", required=True, help="AG root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=["predcls", "sgcls", "sgdet"], default="predcls",
                   help="sgcls/sgdet count the filtersmall annotations, as training does")
    p.add_argument("--train-only", action="store_true", help="count train labels only (non-reference)")
