#!/usr/bin/env python3
"""Turns the grid benchmark's CSV into an SVG chart (standard library only).

    python3 chart.py [--in results/grid.csv] [--out results/grid.svg] [--title TEXT]

One panel per executor/mode (rows) and pool size (columns): x is the number of tasks, y the
median ns per get+drop (log scale, shared by every panel), one line per contender. A run that
hung is drawn as a cross on the panel's top edge in the contender's colour; contenders that do
not run on an executor are left out of its panels and named in the footnote.
"""

import argparse
import csv
import math
import os
import sys
from collections import OrderedDict
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))

# Contender -> (colour, stroke width, dash pattern). Ours is drawn last, on top.
STYLE = OrderedDict(
    [
        ("deadpool", ("#1f77b4", 1.6, "")),
        ("bb8", ("#2ca02c", 1.6, "")),
        ("mobc", ("#9467bd", 1.6, "")),
        ("qp", ("#ff7f0e", 1.6, "")),
        ("arrayqueue", ("#7f7f7f", 1.3, "4 3")),
        ("mutex+sem", ("#8c564b", 1.3, "4 3")),
        ("ours", ("#d62728", 2.8, "")),
    ]
)
MODE_TEXT = {"plain": "get+drop", "hold": "get, yield once, drop"}

PANEL_W, PANEL_H = 270, 190
LEFT, TOP, GAP_X, GAP_Y = 64, 56, 26, 54
LEGEND_H = 52


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def nice_ticks(lo, hi):
    """1-2-5 ticks covering [lo, hi] on a log scale."""
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10**exp
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def step_125(v, down):
    """The nearest 1-2-5 value at or below (down) or at or above v."""
    exp = math.floor(math.log10(v))
    candidates = [m * 10**e for e in (exp - 1, exp, exp + 1) for m in (1, 2, 5)]
    if down:
        return max(c for c in candidates if c <= v)
    return min(c for c in candidates if c >= v)


def fmt_ns(v):
    return f"{v / 1000:g} µs" if v >= 1000 else f"{v:g} ns"


def render(rows, title):
    ok = [r for r in rows if r["status"] == "ok" and r["median_ns"]]
    if not ok:
        sys.exit("chart.py: no finished runs in the input")
    groups = list(OrderedDict.fromkeys((r["executor"], r["mode"]) for r in rows))
    sizes = sorted({int(r["pool_size"]) for r in rows})
    tasks = sorted({int(r["tasks"]) for r in rows})
    contenders = [c for c in STYLE if any(r["contender"] == c for r in rows)]

    values = [float(r["median_ns"]) for r in ok]
    lo = step_125(min(values), down=True)
    hi = step_125(max(values), down=False)
    log_lo, log_hi = math.log10(lo), math.log10(hi)

    width = LEFT + len(sizes) * (PANEL_W + GAP_X) + 10
    height = TOP + len(groups) * (PANEL_H + GAP_Y) + LEGEND_H + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">median ns per '
        f"operation (log scale, lower is better) by number of tasks</text>",
    ]

    def x_of(t, x0):
        if len(tasks) == 1:
            return x0 + PANEL_W / 2
        i = tasks.index(t)
        return x0 + 14 + i * (PANEL_W - 28) / (len(tasks) - 1)

    def y_of(v, y0):
        return y0 + PANEL_H - (math.log10(v) - log_lo) / (log_hi - log_lo) * PANEL_H

    unsupported = OrderedDict()
    for gi, (executor, mode) in enumerate(groups):
        y0 = TOP + gi * (PANEL_H + GAP_Y) + 16
        for si, size in enumerate(sizes):
            x0 = LEFT + si * (PANEL_W + GAP_X)
            out.append(
                f'<text x="{x0 + PANEL_W / 2}" y="{y0 - 6}" text-anchor="middle" '
                f'font-weight="bold">{executor} · {MODE_TEXT.get(mode, mode)} · pool '
                f"size {size}</text>"
            )
            out.append(
                f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" '
                f'fill="#fafafa" stroke="#999"/>'
            )
            for tick in nice_ticks(lo, hi):
                y = y_of(tick, y0)
                major = math.log10(tick).is_integer()
                out.append(
                    f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{"#ccc" if major else "#e8e8e8"}"/>'
                )
                if si == 0:
                    out.append(
                        f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" '
                        f'fill="#333">{fmt_ns(tick)}</text>'
                    )
            for t in tasks:
                out.append(
                    f'<text x="{x_of(t, x0):.1f}" y="{y0 + PANEL_H + 14}" '
                    f'text-anchor="middle" fill="#333">{t}</text>'
                )
            out.append(
                f'<text x="{x0 + PANEL_W / 2}" y="{y0 + PANEL_H + 28}" '
                f'text-anchor="middle" fill="#555">tasks</text>'
            )
            for c in contenders:
                colour, stroke, dash = STYLE[c]
                cells = [
                    r
                    for r in rows
                    if (r["executor"], r["mode"], int(r["pool_size"]), r["contender"])
                    == (executor, mode, size, c)
                ]
                cells.sort(key=lambda r: int(r["tasks"]))
                points = []
                for r in cells:
                    x = x_of(int(r["tasks"]), x0)
                    if r["status"] == "ok" and r["median_ns"]:
                        points.append((x, y_of(float(r["median_ns"]), y0)))
                        continue
                    # A run that did not finish ends the line; the points before it keep
                    # their markers.
                    out.extend(line_and_markers(points, colour, stroke, dash))
                    points = []
                    if r["status"] in ("hang", "slow", "panic"):
                        out.append(cross(x, y0 + 6, colour, r["status"].upper(), c))
                    elif r["status"] == "unsupported":
                        unsupported.setdefault((c, executor), r["note"])
                out.extend(line_and_markers(points, colour, stroke, dash))

    # Legend.
    y = TOP + len(groups) * (PANEL_H + GAP_Y) + 10
    x = LEFT
    for c in contenders:
        colour, stroke, dash = STYLE[c]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{x}" x2="{x + 24}" y1="{y}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{stroke}"{dash_attr}/>'
        )
        out.append(f'<text x="{x + 30}" y="{y + 4}">{escape(c)}</text>')
        x += 40 + 7 * len(c) + 22
    notes = [
        "× on a panel's top edge: HANG (no get+drop completed for the hang limit), "
        "SLOW (still going at the total limit) or PANIC"
    ]
    notes += [
        f"{c} does not run on {e} (it panics; see the CSV's note column)"
        for (c, e) in unsupported
    ]
    for i, note in enumerate(notes):
        out.append(f'<text x="{LEFT}" y="{y + 22 + 15 * i}" fill="#555">{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def line_and_markers(points, colour, stroke, dash):
    """The SVG elements of one run of finished cells: a line through two or more, and a
    marker on each."""
    out = []
    if len(points) > 1:
        out.append(polyline(points, colour, stroke, dash))
    for x, y in points:
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{stroke + 0.6:.1f}" fill="{colour}"/>'
        )
    return out


def polyline(points, colour, stroke, dash):
    dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<polyline points="{coords}" fill="none" stroke="{colour}" '
        f'stroke-width="{stroke}"{dash_attr}/>'
    )


def cross(x, y, colour, label, contender):
    d = 4.5
    return (
        f'<g stroke="{colour}" stroke-width="2"><title>{escape(contender)}: {label}</title>'
        f'<line x1="{x - d:.1f}" y1="{y - d:.1f}" x2="{x + d:.1f}" y2="{y + d:.1f}"/>'
        f'<line x1="{x - d:.1f}" y1="{y + d:.1f}" x2="{x + d:.1f}" y2="{y - d:.1f}"/></g>'
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="src", default=os.path.join(HERE, "results", "grid.csv"))
    parser.add_argument("--out", default=None, help="default: grid.svg beside the input")
    parser.add_argument(
        "--title", default="connection-pool and peers: get+drop, and get, yield, drop (hold)"
    )
    args = parser.parse_args()
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.src)), "grid.svg")
    svg = render(load(args.src), args.title)
    with open(out, "w") as f:
        f.write(svg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
