"""Reporting of evaluator results: text table, JSON file, per-predicate recall bar chart.

``results`` is either one ``SceneGraphEvaluator.summary()`` or a mapping ``{constraint: summary}``
(e.g. ``{"with": ..., "semi": ..., "no": ...}``, the three evaluators of test.py).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from .classes import GROUP_NAMES, PREDICATE_GROUP, PREDICATES

_SUMMARY_KEYS = ("R", "mR", "per_predicate")


def _by_constraint(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if not isinstance(results, Mapping) or not results:
        raise TypeError("results: expected a summary dict or a non-empty {constraint: summary} dict")
    if "R" in results:
        return {str(results.get("constraint", "results")): results}
    for name, summary in results.items():
        if not isinstance(summary, Mapping) or any(key not in summary for key in _SUMMARY_KEYS):
            raise ValueError(f"results[{name!r}]: expected a summary with keys {_SUMMARY_KEYS}")
    return {str(name): summary for name, summary in results.items()}


def _ks(summary: Mapping[str, Any]) -> list[int]:
    return sorted(int(k) for k in summary["R"])


def format_table(results: Mapping[str, Any], percent: bool = True) -> str:
    """R@K and mR@K of ``results`` (a summary or ``{constraint: summary}``) as a fixed-width text
    table, one row per constraint, no trailing newline; ``percent``: values x100 with two decimals
    (else raw fractions with six, as the reference)."""
    table = _by_constraint(results)
    first = next(iter(table.values()))
    ks = _ks(first)
    scale, fmt = (100.0, "{:8.2f}") if percent else (1.0, "{:8.6f}")
    name_width = max(10, *(len(name) for name in table))
    title = " ".join(str(first[key]) for key in ("mode",) if key in first)
    header = f"{title:<{name_width}}" + "".join(f"{f'R@{k}':>9}" for k in ks) + " |" + \
        "".join(f"{f'mR@{k}':>9}" for k in ks)
    lines = [header, "-" * len(header)]
    for name, summary in table.items():
        recall = _lookup(summary["R"])
        mean_recall = _lookup(summary["mR"])
        cells = [" " + fmt.format(recall(k) * scale) for k in ks] + [" |"] + \
            [" " + fmt.format(mean_recall(k) * scale) for k in ks]
        lines.append(f"{name:<{name_width}}" + "".join(cells))
    frames = first.get("num_frames")
    if frames is not None:
        lines.append(f"({frames} frames{', values in %' if percent else ''})")
    return "\n".join(lines)


def _lookup(values: Mapping[Any, float]):
    """Reads ``values[k]`` whether keys are ints (a summary) or strings (read back from JSON)."""
    return lambda k: float(values[k] if k in values else values[str(k)])


def _jsonable(summary: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out[key] = {str(k): (list(map(float, v)) if isinstance(v, (list, tuple, np.ndarray)) else _number(v))
                        for k, v in value.items()}
        else:
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value      # NaN is not valid JSON


def write_json(results: Mapping[str, Any], path: str | pathlib.Path) -> pathlib.Path:
    """Writes ``{"predicates": [26 names], "results": {constraint: summary}}`` (K keys as strings)
    of ``results`` (a summary or ``{constraint: summary}``) to ``path`` (parent folders are
    created); returns ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"predicates": list(PREDICATES),
               "results": {name: _jsonable(summary) for name, summary in _by_constraint(results).items()}}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_json(path: str | pathlib.Path) -> dict[str, dict[str, Any]]:
    """Reads a ``write_json`` file back to ``{constraint: summary}`` with int K keys (null -> NaN)."""
    payload = json.loads(pathlib.Path(path).read_text())
    if not isinstance(payload, dict) or "results" not in payload:
        raise ValueError(f"{path}: not a results file written by write_json")
    out = {}
    for name, summary in payload["results"].items():
        restored = dict(summary)
        for key in _SUMMARY_KEYS:
            restored[key] = {int(k): (float("nan") if v is None else v) for k, v in summary[key].items()}
        out[name] = restored
    return out


def plot_per_predicate(results: Mapping[str, Any], path: str | pathlib.Path, k: int = 20) -> pathlib.Path:
    """Bar chart of per-predicate recall at ``k`` of ``results`` (a summary or ``{constraint:
    summary}``): one group of bars per predicate, shaded by relation type, one bar per constraint.
    Rendered with matplotlib's Agg canvas (no display needed) to ``path`` (PNG by extension; parent
    folders are created); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = _by_constraint(results)
    series = {}
    for name, summary in table.items():
        values = summary["per_predicate"]
        if k not in values and str(k) not in values:
            raise ValueError(f"k: {k} is not among the K values of results[{name!r}] ({_ks(summary)})")
        series[name] = np.asarray(values[k] if k in values else values[str(k)], dtype=np.float64)
        if series[name].shape != (len(PREDICATES),):
            raise ValueError(f"results[{name!r}]['per_predicate'][{k}]: expected {len(PREDICATES)} values")

    figure = Figure(figsize=(14, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(PREDICATES))
    width = 0.8 / len(series)
    colors = ("#ececec", "#dbe8f5", "#f5e6d3")
    for group, label in enumerate(GROUP_NAMES):
        members = np.flatnonzero(np.asarray(PREDICATE_GROUP) == group)
        axes.axvspan(members[0] - 0.5, members[-1] + 0.5, color=colors[group], zorder=0)
        axes.text((members[0] + members[-1]) / 2, 1.005, label, ha="center", va="bottom", fontsize=9,
                  transform=axes.get_xaxis_transform())
    for i, (name, values) in enumerate(series.items()):
        axes.bar(x - 0.4 + width * (i + 0.5), values * 100, width, label=name, zorder=2)
    axes.set_xticks(x, PREDICATES, rotation=60, ha="right", fontsize=8)
    axes.set_xlim(-0.6, len(PREDICATES) - 0.4)
    axes.set_ylim(0, 110)
    axes.set_yticks(np.arange(0, 101, 20))
    axes.set_ylabel(f"recall@{k} (%)")
    mode = next(iter(table.values())).get("mode", "")
    axes.set_title(f"Per-predicate recall@{k} {mode}".strip(), pad=18)
    axes.grid(axis="y", alpha=0.4, zorder=1)
    axes.legend(title="constraint", fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.0))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _data_uri(path: str | pathlib.Path) -> str:
    import base64
    return "data:image/png;base64," + base64.b64encode(pathlib.Path(path).read_bytes()).decode("ascii")


def write_html(results: Mapping[str, Any], path: str | pathlib.Path, chart: str | pathlib.Path | None = None,
               frames: Sequence[str | pathlib.Path] = (), title: str = "FReMuRe evaluation",
               details: Mapping[str, Any] | None = None) -> pathlib.Path:
    """A self-contained HTML page (no external files): R@K / mR@K per constraint as a table, the
    per-predicate chart ``chart`` and the visualised ``frames`` embedded as base64 PNGs, and
    ``details`` (e.g. checkpoint, mode, videos) as a key/value list. ``results``: a summary or
    ``{constraint: summary}``; ``path``: the ``.html`` file (parent folders are created), returned."""
    import html
    table = _by_constraint(results)
    first = next(iter(table.values()))
    ks = _ks(first)
    head = "".join(f"<th>R@{k}</th>" for k in ks) + "".join(f"<th>mR@{k}</th>" for k in ks)
    rows = []
    for name, summary in table.items():
        recall, mean_recall = _lookup(summary["R"]), _lookup(summary["mR"])
        cells = "".join(f"<td>{100 * recall(k):.2f}</td>" for k in ks) + \
            "".join(f"<td>{100 * mean_recall(k):.2f}</td>" for k in ks)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    info = dict(details or {})
    if first.get("mode"):
        info.setdefault("mode", first["mode"])
    if first.get("num_frames") is not None:
        info.setdefault("frames evaluated", first["num_frames"])
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in info.items())
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse}"
             "th,td{border:1px solid #999;padding:4px 10px;text-align:right}thead th{background:#e8eef5}"
             "tbody th{text-align:left}dt{font-weight:bold;float:left;clear:left;width:11em}dd{margin-left:12em}"
             "img{max-width:100%;border:1px solid #ccc}.frames img{margin:4px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<dl>{items}</dl>",
             "<h2>Recall (%)</h2>",
             f"<table id=\"recall\"><thead><tr><th>constraint</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"]
    if chart is not None:
        parts += ["<h2>Per-predicate recall</h2>", f"<img id=\"chart\" alt=\"per-predicate recall\" src=\"{_data_uri(chart)}\">"]
    if frames:
        images = "".join(f"<img alt=\"{html.escape(pathlib.Path(f).name)}\" src=\"{_data_uri(f)}\">" for f in frames)
        parts += ["<h2>Predictions on test frames</h2>",
                  "<p>Boxes with their predicted classes; per person-object pair its top relations and scores.</p>",
                  f"<div class=\"frames\">{images}</div>"]
    parts.append("</body></html>\n")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_report(out_dir: str | pathlib.Path, results: Mapping[str, Any], predictions: Sequence[tuple[int, dict]] = (),
                 dataset: Any = None, details: Mapping[str, Any] | None = None, frames: int = 4,
                 title: str = "FReMuRe evaluation") -> dict[str, pathlib.Path]:
    """Everything ``fremure eval`` leaves in ``out_dir``: ``results.json``, ``results.txt`` (the
    table), ``per_predicate_R20.png`` and ``report.html`` with up to ``frames`` test frames drawn
    with their predictions (``predictions``: ``[(video index, pred dict)]`` of ``dataset``; frames
    that were not dumped are left out with a warning). Returns the paths by name."""
    import logging
    from .visualize import draw_video
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(results, out / "results.json"),
             "chart": plot_per_predicate(results, out / "per_predicate_R20.png", k=20)}
    paths["table"] = out / "results.txt"
    paths["table"].write_text(format_table(results) + "\n")
    drawn: list[str] = []
    for video, pred in predictions if dataset is not None else ():
        if len(drawn) >= frames:
            break
        try:
            drawn += draw_video(dataset, video, pred, str(out / "report_frames"), top_k=2,
                                max_frames=min(2, frames - len(drawn)), min_height=240)
        except (OSError, ValueError) as err:        # frames not dumped: the report says so, no pictures
            logging.getLogger(__name__).warning("report: no frames drawn for test video %d: %s", video, err)
            break
    paths["html"] = write_html(results, out / "report.html", chart=paths["chart"], frames=drawn, title=title,
                               details=details)
    return paths
