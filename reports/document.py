"""A report as a list of blocks, written out as Markdown and as one self-contained HTML file.

One document model feeds both formats, so report.md and report.html never say different things. Text
may hold `code` and **bold** spans; nothing else is interpreted. The HTML embeds every image as a data
URI and its style inline: it references no external resource.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str  # one of "l" / "r" per column


@dataclass(frozen=True)
class Image:
    path: str  # a PNG, relative to the report's folder
    title: str  # short: the alternative text
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Union[Heading, Paragraph, Bullets, Table, Image, Code]


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            cell = lambda text: text.replace("|", "\\|")  # noqa: E731
            rule = ["---:" if a == "r" else "---" for a in block.align]
            lines = [block.header, rule, *block.rows]
            parts.append("\n".join("| " + " | ".join(map(cell, line)) + " |" for line in lines))
        elif isinstance(block, Image):
            parts.append(f"![{block.title}]({block.path})\n\n{block.caption}")
        elif isinstance(block, Code):
            parts.append(f"```\n{block.text.rstrip()}\n```")
        else:
            raise TypeError(f"unknown block {block!r}")
    return "\n\n".join(parts) + "\n"


_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """Escaped text with its `code` and **bold** spans as HTML."""
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[last:match.start()]))
        code, bold = match.groups()
        out.append(f"<code>{html.escape(code)}</code>" if code is not None else f"<strong>{html.escape(bold)}</strong>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1rem 0;font-size:0.92rem}th,td{border:1px solid #ccc;padding:0.25rem 0.6rem}
th{background:#f0f0f0}td.r{text-align:right}figure{margin:1.5rem 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:0.92rem;color:#444;margin-top:0.4rem}code{background:#f4f4f4;padding:0 0.2rem}
pre{background:#f4f4f4;padding:0.8rem;overflow-x:auto;font-size:0.85rem}"""


def _image_html(block: Image, folder: Path) -> str:
    data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
    alt = html.escape(block.title, quote=True)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
            f"<figcaption>{_inline(block.caption)}</figcaption></figure>")


def to_html(blocks: list[Block], title: str, folder: Path) -> str:
    """One HTML file; `folder` is where the images' relative paths start."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f'<td class="{a}">{_inline(c)}</td>'
                                            for c, a in zip(row, block.align)) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            body.append(_image_html(block, folder))
        elif isinstance(block, Code):
            body.append(f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>")
        else:
            raise TypeError(f"unknown block {block!r}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>\n{_STYLE}\n</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
