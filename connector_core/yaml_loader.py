"""The project file's YAML: read as UTF-8, built in one streaming pass, hostile input refused with its line.

:func:`load_yaml` reads the events of PyYAML's parser (libyaml's when PyYAML has it) and builds the plain data
(dicts, lists, scalars) directly, without PyYAML's node tree (~400 bytes of memory per node of the file).
On the way it refuses, each with one :class:`YamlProblem` naming the line and the key path:

* nesting deeper than :data:`MAX_DEPTH` levels (also through an alias);
* aliases that expand the document beyond one node per byte of the file (at least :data:`MIN_EXPANDED_NODES`):
  an alias is shared, not copied, while loading, but everything after loading (validation, ``stats``, Dagster)
  walks the expanded document, so a "billion laughs" must stop here; an alias that points into the collection
  holding it (a recursive document) is an alias of nothing yet, and refused too;
* a key given twice in one mapping (the second would silently replace the first), naming both lines;
* YAML tags other than the standard scalar ones (``!!set``, ``!!omap``, custom ``!Tag``...).

Merge keys (``<<: *defaults``) work as in PyYAML's safe loader. Line numbers of every key path are only collected
(:func:`line_index`, a second pass) when a file already failed validation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

#: Collections inside collections: at most this many levels (a project file needs about 12).
MAX_DEPTH = 100
#: Aliases may expand a document to one node per byte of the file, and at least to this many nodes.
MIN_EXPANDED_NODES = 100_000

KeyPath = tuple[Any, ...]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_COLLECTION_TAGS = {MappingStartEvent: "tag:yaml.org,2002:map", SequenceStartEvent: "tag:yaml.org,2002:seq"}
_SCALAR_CONSTRUCTORS = {
    tag: constructor
    for tag, constructor in yaml.SafeLoader.yaml_constructors.items()
    if tag is not None and tag.rsplit(":", 1)[-1] in {"null", "bool", "int", "float", "binary", "timestamp", "str"}
}


class YamlProblem(ValueError):
    """What is wrong with a project file's text; the caller names the file."""


def key_path(location: KeyPath) -> str:
    """``('pipelines', 'example', 'tables', 'price', 'connectors', 1, 'x')`` -> ``pipelines.example...[1].x``."""
    text = ""
    for part in location:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def read_text(path: Path) -> str:
    """The file's text; a file that cannot be read or is not UTF-8 is a :class:`YamlProblem` saying where."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlProblem(f"cannot be read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlProblem(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line}, column "
            f"{exc.start - line_start + 1}) is not valid UTF-8; save the file as UTF-8"
        ) from None


def load_yaml(text: str) -> Any:
    """The data of a one-document YAML text (``None`` when empty), with the limits of this module.

    Raises :class:`YamlProblem` for the refusals above and for YAML that does not parse.
    """
    return _Builder(text, None).run()


def line_index(text: str, wanted: Iterable[KeyPath] | None = None) -> dict[KeyPath, int]:
    """Key paths of a YAML text -> their 1-based line (the key's line for mapping entries): the ``wanted`` paths
    and their prefixes, else every path; what parsed before a problem when the text has one. Aliases are not
    followed: paths inside one fall back to a prefix (the alias's line)."""
    lines: dict[KeyPath, int] = {}
    builder = _Builder(text, lines)
    if wanted is not None:
        builder.wanted = {location[:end] for location in wanted for end in range(len(location) + 1)}
    try:
        builder.run()
    except YamlProblem:
        pass
    return lines


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building millions of young objects made its passes cost quadratic
    time (a 1 MB file took 2.2 s instead of 0.4 s). Reference counting still frees what is dropped meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("anchor", "depth", "items", "key", "line", "merges", "nodes_before", "path", "peak")

    def __init__(self, items: dict[Any, Any] | list[Any], anchor: str | None, line: int, depth: int) -> None:
        self.items = items
        self.anchor = anchor
        self.line = line
        self.depth = depth  # 1 for the top level
        self.peak = depth  # the deepest level inside it so far
        self.nodes_before = 0  # nodes of the expanded document before it: its size is the difference at its end
        self.key: Any = _NO_KEY  # a mapping's key waiting for its value
        self.merges: list[dict[Any, Any]] = []
        self.path: KeyPath | None = None  # only kept while collecting lines, on the paths wanted

    def position(self) -> tuple[Any, ...]:
        """The key path step of the child being built: a mapping's waiting key, a sequence's next index."""
        if isinstance(self.items, list):
            return (len(self.items),)
        return () if self.key is _NO_KEY or self.key is _MERGE_KEY else (self.key,)


_NO_KEY = object()
_MERGE_KEY = object()


class _Builder:
    """One pass over the parser's events; ``lines`` (when given) collects the line of the ``wanted`` key paths (of
    every key path when ``wanted`` is None)."""

    def __init__(self, text: str, lines: dict[KeyPath, int] | None) -> None:
        self.text = text
        self.lines = lines
        self.wanted: set[KeyPath] | None = None
        self.limit = max(MIN_EXPANDED_NODES, len(text))
        self.nodes = 0  # of the expanded document so far
        self.anchors: dict[str, tuple[Any, int, int, int]] = {}  # name -> (value, nodes, levels, line)
        self.stack: list[_Frame] = []
        self.plain_tags: dict[str, str] = {}

    def run(self) -> Any:
        loader = _LOADER(self.text)
        try:
            with paused_gc():
                return self._events(loader)
        except yaml.MarkedYAMLError as exc:
            if exc.problem == "exceeded maximum nesting depth" and exc.problem_mark:  # libyaml's, at 1,000 levels
                raise YamlProblem(self.nested_too_deep(exc.problem_mark.line + 1)) from None
            raise YamlProblem(f"not valid YAML: {exc}") from None
        except yaml.YAMLError as exc:
            raise YamlProblem(f"not valid YAML: {exc}") from None
        finally:
            loader.dispose()

    def path(self, *last: Any) -> KeyPath:
        """The key path of the node being built."""
        return tuple(step for frame in self.stack for step in frame.position()) + last

    def where(self, line: int, *last: Any) -> str:
        """``key.path (line N)`` of the node being built (the middle of a very long path left out)."""
        path = self.path(*last)
        shown = key_path(path) if len(path) <= 24 else f"{key_path(path[:20])}...{key_path(path[-2:])}"
        return f"{shown or '(top level)'} (line {line})"

    def nested_too_deep(self, line: int) -> str:
        return f"{self.where(line)}: nested deeper than {MAX_DEPTH} levels; a project file needs ~12"

    def _events(self, loader: Any) -> Any:
        get_event = loader.get_event
        resolved_by_first_char = loader.yaml_implicit_resolvers  # plain scalars starting otherwise are text
        wildcard = None in resolved_by_first_char
        stack = self.stack
        root: Any = None
        documents = 0
        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                value = event.value
                if event.tag is not None or (
                    event.implicit[0] and (wildcard or not value or value[0] in resolved_by_first_char)
                ):
                    value = self._scalar(loader, event)
                self.nodes += 1
                if event.anchor is not None:
                    self._anchor(event.anchor, value, 1, 0, event.start_mark.line + 1)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                self._open(event, kind)
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                value = self._close(stack.pop())
            elif kind is AliasEvent:
                value = self._alias(event.anchor, event.start_mark.line + 1)
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    line = event.start_mark.line + 1
                    raise YamlProblem(f"line {line}: a second YAML document ('---'); a project file holds one")
                continue
            elif kind is StreamEndEvent:
                return root
            else:
                continue
            if not stack:
                root = value
                continue
            frame = stack[-1]
            items = frame.items
            if self.lines is not None or frame.merges or frame.key is _MERGE_KEY:
                self._add(frame, value, event.start_mark.line + 1)
            elif type(items) is list:
                items.append(value)
            elif frame.key is _NO_KEY:
                self._key(frame, value, event.start_mark.line + 1)
            else:
                items[frame.key] = value
                frame.key = _NO_KEY

    def _scalar(self, loader: Any, event: ScalarEvent) -> Any:
        tag = event.tag
        if tag is None and event.implicit[0]:  # a plain scalar: its tag depends on its text only
            tag = self.plain_tags.get(event.value)
            if tag is None:
                tag = self.plain_tags[event.value] = loader.resolve(ScalarNode, event.value, event.implicit)
        elif tag is None or tag == "!":
            tag = loader.resolve(ScalarNode, event.value, event.implicit)
        if tag == _STR:
            return event.value
        if tag == _MERGE:  # '<<': a merge key where a key is expected, else the text
            top = self.stack[-1] if self.stack else None
            at_key = top is not None and isinstance(top.items, dict) and top.key is _NO_KEY
            return _MERGE_KEY if at_key else event.value
        constructor = _SCALAR_CONSTRUCTORS.get(tag)
        if constructor is None:
            raise YamlProblem(f"{self.where(event.start_mark.line + 1)}: the YAML tag {tag} is not supported here")
        node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        return constructor(loader, node)

    def _open(self, event: Any, kind: type) -> None:
        line = event.start_mark.line + 1
        if event.tag not in (None, "!", _COLLECTION_TAGS[kind]):
            raise YamlProblem(f"{self.where(line)}: the YAML tag {event.tag} is not supported here")
        depth = len(self.stack) + 1
        if depth > MAX_DEPTH:
            raise YamlProblem(self.nested_too_deep(line))
        frame = _Frame({} if kind is MappingStartEvent else [], event.anchor, line, depth)
        frame.nodes_before = self.nodes
        self.nodes += 1
        if self.lines is not None:
            parent = self.stack[-1] if self.stack else None
            frame.path = () if parent is None else None if parent.path is None else parent.path + parent.position()
            self._record(frame, (), line)
        self.stack.append(frame)

    def _close(self, frame: _Frame) -> Any:
        if self.stack and frame.peak > self.stack[-1].peak:
            self.stack[-1].peak = frame.peak
        value = frame.items
        if frame.merges:
            value = {}
            for mapping in reversed(frame.merges):  # the first merged mapping wins, its own keys win over all
                value.update(mapping)
            value.update(frame.items)
        if frame.anchor is not None:
            size, levels = self.nodes - frame.nodes_before, frame.peak - frame.depth + 1
            self._anchor(frame.anchor, value, size, levels, frame.line)
        return value

    def _anchor(self, name: str, value: Any, size: int, levels: int, line: int) -> None:
        if name in self.anchors:
            first = self.anchors[name][3]
            raise YamlProblem(f"line {line}: the anchor &{name} is defined twice (first on line {first}); rename one")
        self.anchors[name] = (value, size, levels, line)

    def _alias(self, name: str, line: int) -> Any:
        if name not in self.anchors:
            raise YamlProblem(
                f"{self.where(line)}: alias *{name} refers to no anchor before it; an alias must follow its "
                "anchor and cannot point into the collection that holds it"
            )
        value, size, levels, _ = self.anchors[name]
        depth = len(self.stack) + levels
        if depth > MAX_DEPTH:
            raise YamlProblem(
                f"{self.where(line)}: alias *{name} nests the document deeper than {MAX_DEPTH} levels; a project "
                "file needs ~12"
            )
        if self.stack and depth > self.stack[-1].peak:
            self.stack[-1].peak = depth
        self.nodes += size
        if self.nodes > self.limit:
            raise YamlProblem(
                f"{self.where(line)}: alias *{name} expands the document to more than {self.limit:,} nodes (aliases "
                f"may expand it to one node per byte of the file, or {MIN_EXPANDED_NODES:,}); write the repeated "
                "part out or use fewer aliases"
            )
        return value

    def _add(self, frame: _Frame, value: Any, line: int) -> None:
        """Add ``value`` to ``frame`` (the general case, also collecting lines)."""
        items = frame.items
        if isinstance(items, list):
            if self.lines is not None:
                self._record(frame, (len(items),), line)
            items.append(value)
        elif frame.key is _NO_KEY:
            self._key(frame, value, line)
        elif frame.key is _MERGE_KEY:
            frame.key = _NO_KEY
            mappings = value if isinstance(value, list) else [value]
            if not all(isinstance(mapping, dict) for mapping in mappings):
                raise YamlProblem(f"{self.where(line)}: a merge key '<<' takes a mapping or a list of mappings")
            frame.merges.extend(mappings)
        else:
            items[frame.key] = value
            frame.key = _NO_KEY

    def _key(self, frame: _Frame, key: Any, line: int) -> None:
        try:
            repeated = key in frame.items
        except TypeError:
            raise YamlProblem(f"{self.where(line)}: a mapping key must be a scalar, not a collection") from None
        if repeated:
            path = self.path(key)
            first = (self.lines if self.lines is not None else line_index(self.text, [path])).get(path)
            raise YamlProblem(
                f"{key_path(path)} (lines {first} and {line}): the key {key!r} is given twice in one mapping; the "
                "second would replace the first: remove or rename one"
            )
        frame.key = key
        if self.lines is not None and key is not _MERGE_KEY:
            self._record(frame, (key,), line)

    def _record(self, frame: _Frame, step: tuple[Any, ...], line: int) -> None:
        """Note the line of ``frame``'s path + ``step``, when wanted; a frame off the wanted paths has no path."""
        if frame.path is None:
            return
        path = frame.path + step
        if self.wanted is None or path in self.wanted:
            self.lines.setdefault(path, line)  # type: ignore[union-attr]
        elif not step:
            frame.path = None
