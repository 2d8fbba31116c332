"""A report as a list of blocks, written out twice: Markdown (PNG files beside it) and one self-contained HTML.

Table cells arrive typed (reports.cells): here, at the edge, they become text, and a number is right-aligned
because it is a `Number`, not because its text parses as one.

The HTML embeds every image as a base64 data URI and carries its CSS inline, so the file can be mailed, attached
to a CI run or opened offline, and references nothing outside itself.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from reports.cells import Cell, Number, cell_text


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    note: bool = False


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass(frozen=True)
class Image:
    path: Path
    title: str
    caption: str


Block = Heading | Para | Table | Image

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.88em;color:#555}.note{color:#8a5a00;background:#fff8e6;padding:.3em .6em;border-left:3px solid #e0a000}
caption{caption-side:top;text-align:left;font-weight:600;padding:.2em 0}
"""


def _md_cell(cell: Cell) -> str:
    return cell_text(cell).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block], image_dir: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(f"> {b.text}\n" if b.note else f"{b.text}\n")
        elif isinstance(b, Table):
            if b.caption:
                out.append(f"**{b.caption}**\n")
            out.append(markdown_table(b.headers, b.rows))
        elif isinstance(b, Image):
            rel = b.path.relative_to(image_dir) if b.path.is_relative_to(image_dir) else b.path
            out.append(f"![{b.title}]({rel.as_posix()})\n\n*{b.caption}*\n")
    return "\n".join(out)


def markdown_table(headers: list[str], rows: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _html_cell(cell: Cell) -> str:
    text = html.escape(cell_text(cell))
    return f'<td class="num">{text}</td>' if isinstance(cell, Number) else f"<td>{text}</td>"


def to_html(blocks: list[Block], title: str) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 2), 6)
            body.append(f"<h{level}>{esc(b.text)}</h{level}>")
        elif isinstance(b, Para):
            body.append(f'<p class="note">{esc(b.text)}</p>' if b.note else f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Table):
            cap = f"<caption>{esc(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{esc(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in b.rows)
            body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(b.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(b.caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
