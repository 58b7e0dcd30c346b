"""Progress lines for the long steps of a command (loading, checks, data tables).

    say = progress_printer()        # to stderr (inspect: stdout may be its JSON report)
    say("reading vectors.npz (1.54 GB)")   ->   [    0.0s] reading vectors.npz (1.54 GB)

Library functions take such a callable (default: silent), so only the commands print; train,
the sweep and confirm print to stdout beside their epoch lines, so stderr holds only errors.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

Progress = Callable[[str], None]


def silent(message: str) -> None:
    """The default Progress of library functions: says nothing."""


def progress_printer(stream: TextIO | None = None) -> Progress:
    """A Progress that prints each message with the seconds since this call, flushed."""
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=stream or sys.stderr,
              flush=True)

    return say
