"""Predicate frequency priors (docs/ag_and_eval.md 4.3) and long-tail statistics of AG annotations.

FReMuRe feeds one frequency vector per relation type (attention 3, spatial 6, contacting 17) to
its frequency gates. The published scripts count labels over the loaded (filtered) train **and
test** annotations (label leakage, Q-T1); ``predicate_frequencies(train, test)`` reproduces that,
``include_test=False`` gives the sane train-only prior. Counts are taken after the loader's
filters and from the pickle variant the caller loaded (filtersmall for sgcls/sgdet).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch

from .ag import REL_OFFSETS, REL_SIZES, REL_TYPES, RELATIONSHIP_CLASSES, ActionGenome

__all__ = ["relation_counts", "predicate_frequencies", "normalise_counts", "frequency_table",
           "plot_long_tail", "save_frequencies", "main"]

Annotations = Union[ActionGenome, Sequence[Sequence[Sequence[dict]]]]


def _annotations(source: Annotations, name: str) -> Sequence:
    if isinstance(source, ActionGenome):
        return source.gt_annotations
    if isinstance(source, (list, tuple)):
        return source
    raise TypeError(f"{name} must be an ActionGenome or its gt_annotations list, got {type(source).__name__}")


def _labels(gt_annotations: Sequence, rel_type: str) -> np.ndarray:
    key = f"{rel_type}_relationship"
    # the person dict (element 0 of a frame) has no relation keys
    chunks = [obj[key] for video in gt_annotations for frame in video for obj in frame if key in obj]
    if not chunks:
        return np.zeros(0, dtype=np.int64)
    if all(isinstance(c, torch.Tensor) for c in chunks):  # the loader's records: one cat, not N conversions
        return torch.cat([c.reshape(-1) for c in chunks]).long().numpy()
    return np.concatenate([np.asarray(c, dtype=np.int64).reshape(-1) for c in chunks])


def relation_counts(*sources: Annotations) -> dict[str, np.ndarray]:
    """Label occurrences per relation type over all objects of all ``sources``.

    Each source is an ``ActionGenome`` or its ``gt_annotations``. Returns
    ``{'attention': int64 [3], 'spatial': int64 [6], 'contacting': int64 [17]}``, indexed by local
    predicate index. Raises ``ValueError`` for a label outside its type's range.
    """
    counts = {}
    for rel_type in REL_TYPES:
        size = REL_SIZES[rel_type]
        labels = [_labels(_annotations(s, f"sources[{i}]"), rel_type) for i, s in enumerate(sources)]
        flat = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= size):
            raise ValueError(f"{rel_type} labels must lie in [0, {size}), found {flat.min()}..{flat.max()}")
        counts[rel_type] = np.bincount(flat, minlength=size).astype(np.int64)
    return counts


def normalise_counts(counts: np.ndarray) -> torch.Tensor:
    """float32 ``counts / (sum + 1e-12)`` computed in float32 as the reference does -> float32 [C]."""
    array = np.asarray(counts).astype(np.float32)
    return torch.from_numpy(array / (array.sum() + 1e-12))


def predicate_frequencies(train: Annotations, test: Annotations | None = None, *,
                          include_test: bool = True) -> dict[str, torch.Tensor]:
    """Frequency priors ``{'attention': [3], 'spatial': [6], 'contacting': [17]}`` (float32, each sums to 1).

    As published (``include_test=True``) the labels of ``train`` and ``test`` are pooled; with
    ``include_test=False`` only ``train`` counts (``test`` is then ignored). A type without any
    label gives zeros.
    """
    if include_test and test is None:
        raise ValueError("the published priors pool train and test annotations: pass test=, or include_test=False")
    sources = (train, test) if include_test else (train,)
    return {k: normalise_counts(v) for k, v in relation_counts(*sources).items()}


def frequency_rows(counts: dict[str, np.ndarray],
                   predicate_names: Sequence[str] = RELATIONSHIP_CLASSES) -> list[dict[str, Any]]:
    """One dict per predicate (global index order): predicate, group, local/global index, count,
    frequency within its group (the prior), share of all labels, and rank by count (1 = most
    frequent; ties by index)."""
    if len(predicate_names) != sum(REL_SIZES.values()):
        raise ValueError(f"predicate_names must have {sum(REL_SIZES.values())} entries, got {len(predicate_names)}")
    rows = []
    for rel_type in REL_TYPES:
        group = np.asarray(counts[rel_type], dtype=np.int64)
        if group.shape != (REL_SIZES[rel_type],):
            raise ValueError(f"counts[{rel_type!r}] must have shape ({REL_SIZES[rel_type]},), got {group.shape}")
        prior = normalise_counts(group).numpy()
        for local, count in enumerate(group):
            index = REL_OFFSETS[rel_type] + local
            rows.append(dict(predicate=predicate_names[index], group=rel_type, local_index=local,
                             global_index=index, count=int(count), frequency=float(prior[local])))
    total = sum(row["count"] for row in rows)
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["count"], i))
    for rank, i in enumerate(order, start=1):
        rows[i]["share"] = rows[i]["count"] / total if total else 0.0
        rows[i]["rank"] = rank
    return rows


def frequency_table(counts: dict[str, np.ndarray], predicate_names: Sequence[str] = RELATIONSHIP_CLASSES):
    """:func:`frequency_rows` as a pandas DataFrame (pandas is optional: ``pip install 'fremure[tables]'``)."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("frequency_table needs pandas: pip install 'fremure[tables]' (or use frequency_rows)") from err
    return pd.DataFrame(frequency_rows(counts, predicate_names))


def write_frequency_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> pathlib.Path:
    """Writes :func:`frequency_rows` as CSV (header = the row keys)."""
    import csv
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


_GROUP_COLOURS = {"attention": "#2a9d8f", "spatial": "#457b9d", "contacting": "#e76f51"}


def plot_long_tail(counts: dict[str, np.ndarray], path: str | os.PathLike, *,
                   title: str = "Action Genome predicate frequencies", log_scale: bool = True,
                   predicate_names: Sequence[str] = RELATIONSHIP_CLASSES) -> pathlib.Path:
    """Bar chart of the 26 predicates sorted by count (coloured by group) with the cumulative share
    of labels on a second axis; written with the Agg canvas (no display needed). Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    table = sorted(frequency_rows(counts, predicate_names), key=lambda row: row["rank"])
    count = np.array([row["count"] for row in table])
    figure = Figure(figsize=(12, 5.5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(table))
    ax.bar(positions, count, color=[_GROUP_COLOURS[row["group"]] for row in table])
    ax.set_xticks(positions, [row["predicate"] for row in table], rotation=60, ha="right", fontsize=9)
    ax.set_ylabel("label count" + (" (log scale)" if log_scale else ""))
    if log_scale and count.max() > 0:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_title(title)
    cumulative = ax.twinx()
    cumulative.plot(positions, np.cumsum([row["share"] for row in table]) * 100, color="black", marker="o", markersize=3, linewidth=1)
    cumulative.set_ylim(0, 105)
    cumulative.set_ylabel("cumulative share of labels (%)")
    ax.legend(handles=[Patch(color=c, label=g) for g, c in _GROUP_COLOURS.items()], loc="center right")
    figure.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def save_frequencies(frequencies: dict[str, torch.Tensor], path: str | os.PathLike) -> pathlib.Path:
    """Write the priors as a safetensors file with keys attention / spatial / contacting."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in frequencies.items()}, str(path))
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fremure.data.frequency",
                                description="Predicate frequency priors, table and long-tail plot of an AG dataset.")
    p.add_argument("data_path", help="AG root (annotations/ and frames/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train-only", action="store_true", help="count train labels only (non-reference)")
    p.add_argument("--filter-small-box", action="store_true", help="use the filtersmall pickle (sgcls/sgdet)")
    p.add_argument("--filtersmall-path", default=None)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    """Command line: writes predicate_frequencies.safetensors, predicate_frequencies.csv and long_tail.png."""
    args = _parser().parse_args(None if argv is None else list(argv))
    kwargs: dict[str, Any] = dict(filter_small_box=args.filter_small_box, filtersmall_path=args.filtersmall_path)
    train = ActionGenome(args.data_path, "train", **kwargs).require_videos()
    test = None if args.train_only else ActionGenome(args.data_path, "test", **kwargs).require_videos()
    sources = (train,) if test is None else (train, test)
    counts = relation_counts(*sources)
    out = pathlib.Path(args.out)
    save_frequencies(predicate_frequencies(train, test, include_test=test is not None), out / "predicate_frequencies.safetensors")
    write_frequency_csv(frequency_rows(counts), out / "predicate_frequencies.csv")
    split = "train" if test is None else "train+test"
    plot_long_tail(counts, out / "long_tail.png", title=f"Predicate frequencies ({split}, {pathlib.Path(args.data_path).name})")
    print(f"wrote predicate_frequencies.safetensors, predicate_frequencies.csv and long_tail.png to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
