"""YAML for stack files, read within bounds: a stack file is small, shallow and written by hand, so a file
that is not (a YAML alias bomb, thousands of nested brackets, a number too long for Python to convert, bytes
that are not UTF-8) is refused with a message naming the file and the setting, before anything walks it.

PyYAML's safe loader alone would expand aliases into structures of any size (the "billion laughs"), recurse
once per nesting level until Python's recursion limit, and raise ValueError on integers of more than 4,300
digits (Python 3.11's int/str conversion limit): each a traceback or a hang in whatever reads the result.
"""

from __future__ import annotations

from typing import Any, Final, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from plexcdn.setting_kinds import PLAIN_KEY, shown

# A stack file of a hundred POPs with every optional section is well under 100 KB.
MAX_BYTES: Final = 1024 * 1024
# The deepest setting is config > plex-cdn:library > viewers > [i] > swarmCidrs > [j].
MAX_DEPTH: Final = 32
# Every scalar, list and mapping counted once per place it appears, aliases expanded.
MAX_VALUES: Final = 20_000
MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class StackFileError(yaml.YAMLError):
    """A stack file beyond the bounds above, or with a key written twice; `setting` is where it was found."""

    def __init__(self, message: str, setting: str = "", line: int | None = None) -> None:
        self.message = message
        self.setting = setting
        self.line = line
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class HugeNumber:
    """An integer with more digits than Python converts: kept as its length, so a message can name it."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a number of {self.digits:,} digits"


def _setting(path: list[object]) -> str:
    """config > plex-cdn:transcode > slaves > 0 > host  ->  transcode.slaves[0].host"""
    text = ""
    for part in path[1:] if path[:1] == ["config"] else path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not PLAIN_KEY.fullmatch(name := str(part).removeprefix("plex-cdn:")):
            text += f"[{shown(name)}]"
        else:
            text += f".{name}" if text else name
    return text


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # The key or index of each node being composed, outermost first.
        self._path: list[object] = []
        # Nodes being composed, keys included: a mapping used as a key (`{{{...}: x}: x}`) nests without a path.
        self._depth = 0
        self._values = 0
        # (expanded size, depth) of each finished node, by id: nodes live as long as the document.
        self._measure: dict[int, tuple[int, int]] = {}

    def _where(self) -> str:
        # Past a few levels the path names nothing a reader would look for; the line number does.
        shown = _setting(self._path[:6])
        return shown + "..." if len(self._path) > 6 else shown

    def _fail(self, message: str, mark: Any) -> StackFileError:
        return StackFileError(message, self._where(), mark.line + 1 if mark is not None else None)

    def _next_event(self) -> yaml.Event:
        return cast(yaml.Event, self.peek_event())  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # PyYAML passes the key node as `index` for a mapping's values, the position for a sequence's items.
        if index is not None:
            self._path.append(index.value if isinstance(index, ScalarNode) else index)
        self._depth += 1
        try:
            if self.check_event(yaml.AliasEvent):
                self._check_alias(cast(yaml.AliasEvent, self._next_event()))
                return super().compose_node(parent, index)
            if max(len(self._path), self._depth - 1) > MAX_DEPTH:
                raise self._fail(f"nested more than {MAX_DEPTH} levels deep", self._next_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if index is not None:
                self._path.pop()
        if node is not None:
            self._finish(node)
        return node

    def _check_alias(self, event: yaml.AliasEvent) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML reports an undefined alias
        measured = self._measure.get(id(target))
        if measured is None:
            raise self._fail(f"the alias *{event.anchor} refers to a value that holds it", event.start_mark)
        size, depth = measured
        self._count(size, event.start_mark)
        if len(self._path) - 1 + depth > MAX_DEPTH:
            raise self._fail(f"nested more than {MAX_DEPTH} levels deep (through aliases)", event.start_mark)

    def _finish(self, node: Node) -> None:
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        measures = [self._measure[id(child)] for child in children]
        self._measure[id(node)] = (
            1 + sum(size for size, _ in measures),
            1 + max((depth for _, depth in measures), default=0),
        )
        self._count(1, node.start_mark)

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise self._fail(
                f"YAML aliases or sheer length make this document more than {MAX_VALUES:,} values; a stack file is "
                "far smaller: write the settings out without aliases",
                mark,
            )

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            if key_node.value in seen:
                raise StackFileError(
                    f"the key {shown(key_node.value)} is written twice in one mapping; Pulumi refuses that too",
                    line=key_node.start_mark.line + 1,
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: ScalarNode) -> int | HugeNumber:  # type: ignore[override]
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return HugeNumber(sum(character.isdigit() for character in node.value))


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def decode(data: bytes) -> str:
    """The file's text; StackFileError when it is too large or not UTF-8."""
    if len(data) > MAX_BYTES:
        raise StackFileError(f"is {len(data):,} bytes; a stack file is at most {MAX_BYTES:,}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise StackFileError("is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8", line=1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise StackFileError(
            f"is not UTF-8 text (byte 0x{data[error.start]:02x}); save it as UTF-8", line=line
        ) from None


def load(text: str) -> object:
    """One YAML document, within the bounds above; yaml.YAMLError (StackFileError for the bounds) otherwise."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
