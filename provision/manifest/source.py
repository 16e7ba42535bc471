"""The manifest's YAML: parsed with the line of every key kept, so a problem can say where it is.

`line_index` maps each field path (a tuple of keys and list indices) to its 1-based line; `format_path`
writes such a path as `models[1].fallbacks[0].engine`. Two YAML traps are reported here, before the
schema sees the data: a key written twice (YAML keeps the last one silently) and `1_8` read as 18.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import Problem


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

