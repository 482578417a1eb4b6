"""Reading and writing the user's files: one-line :class:`~xpusim.errors.SpecError` instead of a
traceback when a path cannot be read or written, is a directory, or is not UTF-8 text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file the user should give instead (e.g.
    ``"a device YAML"``)."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{p} is a directory; give {what}")
    try:
        return p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a UTF-8 text file; give {what}") from None


def check_writable(path: str | Path, flag: str) -> None:
    """Refuse an output path before any work is done: a directory, or a file in a folder that exists
    and cannot be written (a missing folder is created when writing)."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{flag} {p}: is a directory; give a file path")
    if p.exists() and not os.access(p, os.W_OK):
        raise SpecError(f"{flag} {p}: cannot be written (permission denied)")
    parent = next((q for q in (p.parent, *p.parent.parents) if q.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise SpecError(f"{flag} {p}: cannot create it in {parent}")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, creating its folder; the path written."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot write {p}: {e.strerror}") from None
    return p


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping key given twice (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # the base class refuses an unhashable key (a YAMLError: one line)
            if key in seen:
                raise SpecError(f"key {key!r} given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, path: str | Path) -> Any:
    """Parse YAML ``text`` read from ``path``: one-line errors for malformed YAML and repeated keys."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"{path}: malformed YAML ({first}); fix the syntax") from None
