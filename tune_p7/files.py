"""Files written so that no reader ever sees half of one, and YAML read with one-line errors.

    with atomic_path(out / "history.parquet") as temporary:
        frame.to_parquet(temporary, index=False)       # renamed onto the target on success
    write_json(out / "config.json", {...})

Every file tune_p7 writes goes through :func:`atomic_path`: the content is written to a
temporary file beside the target and renamed onto it, so a dashboard, a resumed sweep or
a second terminal reads either the old file or the new one, never a torn one, and a
failure or a kill leaves the old file as it was. Nothing here knows about the project.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

_unique = itertools.count()  # temporary names differ between threads of one process too


class UnreadableFile(ValueError):
    """A file that cannot be read or parsed; the message says why in a few words
    (e.g. "cannot be read (No such file or directory)"), for the caller's sentence."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` when the block ends
    normally, removed when it raises. The temporary name starts with a dot and keeps the
    target's suffix (matplotlib and numpy pick the format from it)."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}-{next(_unique)}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: str | Path, content) -> None:
    """``content`` as indented JSON (non-JSON values via str), atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(content, indent=2, default=str))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def read_yaml(path: str | Path):
    """The parsed YAML content of ``path``; raises UnreadableFile with the reason."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UnreadableFile(f"cannot be read ({error.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise UnreadableFile(f"is not valid YAML ({problem}{where})") from None
