"""Server-rendered SVG charts: no script, nothing for the Content-Security-Policy to block."""

import math
from dataclasses import dataclass


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float


def bar_chart(points: list[tuple[str, float]], *, width: int = 720, height: int = 180,
              pad: int = 24, top: float | None = None,
              reference: float | None = None) -> dict:
    """Return the geometry of a bar chart of (label, value) points for the svg template.

    ``top`` fixes the value at the top of the chart (else the largest value); a
    ``reference`` value is drawn as a horizontal line (its y is ``reference_y``).
    """
    top = top or max((value for _, value in points), default=0) or 1
    step = (width - 2 * pad) / max(len(points), 1)
    bars = []
    for i, (label, value) in enumerate(points):
        h = (height - 2 * pad) * value / top
        bars.append(Bar(x=pad + i * step + step * 0.1, y=height - pad - h, width=step * 0.8,
                        height=h, label=label, value=value))
    reference_y = (height - pad - (height - 2 * pad) * reference / top
                   if reference is not None else None)
    return {"width": width, "height": height, "bars": bars, "top": top,
            "baseline": height - pad, "pad": pad, "reference": reference,
            "reference_y": reference_y}


@dataclass
class Line:
    label: str
    css: str  # "line-0", "line-1", ...: the series' colour, from the stylesheet
    points: str  # the polyline's "x,y x,y ..."
    dots: list[tuple[float, float]]  # a lone point: a polyline of one point draws nothing
    count: int


def _number(value) -> float | None:
    """Return value as a finite float, or None for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _short(value: float) -> str:
    return f"{value:.4g}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 720,
               height: int = 200, pad: int = 28, max_points: int = 400) -> dict:
    """Return the geometry of a line chart of (label, [(x, y), ...]) series for the svg template.

    Points whose x or y is missing, NaN or infinite are skipped; a series longer than
    ``max_points`` is thinned evenly (its last point kept). Every series shares the axes.
    """
    cleaned = []
    for label, points in series:
        kept = [(x, y) for x, y in ((_number(x), _number(y)) for x, y in points)
                if x is not None and y is not None]
        if len(kept) > max_points:
            stride = len(kept) / max_points
            kept = [kept[int(i * stride)] for i in range(max_points - 1)] + [kept[-1]]
        cleaned.append((label, kept))
    xs = [x for _, points in cleaned for x, _ in points]
    ys = [y for _, points in cleaned for _, y in points]
    chart = {"width": width, "height": height, "pad": pad, "left": pad * 2,
             "right": width - pad, "top": pad, "bottom": height - pad,
             "empty": not xs, "lines": []}
    if not xs:
        return chart
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if y_lo == y_hi:  # a constant series: draw it across the middle
        spread = abs(y_lo) * 0.1 or 1.0
        y_lo, y_hi = y_lo - spread, y_hi + spread
    plot_w, plot_h = chart["right"] - chart["left"], chart["bottom"] - chart["top"]

    def place(x: float, y: float) -> tuple[float, float]:
        px = chart["left"] + (plot_w * (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo
                              else plot_w / 2)
        py = chart["bottom"] - plot_h * (y - y_lo) / (y_hi - y_lo)
        return round(px, 1), round(py, 1)

    for i, (label, points) in enumerate(cleaned):
        placed = [place(x, y) for x, y in points]
        chart["lines"].append(Line(
            label=label, css=f"line-{i % 6}", count=len(placed),
            points=" ".join(f"{x},{y}" for x, y in placed) if len(placed) > 1 else "",
            dots=placed if len(placed) == 1 else [],
        ))
    chart.update(x_min=_short(x_lo), x_max=_short(x_hi), y_min=_short(y_lo),
                 y_max=_short(y_hi))
    return chart
