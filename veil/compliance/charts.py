"""Inline SVG charts for reports: no JavaScript, no CDN, render the same in a browser and in
WeasyPrint. Only numbers and labels we produced go in; labels are XML-escaped."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#2563eb", "#dc2626", "#f59e0b", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d"]
FONT = "font-family='Helvetica, Arial, sans-serif'"


def _nice_max(value: float, ticks: int = 4) -> float:
    """The smallest ``ticks`` x (1, 2 or 5 x 10^k) at or above ``value``: round gridline labels."""
    if value <= 0:
        return ticks
    raw = value / ticks
    exp = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * exp:
            return max(step * exp, 1) * ticks
    return 10 * exp * ticks


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M".replace(".0M", "M")
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,.0f}"


def column_chart(
    labels: list[str],
    series: dict[str, list[float]],
    *,
    title: str,
    width: int = 760,
    height: int = 240,
    colors: list[str] | None = None,
) -> str:
    """Stacked columns, one per label (a day), one colour per series, with a legend."""
    colors = colors or PALETTE
    left, right, top, bottom = 56, 12, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top_value = _nice_max(max(totals, default=0))
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{escape(title)}' class='chart'>",
        f"<text x='{left}' y='16' {FONT} font-size='13' font-weight='600' fill='#111827'>{escape(title)}</text>",
    ]
    for k in range(5):
        value = top_value * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(f"<line x1='{left}' y1='{y:.1f}' x2='{width - right}' y2='{y:.1f}' stroke='#e5e7eb'/>")
        out.append(
            f"<text x='{left - 6}' y='{y + 4:.1f}' {FONT} font-size='10' fill='#6b7280' "
            f"text-anchor='end'>{_fmt(value)}</text>"
        )
    slot = plot_w / n
    bar = max(1.0, slot * 0.72)
    every = max(1, math.ceil(n / 16))
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        base: float = top + plot_h
        for j, values in enumerate(series.values()):
            h = plot_h * values[i] / top_value if top_value else 0
            if h > 0:
                out.append(
                    f"<rect x='{x:.1f}' y='{base - h:.1f}' width='{bar:.1f}' height='{h:.1f}' "
                    f"fill='{colors[j % len(colors)]}'><title>{escape(label)}: {values[i]:,.0f}</title></rect>"
                )
            base -= h
        if i % every == 0:
            out.append(
                f"<text x='{x + bar / 2:.1f}' y='{top + plot_h + 14}' {FONT} font-size='9' fill='#6b7280' "
                f"text-anchor='middle'>{escape(label[5:] if len(label) == 10 else label)}</text>"
            )
    out.append(f"<line x1='{left}' y1='{top + plot_h}' x2='{width - right}' y2='{top + plot_h}' stroke='#9ca3af'/>")
    lx = left
    for j, name in enumerate(series):
        out.append(f"<rect x='{lx}' y='{height - 14}' width='10' height='10' fill='{colors[j % len(colors)]}'/>")
        out.append(f"<text x='{lx + 14}' y='{height - 5}' {FONT} font-size='11' fill='#374151'>{escape(name)}</text>")
        lx += 24 + 7 * len(name)
    if not labels or not any(totals):
        out.append(
            f"<text x='{left + plot_w / 2}' y='{top + plot_h / 2}' {FONT} font-size='12' fill='#9ca3af' "
            "text-anchor='middle'>no data in this period</text>"
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    items: list[tuple[str, float]], *, title: str, width: int = 760, color: str = PALETTE[0], max_items: int = 12
) -> str:
    """Horizontal bars, largest first, value printed at the end of each bar."""
    items = items[:max_items]
    row_h, top, label_w = 22, 30, 190
    height = top + row_h * max(len(items), 1) + 10
    plot_w = width - label_w - 70
    top_value = max((v for _, v in items), default=0) or 1
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{escape(title)}' class='chart'>",
        f"<text x='0' y='16' {FONT} font-size='13' font-weight='600' fill='#111827'>{escape(title)}</text>",
    ]
    for i, (label, value) in enumerate(items):
        y = top + i * row_h
        w = plot_w * value / top_value
        out.append(
            f"<text x='{label_w - 8}' y='{y + 14}' {FONT} font-size='11' fill='#374151' "
            f"text-anchor='end'>{escape(label[:30])}</text>"
        )
        out.append(
            f"<rect x='{label_w}' y='{y + 3}' width='{max(w, 1):.1f}' height='{row_h - 8}' rx='2' fill='{color}'/>"
        )
        out.append(
            f"<text x='{label_w + w + 6:.1f}' y='{y + 14}' {FONT} font-size='11' fill='#111827'>{value:,.0f}</text>"
        )
    if not items:
        out.append(
            f"<text x='{label_w}' y='{top + 14}' {FONT} font-size='12' fill='#9ca3af'>no data in this period</text>"
        )
    out.append("</svg>")
    return "".join(out)
