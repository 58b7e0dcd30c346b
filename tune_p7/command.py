"""How tune_p7's commands end: as Python ends a program, less its final teardown.

When a program's main function returns, Python joins the threads that are not daemons,
runs the exit handlers (Ray's shutdown, logging's flush, the trackers' own), flushes
standard output and error, and then tears the interpreter down: it frees every module
and object one by one. After a sweep that last part alone takes seconds on a 2-core
machine (1.5-3 s in one-off timings: torch, Ray, pandas, matplotlib and scikit-learn are
loaded) and writes nothing:
every file tune_p7 writes is closed before its command returns. ``run`` does the first
three steps the same way and then ends the process at once.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a command's ``main`` and end the process with its exit code (None: 0).

    An exception from ``main`` ends the program the ordinary way (traceback, exit 1).
    """
    code = main() or 0
    threading._shutdown()  # what Python's exit does first: wait for non-daemon threads
    atexit._run_exitfuncs()  # then every exit handler, last registered first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
