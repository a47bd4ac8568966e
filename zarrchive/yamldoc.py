"""Reading YAML that people write (``submission.yaml``, configurations, consortium files): plain data only.

YAML can say much more than a submission needs, and some of it is dangerous or
silently wrong: an alias chain expands exponentially (a "billion laughs" file a
few hundred bytes long keeps a parser busy for ever), a key given twice keeps
only its last value (a licence silently changed), merge keys and tags make the
data depend on the parser. This loader accepts the plain subset: mappings,
lists and scalars, one document, every key once, no anchors, aliases, merge
keys or tags. Everything else is refused with the line it is on.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

MERGE = "tag:yaml.org,2002:merge"


class YAMLRefused(ValueError):
    """The text is not plain YAML data (or not YAML at all): the message says where and why."""


def _where(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return f"line {mark.line + 1}" if hasattr(mark, "line") else "the document"


class PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without anchors, aliases, merge keys, explicit tags and duplicate keys, and with a
    bound on nesting."""

    max_depth = 64

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise YAMLRefused(f"{_where(event)}: an alias (*{event.anchor}) is not accepted: write the value out")
        if getattr(event, "anchor", None) is not None:
            raise YAMLRefused(f"{_where(event)}: an anchor (&{event.anchor}) is not accepted: write values out")
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            raise YAMLRefused(f"{_where(event)}: the tag {tag} is not accepted: write plain values")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise YAMLRefused(f"{_where(event)}: nested more than {self.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == MERGE:
                raise YAMLRefused(f"{_where(key_node)}: a merge key (<<) is not accepted: write the fields out")
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise YAMLRefused(f"{_where(key_node)}: a key must be a plain value, not a list or mapping") from None
            if first is not None:
                raise YAMLRefused(f"{_where(key_node)}: {key!r} is given twice (first on line {first}): give each "
                                  "field once")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load(text: str | bytes) -> Any:
    """The data of a YAML document written as plain data; ``YAMLRefused`` saying where and why otherwise."""
    loader = PlainLoader(text)
    try:
        node = loader.get_single_node()
        return loader.construct_document(node) if node is not None else None
    except YAMLRefused:
        raise
    except ComposerError as exc:
        if "another document" in str(exc):
            raise YAMLRefused(f"{_where(exc.problem_mark)}: a second document "
                              "(---) is not accepted: one document per file") from None
        raise YAMLRefused(f"not valid YAML: {exc}") from None
    except ConstructorError as exc:
        raise YAMLRefused(f"not plain YAML data: {exc}") from None
    except yaml.YAMLError as exc:
        raise YAMLRefused(f"not valid YAML: {exc}") from None
    except RecursionError:
        raise YAMLRefused(f"nested more than {PlainLoader.max_depth} levels deep") from None
    finally:
        loader.dispose()
