"""report.html: report.md as one self-contained page, for MLflow's artifact viewer (which shows an HTML artifact
but not the images a Markdown file links to).

The plots are embedded as base64 PNG data URIs and nothing is loaded from elsewhere (no script, font or link).
The converter knows the Markdown that ``markdown.py`` writes, and no more: ``#`` headings, paragraphs with
``"  "`` line breaks, ``-`` lists with indented continuation lines, pipe tables with their alignment row,
fenced code blocks, and inline ``code``, ``**bold**`` and ``![alt](file.png)``. So that a wide leaderboard
fits the viewer, table headers wrap (also after ``_``) and an MLflow run id in a table cell is shown by its
first RUN_ID_CHARS characters, the whole id in its tooltip.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["RUN_ID_CHARS", "render_html"]

RUN_ID_CHARS = 8  # shown of a 32-hex MLflow run id in a table (the console summary shows 12)
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_FENCE = re.compile(r"^(`{3,})(\w*)$")
_INLINE = re.compile(r"(`+)(.+?)\1|!\[([^\]]*)\]\(([^)\s]+)\)|\*\*(.+?)\*\*")
STYLE = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 1.5em;
       max-width: 1200px; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d1d9e0; padding-bottom: .3em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d1d9e0; padding-bottom: .2em; margin-top: 1.6em; }
h3 { font-size: 1.1em; }
code, pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
code { background: #f0f2f4; padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: .8em 1em; border-radius: 6px; overflow-x: auto; }
pre code { background: none; padding: 0; }
.table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #d1d9e0; padding: .2em .4em; vertical-align: bottom; }
th { background: #f6f8fa; white-space: normal; max-width: 6em; }
td { white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
img { max-width: 100%; height: auto; border: 1px solid #d1d9e0; margin: .4em 0; }
li { margin: .4em 0; }
"""


def render_html(markdown: str, folder: str | Path) -> str:
    """The page for `markdown` (report.md's text); its images are read from `folder`."""
    body = "\n".join(_blocks(markdown.splitlines(), Path(folder)))
    m = re.search(r"^# (.+)$", markdown, re.M)
    title = html.escape(m.group(1) if m else "Sweep report")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _blocks(lines: list[str], folder: Path):
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif fence := _FENCE.match(line):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] == fence.group(1)), len(lines))
            lang = f' class="language-{fence.group(2)}"' if fence.group(2) else ""
            yield f"<pre><code{lang}>{html.escape(chr(10).join(lines[i + 1:end]))}</code></pre>"
            i = end + 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            n = len(m.group(1))
            yield f"<h{n}>{_inline(m.group(2), folder)}</h{n}>"
            i += 1
        elif line.startswith("|"):
            j = _until(lines, i, lambda s: s.startswith("|"))
            yield _table(lines[i:j], folder)
            i = j
        elif line.startswith("- "):
            items: list[list[str]] = []
            while i < len(lines) and (lines[i].startswith("- ") or (lines[i].startswith("  ") and items)):
                if lines[i].startswith("- "):
                    items.append([lines[i][2:]])
                else:
                    items[-1].append(lines[i].strip())
                i += 1
            yield "<ul>\n" + "\n".join(f"<li>{_lines(item, folder)}</li>" for item in items) + "\n</ul>"
        else:
            j = _until(lines, i, lambda s: bool(s.strip()) and not s.startswith(("#", "|", "- ", "```")))
            yield f"<p>{_lines(lines[i:j], folder)}</p>"
            i = j


def _until(lines: list[str], i: int, keep) -> int:
    j = i + 1
    while j < len(lines) and keep(lines[j]):
        j += 1
    return j


def _lines(lines: list[str], folder: Path) -> str:
    """Lines of one paragraph or list item: a line ending in two spaces breaks, others run on."""
    out = []
    for k, line in enumerate(lines):
        sep = "" if k == len(lines) - 1 else ("<br>\n" if line.endswith("  ") else "\n")
        out.append(_inline(line.strip(), folder) + sep)
    return "".join(out)


def _table(rows: list[str], folder: Path) -> str:
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip()[1:-1])] for r in rows]
    head, rule, body = cells[0], cells[1] if len(cells) > 1 else [], cells[2:]
    align = [' style="text-align:right"' if c.endswith(":") else "" for c in rule] + [""] * len(head)
    th = "".join(f"<th{a}>{_inline(h, folder).replace('_', '_<wbr>')}</th>" for h, a in zip(head, align))
    trs = ["<tr>" + "".join(f"<td{a}>{_cell(c, folder)}</td>" for c, a in zip(r, align)) + "</tr>" for r in body]
    return (f'<div class="table"><table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n' + "\n".join(trs)
            + "\n</tbody>\n</table></div>")


def _cell(text: str, folder: Path) -> str:
    if _RUN_ID.fullmatch(text):
        return f'<code title="{text}">{text[:RUN_ID_CHARS]}</code>'
    return _inline(text, folder)


def _inline(text: str, folder: Path) -> str:
    """Escaped text with `code`, **bold** and ![alt](file) (a PNG of the report folder, embedded)."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1):
            out.append(f"<code>{html.escape(m.group(2))}</code>")
        elif m.group(4):
            out.append(_image(m.group(3), m.group(4), folder))
        else:
            out.append(f"<strong>{_inline(m.group(5), folder)}</strong>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if "/" in src or not src.endswith(".png") or not path.is_file():  # never a link out of the page
        return f"<em>[{html.escape(alt)}: not found]</em>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
