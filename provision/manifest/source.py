"""The manifest's YAML: read within bounds, parsed with the line of every key kept, so a problem can say
where it is.

`read_yaml` refuses what would take the machine down before anything walks it: a file over MAX_BYTES
(`/dev/zero` included), nesting deeper than MAX_DEPTH, and aliases that expand to more than MAX_VALUES
values (a "billion laughs") or refer to themselves. `line_index` maps each field path (a tuple of keys and
list indices) to its 1-based line; `format_path` writes such a path as `models[1].fallbacks[0].engine`.
Two YAML traps are reported here, before the schema sees the data: a key written twice (YAML keeps the
last one silently) and `1_8` read as 18.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ManifestError, Problem

MAX_BYTES = 1 << 20  # a manifest is a few KiB
MAX_DEPTH = 32
MAX_VALUES = 20_000  # after alias expansion; a big manifest has a few hundred


def read_text(file: str) -> str:
    """The file's text, at most MAX_BYTES of it; ManifestError when it is larger, unreadable or not UTF-8."""
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(file, [Problem("", "file not found", hint="check the path")]) from None
    except OSError as exc:
        raise ManifestError(file, [Problem("", f"cannot read the file: {exc.strerror or exc}")]) from exc
    if len(data) > MAX_BYTES:
        raise ManifestError(file, [Problem("", f"the file is larger than {MAX_BYTES >> 20} MiB: not a manifest")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(file, [Problem("", f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from exc


def read_yaml(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """(the composed node tree, the data it constructs), within bounds; ManifestError otherwise."""
    if len(text) > MAX_BYTES:
        raise ManifestError(file, [Problem("", f"the text is larger than {MAX_BYTES >> 20} MiB: not a manifest")])
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            _check_size(root, file)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise ManifestError(file, [Problem("", f"the YAML is nested too deeply (more than {MAX_DEPTH} levels)")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        reason = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start and start.line + 1 != line:
            reason += f" ({context} that starts on line {start.line + 1})"  # e.g. an unclosed quote
        raise ManifestError(file, [Problem("", f"YAML syntax error: {reason}", line=line)]) from exc
    return root, data


def _check_size(root: yaml.Node | None, file: str) -> None:
    """Count the values the tree expands to (an alias counts its whole target again) without expanding it."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ManifestError(file, [Problem("", "a YAML alias refers to the value that holds it (a loop)",
                                               line=node.start_mark.line + 1)])
        if depth > MAX_DEPTH:
            raise ManifestError(file, [Problem("", f"the YAML is nested too deeply (more than {MAX_DEPTH} levels)",
                                               line=node.start_mark.line + 1)])
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(key, depth + 1) + size(value, depth + 1) for key, value in node.value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_VALUES:
            raise ManifestError(file, [Problem("", f"the YAML expands to more than {MAX_VALUES} values (through aliases?): "
                                               "not a manifest", line=node.start_mark.line + 1)])
        return total

    if root is not None:
        size(root, 0)


def type_word(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), type(value).__name__)


def line_index(node: yaml.Node | None, path: tuple = (), index: dict | None = None) -> dict[tuple, int]:
    """Map each field path (as a tuple of keys and list indices) to its 1-based line in the file."""
    index = {} if index is None else index
    if node is None:
        return index
    index.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[path + (key,)] = key_node.start_mark.line + 1
            line_index(value_node, path + (key,), index)
            index[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            line_index(item, path + (i,), index)
    return index


def line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def format_path(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def duplicate_keys(node: yaml.Node | None, path: tuple = ()) -> list[Problem]:
    """A key written twice in one mapping: YAML keeps the last silently; a manifest should not."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line:
                problems.append(Problem(format_path(path + (key,)), f"key `{key}` appears twice", line=line,
                                        hint=f"first on line {first_line[key]}; the last one would win silently"))
            first_line.setdefault(key, line)
            problems += duplicate_keys(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, path + (i,))
    return problems


def underscore_numbers(node: yaml.Node, path: tuple = ()) -> list[Problem]:
    """size_in_billions: 1_8 is Xinference's id for 1.8, but YAML 1.1 reads a plain 1_8 as 18 (0_5 as 5)."""
    if isinstance(node, yaml.MappingNode):
        return [p for key, value in node.value for p in underscore_numbers(value, path + (key.value,))]
    if isinstance(node, yaml.SequenceNode):
        return [p for i, item in enumerate(node.value) for p in underscore_numbers(item, path + (i,))]
    if path[-1:] == ("size_in_billions",) and node.tag == "tag:yaml.org,2002:int" and "_" in node.value:
        return [Problem(format_path(path), f"YAML reads {node.value} as the number {yaml.safe_load(node.value)}",
                        line=node.start_mark.line + 1, hint=f"write {node.value.replace('_', '.')} or quote it: '{node.value}'")]
    return []

