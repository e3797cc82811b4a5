"""A tiny line-chart writer: PNG (zlib + struct, a 3x5 bitmap font) and SVG, no plotting library."""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from xml.sax.saxutils import escape

Point = tuple[float, float]
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111", "J": "001001001101010",
    "K": "101101110101101", "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101111011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    " ": "000000000000000", ".": "000000000000010", "-": "000000111000000", "/": "001001010100100",
    ":": "000010000010000", "%": "101001010100101", "(": "010100100100010", ")": "010001001001010",
    "<": "001010100010001", ">": "100010001010100", "=": "000111000111000", "_": "000000000000111",
    ",": "000000000010100", "+": "000010111010000",
}


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    # Up to the first tick at or above `high`, so the top point is never drawn off the chart.
    return [first + i * step for i in range(math.ceil((high - first) / step - 1e-9) + 1)]


def _label(value: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}" if value == int(value) else f"{value:.3g}"


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, colour: tuple[int, int, int], size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    offset = (py * self.width + px) * 3
                    self.pixels[offset:offset + 3] = bytes(colour)

    def line(self, x0: int, y0: int, x1: int, y1: int, colour: tuple[int, int, int], size: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:  # Bresenham
            self.dot(x0, y0, colour, size)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err, x0 = err + dy, x0 + sx
            if e2 <= dx:
                err, y0 = err + dx, y0 + sy

    def text(self, x: int, y: int, text: str, colour: tuple[int, int, int] = (0, 0, 0), scale: int = 2) -> None:
        for index, char in enumerate(text.upper()):
            glyph = _GLYPHS.get(char, _GLYPHS[" "])
            for bit, on in enumerate(glyph):
                if on == "1":
                    self.dot(x + index * 4 * scale + (bit % 3) * scale, y + (bit // 3) * scale, colour, scale)

    def png(self) -> bytes:
        rows = b"".join(b"\x00" + bytes(self.pixels[y * self.width * 3:(y + 1) * self.width * 3])
                        for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(
            b"IEND", b"")


def _frame(series: dict[str, Sequence[Point]], width: int, height: int, log_y: bool):  # type: ignore[no-untyped-def]
    points = [p for values in series.values() for p in values if p[1] is not None]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points if not log_y or p[1] > 0] or [1.0, 10.0]
    left, right, top, bottom = 80, width - 20, 40, height - 70
    x_ticks = _nice_ticks(min(xs), max(xs))
    if log_y:
        lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        hi = max(hi, lo + 1)
        y_ticks = [10.0 ** e for e in range(lo, hi + 1)]
        y_map = (lo, hi)
    else:
        y_ticks = _nice_ticks(min(0.0, min(ys)), max(ys))
        y_map = (y_ticks[0], y_ticks[-1])
    x_lo, x_hi = x_ticks[0], x_ticks[-1]

    def place(x: float, y: float) -> tuple[int, int]:
        fx = (x - x_lo) / ((x_hi - x_lo) or 1)
        value = math.log10(max(y, 1e-9)) if log_y else y
        fy = (value - y_map[0]) / ((y_map[1] - y_map[0]) or 1)
        return int(left + fx * (right - left)), int(bottom - fy * (bottom - top))

    return left, right, top, bottom, x_ticks, y_ticks, place


def line_chart_png(*, title: str, x_label: str, y_label: str, series: dict[str, Sequence[Point]],
                   log_y: bool = False, width: int = 900, height: int = 520) -> bytes:
    """Series of (x, y) points drawn as lines with markers, ticks, axis labels and a legend."""
    canvas = _Canvas(width, height)
    left, right, top, bottom, x_ticks, y_ticks, place = _frame(series, width, height, log_y)
    grey, black = (220, 220, 220), (0, 0, 0)
    for tick in y_ticks:
        _, y = place(x_ticks[0], tick)
        canvas.line(left, y, right, y, grey)
        canvas.text(left - 8 - 8 * len(_label(tick)), y - 5, _label(tick))
    for tick in x_ticks:
        x, _ = place(tick, y_ticks[0])
        canvas.line(x, top, x, bottom, grey)
        canvas.text(x - 4 * len(_label(tick)), bottom + 8, _label(tick))
    canvas.line(left, bottom, right, bottom, black)
    canvas.line(left, top, left, bottom, black)
    canvas.text(left, 12, title, scale=3)
    canvas.text((left + right) // 2 - 4 * len(x_label), bottom + 28, x_label)
    canvas.text(8, top - 20, y_label)
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        placed = [place(x, y) for x, y in values if y is not None and (not log_y or y > 0)]
        for (x0, y0), (x1, y1) in itertools.pairwise(placed):
            canvas.line(x0, y0, x1, y1, colour, size=2)
        for x, y in placed:
            canvas.dot(x - 3, y - 3, colour, size=7)
        legend_y = bottom + 46 if index < 3 else bottom + 60
        legend_x = left + (index % 3) * 260
        canvas.dot(legend_x, legend_y, colour, size=9)
        canvas.text(legend_x + 14, legend_y, name[:30])
    return canvas.png()


def line_chart_svg(*, title: str, x_label: str, y_label: str, series: dict[str, Sequence[Point]],
                   log_y: bool = False, width: int = 900, height: int = 520) -> str:
    """The same chart as SVG (sharper text, same layout)."""
    left, right, top, bottom, x_ticks, y_ticks, place = _frame(series, width, height, log_y)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif"'
           f' font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="24" font-size="16">{escape(title)}</text>']
    for tick in y_ticks:
        _, y = place(x_ticks[0], tick)
        out.append(f'<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{_label(tick)}</text>')
    for tick in x_ticks:
        x, _ = place(tick, y_ticks[0])
        out.append(f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#ddd"/>'
                   f'<text x="{x}" y="{bottom + 16}" text-anchor="middle">{_label(tick)}</text>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>'
               f'<text x="{(left + right) // 2}" y="{bottom + 36}" text-anchor="middle">{escape(x_label)}</text>'
               f'<text x="8" y="{top - 10}">{escape(y_label)}</text>')
    for index, (name, values) in enumerate(series.items()):
        r, g, b = COLOURS[index % len(COLOURS)]
        placed = [place(x, y) for x, y in values if y is not None and (not log_y or y > 0)]
        path = " ".join(f"{x},{y}" for x, y in placed)
        out.append(f'<polyline points="{path}" fill="none" stroke="rgb({r},{g},{b})" stroke-width="2"/>')
        out += [f'<circle cx="{x}" cy="{y}" r="3" fill="rgb({r},{g},{b})"/>' for x, y in placed]
        lx, ly = left + (index % 3) * 260, bottom + 54 + (index // 3) * 16
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="rgb({r},{g},{b})"/>'
                   f'<text x="{lx + 14}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
