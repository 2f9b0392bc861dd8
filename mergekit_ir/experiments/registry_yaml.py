"""Reading a registry's YAML safely: duplicate keys, alias bombs, bad bytes and syntax errors
are each one line naming the file (and line); validation of the content is ``registry``'s job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mergekit_ir.errors import ConfigError, short_repr

MAX_EXPANDED_NODES = 200_000
"""A registry expands to a few thousand YAML values; aliases past this are an alias bomb."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser when present: the paper's published cells make the file long."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: a mapping key must be a plain "
                f"name, not {type(key).__name__} {short_repr(key)}"
            ) from None
        if key in seen:
            raise ConfigError(
                f"{loader.name}:{key_node.start_mark.line + 1}: duplicate name {short_repr(key)} "
                f"(first defined on line {seen[key] + 1}); rename one of them"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _children(node: yaml.Node) -> list[tuple[str, yaml.Node]]:
    if isinstance(node, yaml.SequenceNode):
        return [(f"[{i}]", c) for i, c in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out = []
        for k, v in node.value:
            label = k.value if isinstance(k, yaml.ScalarNode) else "?"
            out += [(f".{short_repr(label, 40).strip(chr(39))}", v), ("(key)", k)]
        return out
    return []


def _expanded_sizes(root: yaml.Node, path: Path) -> dict[int, int]:
    """How many values each node stands for once every alias is expanded (memoised: linear)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            open_nodes.discard(nid)
            if isinstance(node, yaml.ScalarNode):
                sizes[nid] = 1 + len(node.value) // 100
            else:
                sizes[nid] = 1 + sum(sizes[id(c)] for _, c in _children(node))
            continue
        if nid in sizes:
            continue
        if nid in open_nodes:
            raise ConfigError(
                f"{path}:{node.start_mark.line + 1}: a YAML alias refers to the value that "
                "contains it (a recursive alias); write the value out instead"
            )
        open_nodes.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for _, c in _children(node) if id(c) not in sizes)
    return sizes


def _check_expansion(root: yaml.Node, path: Path) -> None:
    sizes = _expanded_sizes(root, path)
    if sizes[id(root)] <= MAX_EXPANDED_NODES:
        return
    refs: dict[int, int] = {}  # how often each node is used: > 1 for an alias target
    seen, todo = {id(root)}, [root]
    while todo:
        for _, c in _children(todo.pop()):
            refs[id(c)] = refs.get(id(c), 0) + 1
            if id(c) not in seen:
                seen.add(id(c))
                todo.append(c)
    where, node = "", root
    while True:  # descend to the value whose aliases multiply, not into the aliased values
        kids = _children(node)
        if not kids:
            break
        label, child = max(kids, key=lambda kid: sizes[id(kid[1])])
        if refs.get(id(child), 0) > 1 or (
            sizes[id(child)] <= MAX_EXPANDED_NODES and node is not root
        ):
            break
        where, node = where + label, child
    raise ConfigError(
        f"{path}:{node.start_mark.line + 1}: {where.lstrip('.') or 'the document'}: YAML aliases "
        f"expand to more than {MAX_EXPANDED_NODES} values (an alias bomb?); write the values out"
    )


def read_yaml(path: Path) -> Any:
    """Parse a registry file; every problem is one line naming the file (and line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: registry file not found; pass --registry FILE") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; pass the registry YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the registry ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None
    try:
        loader = _Loader(text)
        loader.name = str(path)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, path)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({exc.problem}); fix the syntax there") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ConfigError(
            f"{path}:{line}: character {_codepoint(exc.character)} is not allowed in YAML "
            "(a NUL or control character); remove it"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({short_repr(str(exc))}); fix the file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read; flatten the YAML") from None


def _codepoint(char: int | str) -> str:
    return f"U+{char if isinstance(char, int) else ord(char):04X}"
