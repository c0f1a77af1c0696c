"""What ``fremure predict`` writes per video: ``NAME.jsonl`` (one scene graph per line), ``NAME.html``
(a self-contained viewer: frames with boxes and track ids, the top triplets, filterable by relation
type) and, on request, ``NAME.overlay.mp4`` (the frames with boxes and triplets drawn). Every file is
written to a temporary name and renamed, so a file that exists is complete."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import pathlib
from typing import Sequence

import numpy as np

from .scene_graph import SceneGraph

VIEWER_WIDTH = 640          # frames are shown (and embedded) at most this wide
TRIPLETS_SHOWN = 10         # per frame in the viewer; 5 drawn on the overlay
_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _atomic(path: pathlib.Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: str | os.PathLike, video: str, graphs: Sequence[SceneGraph]) -> None:
    """One JSON object per frame: ``{"video": NAME, **graph.to_dict()}`` (docs/predict.md)."""
    lines = "".join(json.dumps({"video": video, **g.to_dict()}, allow_nan=False) + "\n" for g in graphs)
    _atomic(pathlib.Path(path), lambda tmp: tmp.write_text(lines))


def read_jsonl(path: str | os.PathLike) -> list[SceneGraph]:
    """The scene graphs of a ``NAME.jsonl`` written by :func:`write_jsonl`."""
    text = pathlib.Path(path).read_text()
    return [SceneGraph.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]


def _jpeg_data_uri(image: np.ndarray) -> tuple[str, float]:
    from PIL import Image
    picture = Image.fromarray(image)
    scale = min(1.0, VIEWER_WIDTH / picture.width)
    if scale < 1.0:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), scale


def _frame_html(graph: SceneGraph, image: np.ndarray) -> str:
    uri, scale = _jpeg_data_uri(image)
    width, height = round(graph.width * scale), round(graph.height * scale)
    shapes = []
    for obj in graph.objects:
        x1, y1, x2, y2 = (v * scale for v in obj.box)
        colour = _COLOURS[obj.index % len(_COLOURS)]
        track = f" #{obj.track}" if obj.track is not None else ""
        shapes.append(f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" '
                      f'stroke="{colour}"/><text x="{x1 + 2:.1f}" y="{y1 + 12:.1f}" fill="{colour}">'
                      f'{obj.index}: {html.escape(obj.name)}{track} {obj.score:.2f}</text>')
    rows = "".join(f'<tr class="{r.type}"><td>{html.escape(graph.objects[r.subject].name)} ({r.subject})</td>'
                   f'<td>{html.escape(r.name)}</td><td>{html.escape(graph.objects[r.object].name)} ({r.object})</td>'
                   f'<td>{r.score:.3f}</td></tr>' for r in graph.relations[:TRIPLETS_SHOWN])
    when = f", {graph.time:.2f} s" if graph.time is not None else ""
    return (f'<section><h2>frame {graph.frame}{when}</h2><div class="frame"><svg width="{width}" height="{height}">'
            f'<image href="{uri}" width="{width}" height="{height}"/>{"".join(shapes)}</svg>'
            f'<table><tr><th>subject</th><th>predicate</th><th>object</th><th>score</th></tr>{rows}</table>'
            f'</div></section>')


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:sans-serif;margin:1em}} .frame{{display:flex;gap:1em;align-items:flex-start}}
rect{{fill:none;stroke-width:2}} text{{font-size:11px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:left}}
body.no-attention tr.attention,body.no-spatial tr.spatial,body.no-contacting tr.contacting{{display:none}}
</style></head><body><h1>{title}</h1><p>{summary}</p><p>show:
<label><input type="checkbox" checked onchange="toggle('attention',this)"> attention</label>
<label><input type="checkbox" checked onchange="toggle('spatial',this)"> spatial</label>
<label><input type="checkbox" checked onchange="toggle('contacting',this)"> contacting</label></p>
{body}<script>function toggle(t,box){{document.body.classList.toggle('no-'+t,!box.checked)}}</script></body></html>
"""


def write_viewer(path: str | os.PathLike, video: str, graphs: Sequence[SceneGraph], images: Sequence[np.ndarray],
                 summary: str = "") -> None:
    """``NAME.html``: every frame (embedded JPEG, boxes with index, class, track id and score) beside
    its top relations; checkboxes hide a relation type. Opens offline, from anywhere."""
    body = "".join(_frame_html(g, image) for g, image in zip(graphs, images))
    page = _PAGE.format(title=html.escape(f"fremure predict: {video}"), summary=html.escape(summary), body=body)
    _atomic(pathlib.Path(path), lambda tmp: tmp.write_text(page))


def write_index(out_dir: str | os.PathLike, rows: Sequence[tuple[str, int, str]]) -> None:
    """``index.html`` linking each video's viewer: rows ``(video, frames, status)``."""
    items = "".join(f'<tr><td><a href="{html.escape(v)}.html">{html.escape(v)}</a></td><td>{n}</td>'
                    f'<td>{html.escape(s)}</td></tr>' for v, n, s in rows)
    page = _PAGE.format(title="fremure predict", summary=f"{len(rows)} videos",
                        body=f"<table><tr><th>video</th><th>frames</th><th>status</th></tr>{items}</table>")
    _atomic(pathlib.Path(out_dir) / "index.html", lambda tmp: tmp.write_text(page))


def write_overlay(path: str | os.PathLike, graphs: Sequence[SceneGraph], images: Sequence[np.ndarray],
                  fps: float) -> None:
    """``NAME.overlay.mp4`` (H.264): each frame with its boxes and its top 5 triplets drawn, at ``fps``."""
    import av
    from fractions import Fraction
    drawn = [_draw(g, image) for g, image in zip(graphs, images)]
    height, width = (max(d.shape[i] for d in drawn) for i in (0, 1))
    height, width = height + height % 2, width + width % 2     # yuv420p needs even sizes

    def encode(tmp: pathlib.Path) -> None:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for image in drawn:
                canvas = np.zeros((height, width, 3), dtype=np.uint8)
                canvas[:image.shape[0], :image.shape[1]] = image
                container.mux(stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
            container.mux(stream.encode())

    _atomic(pathlib.Path(path), encode)


def _draw(graph: SceneGraph, image: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageDraw
    picture = Image.fromarray(image).convert("RGB")
    pen = ImageDraw.Draw(picture)
    for obj in graph.objects:
        colour = _COLOURS[obj.index % len(_COLOURS)]
        pen.rectangle(obj.box, outline=colour, width=2)
        track = f" #{obj.track}" if obj.track is not None else ""
        pen.text((obj.box[0] + 2, obj.box[1] + 2), f"{obj.index}:{obj.name}{track}", fill=colour)
    for k, (subject, predicate, obj, score) in enumerate(graph.triplets()[:5]):
        pen.text((4, 4 + 12 * k), f"{subject} {predicate} {obj} {score:.2f}", fill="white", stroke_width=1,
                 stroke_fill="black")
    return np.asarray(picture)
