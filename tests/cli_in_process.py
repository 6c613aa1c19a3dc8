"""`cnnlab ARGS` run in the test process, as the console script runs it (a subprocess per test spent most of its
time importing torch). tests/train/test_device.py keeps a test of the real console script."""

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from unittest import mock


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


def run_cnnlab(*args: str) -> Completed:
    """`cnnlab ARGS` through `cnnlab.cli.main`: its exit code, stdout and stderr (warnings included, under Python's
    default filters, where pytest would otherwise keep them off stderr)."""
    from cnnlab.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with (
        mock.patch.object(sys, "argv", ["cnnlab", *args]),
        mock.patch.object(warnings, "formatwarning", warnings.formatwarning),  # main() sets cnnlab's format
        warnings.catch_warnings(record=True) as caught,
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        try:
            main()
        except SystemExit as done:
            returncode = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return Completed(returncode, stdout.getvalue(), shown + stderr.getvalue())
