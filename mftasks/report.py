"""Plain renderings of run results (no Prefect): loss curve as SVG, markdown tables, and the report
files written beside them (a run summary, a JSONL metrics history).

The Prefect layer turns these into UI artifacts; the command line prints them.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

from .files import atomic_write_bytes, atomic_write_json, disk_full_as_error


def read_metrics(path: str | Path, stage: str | None = None) -> list[dict]:
    """metrics.jsonl lines (optionally of one stage); unreadable lines skipped."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if stage is None or row.get("stage") == stage:
            rows.append(row)
    return rows


def loss_series(outputs: dict[str, str | Path]) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) of each training stage, from rank 0's metrics.jsonl under the stage's output folder;
    the stage name is the series name and the metrics' stage label (train, lora)."""
    return {stage: [(r["step"], r["loss"]) for r in read_metrics(Path(out) / "log" / "rank_0" / "metrics.jsonl", stage)]
            for stage, out in outputs.items()}


def write_json(path: str | Path, obj, what: str) -> None:
    """A report file, written atomically; a full disk ends in a DiskFullError naming the path."""
    path = Path(path)
    with disk_full_as_error(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj, what)


def append_jsonl(path: str | Path, row: dict, what: str) -> None:
    """One more line in a small JSONL history, written atomically (a full disk leaves the old file whole,
    never a cut line), with a DiskFullError naming the path."""
    path = Path(path)
    with disk_full_as_error(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(path, old + (json.dumps(row) + "\n").encode(), what)


def loss_curve_svg(series: dict[str, list[tuple[int, float]]], width: int = 640, height: int = 320) -> str:
    """A line plot of loss against step for each named series (e.g. train, lora)."""
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    pad_l, pad_r, pad_t, pad_b = 56, 16, 16, 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no loss recorded</text></svg>')
        return "".join(parts)
    x_max = max(max(p[0] for p in points), 1)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    if y_max - y_min < 1e-9:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    sx = lambda x: pad_l + (width - pad_l - pad_r) * x / x_max  # noqa: E731
    sy = lambda y: pad_t + (height - pad_t - pad_b) * (1 - (y - y_min) / (y_max - y_min))  # noqa: E731
    parts.append(f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#444"/>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#444"/>')
    for i in range(5):
        y = y_min + (y_max - y_min) * i / 4
        parts.append(f'<text x="{pad_l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    for i in range(5):
        x = x_max * i / 4
        parts.append(f'<text x="{sx(x):.1f}" y="{height - pad_b + 16}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">step</text>')
    for n, (name, pts) in enumerate(series.items()):
        pts = [p for p in pts if math.isfinite(p[1])]
        if not pts:
            continue
        color = colors[n % len(colors)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{width - pad_r - 4}" y="{pad_t + 14 + 14 * n}" text-anchor="end" fill="{color}">'
                     f'{_escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_data_url(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A GitHub-style markdown table of rows (dicts)."""
    if not rows:
        return "_(none)_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def metrics_with_deltas(current: dict[str, float], previous: dict[str, float] | None) -> list[dict]:
    """Rows {metric, value, previous, delta} for an eval-metrics table."""
    rows = []
    for name, value in current.items():
        prev = (previous or {}).get(name)
        delta = None if prev is None or value is None else value - prev
        rows.append({"metric": name, "value": value, "previous": prev, "delta": delta})
    return rows


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
