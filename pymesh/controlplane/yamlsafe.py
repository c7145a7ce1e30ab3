"""Configuration YAML read the way the Kubernetes API server reads it: bounded.

A YAML document is a graph, not a tree: an alias (``*a``) names a node
again, so nine lines of nine aliases each stand for 9^9 (387 million)
values. PyYAML shares the aliased Python objects, which keeps the load
small, but every later walk (validation, ``json.dumps`` of the store's
mirror, ``copy.deepcopy``) expands them: a 709-byte file took the control
plane past 5 GB and stalled its only event loop. The API server's decoder
(sigs.k8s.io/yaml over go-yaml, ``goyaml.v2/decode.go`` ``allowedAliasRatio``,
CVE-2019-11253) counts every node it decodes and the ones reached through an
alias, and refuses a document once more than 100 of more than 1,000 decoded
nodes came from aliases and their share exceeds a ratio that falls from 99 %
(up to 400,000 nodes) to 10 % (from 4,000,000): "document contains excessive
aliasing". :func:`units` walks the composed node graph with the same budget
*before* anything is constructed, and stops at the first node over it.

The same walk rejects what JSON (the API server's model) cannot hold or the
API server refuses: duplicate mapping keys (``kubectl apply``'s strict
decoding: "key already set in map"; PyYAML silently keeps the last one),
non-scalar keys, recursive structures (go-yaml: "anchor value contains
itself"), tags other than JSON's (``!!binary``, ``!!set``...), and nesting
deeper than :attr:`Limits.max_depth` (libyaml itself stops at 1,000).
Unquoted timestamps stay strings, as they are in JSON.

Sizes: a file larger than :attr:`Limits.max_file_bytes` is not read at all,
and an object (a document, or an item of a ``kind: List``) whose text is
larger than :attr:`Limits.max_object_bytes` is rejected: etcd, where the API
server stores objects, refuses requests above 1.5 MiB by default
(``--max-request-bytes``).

Everything here is pure computation on a string: the control plane runs it on
a worker thread, never on its event loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# go-yaml's constants (goyaml.v2/decode.go, goyaml.v3/decode.go): 400,000 decode operations
# is ~500 KB of dense object declarations, or ~5 KB with 10,000 % alias expansion.
ALIAS_RATIO_RANGE_LOW = 400_000
ALIAS_RATIO_RANGE_HIGH = 4_000_000
MIB = 1 << 20

_YAML = "tag:yaml.org,2002:"
MERGE_TAG = _YAML + "merge"
# What JSON can hold (timestamps are kept as their text, below).
JSON_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp"))


@dataclass(frozen=True)
class Limits:
    """Bounds on configuration input (``ControlPlane(limits=...)``)."""

    max_file_bytes: int = 16 * MIB
    # etcd's default --max-request-bytes: no Kubernetes object can be larger.
    max_object_bytes: int = 3 * MIB // 2
    # Deeper than any Istio or core/v1 schema (a probe is 5 levels), and far below Python's
    # recursion limit, which json.dumps and copy.deepcopy of the document must stay under.
    max_depth: int = 100


DEFAULT_LIMITS = Limits()


def allowed_alias_ratio(decoded: int) -> float:
    """go-yaml's ``allowedAliasRatio``: the share of decoded nodes that may come from aliases."""
    if decoded <= ALIAS_RATIO_RANGE_LOW:
        return 0.99
    if decoded >= ALIAS_RATIO_RANGE_HIGH:
        return 0.10
    span = ALIAS_RATIO_RANGE_HIGH - ALIAS_RATIO_RANGE_LOW
    return 0.99 - 0.89 * (decoded - ALIAS_RATIO_RANGE_LOW) / span


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """libyaml's safe loader (~10x the pure-Python one) with timestamps kept as text."""


_Loader.add_constructor(_YAML + "timestamp", yaml.SafeLoader.construct_yaml_str)


@dataclass(frozen=True)
class Problem:
    message: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Unit:
    """One object's worth of YAML: a document, or one item of a ``kind: List``.
    ``index`` counts units in the file (0-based); exactly one of ``value`` and
    ``problem`` is meaningful."""

    index: int
    value: Any
    problem: Problem | None
    line: int


class YamlSyntaxError(Exception):
    """The file is not YAML; nothing in it can be trusted (``str(e)`` says where)."""


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def inspect(root: Node, limits: Limits = DEFAULT_LIMITS, *, budget: bool = True, keys: bool = True) -> Problem | None:
    """The first reason to refuse the node graph under ``root``, or None.

    A depth-first walk in document order over the graph *as the decoder would
    expand it*: the first visit of a node is its definition, a later visit is
    an alias and everything below it counts as alias-driven. Iterative (a
    stack, no recursion) and stopped at the first problem, so a bomb costs a
    few thousand steps, not its expansion."""
    seen: set[int] = set()
    open_: set[int] = set()  # nodes whose subtree is being walked: reaching one again is a cycle
    decoded = aliased = 0
    # (node, depth, inside an alias); depth -1 marks the end of a node's subtree.
    stack: list[tuple[Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, in_alias = stack.pop()
        nid = id(node)
        if depth < 0:
            open_.discard(nid)
            continue
        if nid in open_:
            return Problem("an alias refers to a node that contains it (a recursive structure)", _line(node))
        is_alias = nid in seen
        seen.add(nid)
        in_alias = in_alias or is_alias
        decoded += 1
        if in_alias:
            aliased += 1
        if budget and aliased > 100 and decoded > 1000 and aliased / decoded > allowed_alias_ratio(decoded):
            return Problem(
                f"document contains excessive aliasing ({aliased} of the first {decoded} nodes come from "
                "aliases; refused as the Kubernetes API server refuses it)",
                _line(node),
            )
        if depth > limits.max_depth:
            return Problem(f"nested deeper than {limits.max_depth} levels", _line(node))
        if node.tag not in JSON_TAGS:
            return Problem(
                f"tag {node.tag!r} is not supported (configuration is JSON: maps, lists and scalars)", _line(node)
            )
        if isinstance(node, ScalarNode):
            continue
        stack.append((node, -1, False))
        open_.add(nid)
        if isinstance(node, MappingNode):
            if keys and not in_alias:
                problem = _duplicate_key(node)
                if problem is not None:
                    return problem
            for key, value in reversed(node.value):
                stack.append((value, depth + 1, in_alias))
                stack.append((key, depth + 1, in_alias))
        elif isinstance(node, SequenceNode):
            for item in reversed(node.value):
                stack.append((item, depth + 1, in_alias))
    return None


def _duplicate_key(node: MappingNode) -> Problem | None:
    first: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode):
            return Problem("a mapping key must be a string, not a list or a mapping", _line(key))
        if key.tag == MERGE_TAG:
            continue  # "<<": merged keys may be overridden, that is what a merge is for
        text = str(key.value)
        if text in first:
            return Problem(f"duplicate key {text!r} (first at line {first[text]})", _line(key))
        first[text] = _line(key)
    return None


def _list_items(root: Node) -> SequenceNode | None:
    """The ``items`` node of a ``kind: List`` document, else None."""
    if not isinstance(root, MappingNode):
        return None
    fields = {k.value: v for k, v in root.value if isinstance(k, ScalarNode)}
    kind, items = fields.get("kind"), fields.get("items")
    if isinstance(kind, ScalarNode) and kind.value == "List" and isinstance(items, SequenceNode):
        return items
    return None


def _size(node: Node) -> int:
    return int(node.end_mark.index) - int(node.start_mark.index)


def units(text: str, limits: Limits = DEFAULT_LIMITS) -> Iterator[Unit]:
    """The objects of one YAML text, one document (or ``List`` item) at a time;
    raises :class:`YamlSyntaxError` when the text does not parse (a caller that
    must reject the whole file collects the units first)."""
    loader = _Loader(text)
    index = 0
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                root = loader.get_node()
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise YamlSyntaxError(f"{at}{problem}") from None
            if root is None:
                continue
            items = _list_items(root)
            # The alias budget is the document's, as go-yaml's; key checks are per object, so one
            # bad item of a List does not reject its neighbours.
            whole = inspect(root, limits, keys=items is None)
            if whole is not None:
                items = None
            for node in items.value if items is not None else [root]:
                problem = whole
                if problem is None and _size(node) > limits.max_object_bytes:
                    problem = Problem(
                        f"object is {_size(node)} bytes, more than the {limits.max_object_bytes}-byte limit",
                        _line(node),
                    )
                if problem is None and items is not None:
                    problem = inspect(node, limits, budget=False)
                value = None
                if problem is None:
                    try:
                        value = loader.construct_document(node)
                    except yaml.YAMLError as e:
                        problem = Problem(str(getattr(e, "problem", None) or e).splitlines()[0], _line(node))
                if value is None and problem is None:
                    continue  # an empty document
                yield Unit(index, value, problem, _line(node))
                index += 1
    finally:
        loader.dispose()
