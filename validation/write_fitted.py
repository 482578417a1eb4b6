"""Write a fitted value into the file that carries it (a preset or a model module): replace the one
line matching ``pattern`` with ``line``; refuse when there is not exactly one such line."""

from __future__ import annotations

import re
from pathlib import Path


def write_line(path: Path, pattern: str, line: str, what: str) -> None:
    """Replace the single line of ``path`` matching the regular expression ``pattern`` (whole line)."""
    text = path.read_text()
    new, count = re.subn(f"(?m)^{pattern}$", lambda _m: line, text)
    if count != 1:
        raise SystemExit(f"{path}: expected exactly one {what} line, found {count}")
    path.write_text(new)
    print(f"wrote {path}")
