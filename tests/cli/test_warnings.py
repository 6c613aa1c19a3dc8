"""cnnlab's own warnings reach the terminal as one `warning: ...` line, not as Python's file:line report."""

from __future__ import annotations

import sys
import warnings

import pytest


def test_cnnlab_warnings_read_as_a_line_and_others_as_python_writes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--image-size 64` printed '/…/src/cnnlab/train/trainer.py:430: InputStatisticsWarning: …' and the source line."""
    from cnnlab.cli import _format_warning, main
    from cnnlab.data.photo_transforms import InputStatisticsWarning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.setattr(sys, "argv", ["cnnlab", "--version"])
    with pytest.raises(SystemExit):
        main()
    assert warnings.formatwarning is _format_warning
    ours = _format_warning(InputStatisticsWarning("inputs are far from the record"), InputStatisticsWarning,
                           "/x/src/cnnlab/train/trainer.py", 430, "warnings.warn(...)")  # fmt: skip
    assert ours == "warning: inputs are far from the record\n"
    theirs = _format_warning(UserWarning("a torch remark"), UserWarning, "/x/torch/nn/f.py", 7, "warn()")
    assert theirs.startswith("/x/torch/nn/f.py:7: UserWarning: a torch remark")
