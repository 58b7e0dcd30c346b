"""A command ends as Python ends a program: threads joined, exit handlers run, output
flushed, the exit code kept; only the interpreter's final teardown is skipped."""

import subprocess
import sys

PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from tune_p7 import command

folder = Path(sys.argv[1])

def late_writer():
    time.sleep(0.5)  # still running when main returns
    (folder / "thread.txt").write_text("joined")

def main():
    threading.Thread(target=late_writer).start()
    atexit.register(lambda: (folder / "atexit.txt").write_text("ran"))
    sys.stdout.write("unflushed output")  # no newline, no flush
    return 3

command.run(main)
"""


def test_run_joins_threads_runs_exit_handlers_flushes_and_keeps_the_exit_code(tmp_path):
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "unflushed output"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_an_exception_in_main_ends_the_ordinary_way(tmp_path):
    program = "from tune_p7 import command\ndef main():\n    raise RuntimeError('boom')\ncommand.run(main)"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "RuntimeError: boom" in done.stderr
