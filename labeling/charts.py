"""Server-rendered SVG charts: no script, nothing for the Content-Security-Policy to block."""

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
