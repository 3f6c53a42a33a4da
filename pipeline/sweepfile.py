"""Reading a sweep file: UTF-8 text, then YAML by PyYAML's safe loader, refusing what YAML accepts and a sweep file
never means (aliases that expand without bound, a key given twice in one mapping). ``ConfigError`` is the error
of every problem with a sweep file; ``pipeline.config`` validates what this reads.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from rnncore.data import not_a_file

from .space import show

__all__ = ["ConfigError", "MAX_YAML_VALUES", "parse_yaml", "read_text"]


class ConfigError(Exception):
    """A sweep file that cannot run. ``problems`` holds one ``key: rule, but got value; fix`` line each."""

    def __init__(self, problems: Sequence[str], source: str | os.PathLike | None = None) -> None:
        self.problems: list[str] = list(problems)
        self.source: str | None = os.fspath(source) if source is not None else None
        n, where = len(self.problems), f" in {self.source}" if self.source else ""
        super().__init__("\n".join([f"{n} problem{'s' if n != 1 else ''}{where}:", *(f"  - {p}" for p in self.problems)]))

    def __reduce__(self):  # keeps `problems` intact through pickling (Ray, multiprocessing)
        return (type(self), (self.problems, self.source))


def read_text(path: Path) -> str:
    """The sweep file's text (UTF-8), or a ConfigError that says why it cannot be read."""
    try:
        kind = not_a_file(path)  # (a FIFO nobody writes would block the read for ever)
        if kind is not None and kind != "a folder":
            raise ConfigError([f"{path}: is {kind}, but a sweep file is needed: a regular file, whose path the sweep "
                               "records for --resume; save the YAML to a file and pass that"])
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: sweep file not found; pass the path of a YAML file such as "
                           "sweeps/basic.yaml"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, but a sweep file is needed; pass e.g. sweeps/basic.yaml"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: sweep file is not readable; check its permissions"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: must be UTF-8 text, but got byte 0x{raw[e.start]:02x} at offset {e.start}; "
                           "re-save it as UTF-8"], path) from None


MAX_YAML_VALUES = 100_000  # what a sweep file's aliases (*name) may expand it to; a sweep file needs a few hundred


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """The sweep file's mapping, read by PyYAML's safe loader. Between composing and constructing, the node graph
    is checked for what YAML accepts and a sweep file never means: aliases that expand without bound (a "billion
    laughs" inside a valid key costs every later step that walks the value seconds and gigabytes), and a key
    given twice in one mapping (YAML keeps the last one, silently)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            problems = _alias_problems(node) or _duplicate_keys(node)
            if problems:
                raise ConfigError(problems, path)
        raw = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown position"
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise ConfigError([f"yaml: invalid YAML at {where}: {what}; fix the syntax there "
                           "(indentation, a missing ':' or an unclosed bracket or quote)"], path) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"yaml: invalid YAML: {e}; fix the syntax"], path) from None
    except RecursionError:
        raise ConfigError(["yaml: must nest at most a few hundred levels deep, but got deeper; a sweep file "
                           "needs three or four"], path) from None
    except ValueError as e:  # a value its type cannot hold: a date 2024-13-01, an integer of over 4300 digits
        raise ConfigError([f"yaml: every value must be readable as its type, but one is not ({str(e)[:200]}); "
                           "fix it, or quote it to make it text"], path) from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__} ({show(raw)})"
        raise ConfigError([f"(top level): must be a mapping of sweep keys (name:, data:, train:, ...), but got {got}; "
                           "start from sweeps/basic.yaml"], path)
    return raw


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _alias_problems(root: yaml.Node) -> list[str]:
    """A problem if aliases expand the document past MAX_YAML_VALUES values, or an alias sits inside its own
    anchor (it expands forever). Counted on the node graph, where an alias is the anchored node itself: each
    node is counted once, so the check costs what the file's size does."""
    sizes: dict[int, int] = {}  # id(node) -> values it expands to, itself included
    unique, inside = [0], set()  # nodes in the graph; nodes being counted (an alias to one of them is a loop)

    def size(node: yaml.Node) -> int | yaml.Node:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in inside:
            return node
        inside.add(id(node))
        unique[0] += 1
        total = 1
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        for child in children:
            n = size(child)
            if isinstance(n, yaml.Node):
                return n
            total += n
        inside.discard(id(node))
        sizes[id(node)] = total
        return total

    total = size(root)
    if isinstance(total, yaml.Node):
        return [f"yaml: an alias must not sit inside its own anchor, but the node at {_where(total)} contains an "
                "alias to itself, which expands forever; write the values out"]
    if total > max(MAX_YAML_VALUES, unique[0]):
        return [f"yaml: aliases (*name) may expand the file to at most {MAX_YAML_VALUES:,} values, but they expand it "
                f"to {total:,}; write the values out, or alias less"]
    return []


def _duplicate_keys(root: yaml.Node) -> list[str]:
    """``key: must appear once ...`` for each key given twice in one mapping, named by its dotted key, in the
    file's order (YAML's merge key ``<<`` may be overridden: that is what it is for)."""
    problems: list[tuple[int, str]] = []  # (line, problem)
    seen: set[int] = set()

    def walk(node: yaml.Node, key: str) -> None:
        if id(node) in seen:  # an alias: checked where it was anchored
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, f"{key}[{i}]")
        if not isinstance(node, yaml.MappingNode):
            return
        lines: dict[tuple[str, str], list[int]] = {}  # (tag, key) -> the lines it is given on
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else "?"
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                lines.setdefault((k.tag, name), []).append(k.start_mark.line + 1)
            walk(v, f"{key}.{name}" if key else name)
        for (_, name), at in lines.items():
            if len(at) > 1:
                dotted = (f"{key}.{name}" if key else name)[:200]
                problems.append((at[0], f"{dotted}: a key must appear once in its mapping, but it appears at lines "
                                        f"{', '.join(map(str, at[:-1]))} and {at[-1]}; YAML would keep only the "
                                        "last, so delete the others"))

    walk(root, "")
    return [text for _, text in sorted(problems)]
