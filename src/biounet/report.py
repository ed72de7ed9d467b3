"""A report a person reads: one self-contained HTML page (``biounet evaluate --report``).

The score table, the per-image scores sorted worst first, the worst images
with truth and prediction outlines side by side, and a training run's curve
when given. Every picture is embedded as a base64 PNG, so the page is one file
that opens anywhere, offline. Pure: arrays and numbers in, an HTML string out.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Sequence

import numpy as np

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}.pair{display:flex;gap:12px;margin:1em 0}
.pair figure{margin:0}figcaption{font-size:90%;color:#555}img{width:480px;max-width:100%;image-rendering:pixelated}
h1{font-size:1.4em;word-break:break-all}"""


def png_data_uri(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 image as a ``data:image/png;base64,...`` URI."""
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, np.ascontiguousarray(rgb), extension=".png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_report(
    title: str,
    summary: dict,
    per_image: Sequence[dict] = (),
    worst: Sequence[tuple[str, np.ndarray, np.ndarray, float]] = (),
    curve_png: bytes | None = None,
) -> str:
    """The page: ``summary`` table, ``per_image`` rows (worst first by their score), ``worst`` pictures.

    ``worst`` holds (name, truth overlay RGB, prediction overlay RGB, score);
    ``curve_png`` is a training run's curve.png, embedded as it is.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<h2>Scores</h2>", _table(["score", "value"], list(summary.items()))]
    if per_image:
        key = "dsb_score" if "dsb_score" in per_image[0] else next(k for k, v in per_image[0].items()
                                                                    if isinstance(v, float))
        rows = sorted(per_image, key=lambda r: r[key])
        parts += [f"<h2>Per image, worst first (by {html.escape(key)})</h2>",
                  _table(list(rows[0]), [list(r.values()) for r in rows])]
    if worst:
        parts.append("<h2>Worst images: truth (left) and prediction (right)</h2>")
        for name, truth_rgb, pred_rgb, score in worst:
            parts.append(
                f"<div class='pair'><figure><img alt='truth {html.escape(name)}' src='{png_data_uri(truth_rgb)}'>"
                f"<figcaption>{html.escape(name)}: truth</figcaption></figure>"
                f"<figure><img alt='prediction {html.escape(name)}' src='{png_data_uri(pred_rgb)}'>"
                f"<figcaption>prediction, score {score:.3f}</figcaption></figure></div>")
    if curve_png:
        uri = "data:image/png;base64," + base64.b64encode(curve_png).decode("ascii")
        parts += ["<h2>Training</h2>", f"<img alt='training curve' src='{uri}'>"]
    parts.append("</body></html>")
    return "\n".join(parts)
