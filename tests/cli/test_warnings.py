"""cnnlab's own warnings reach the terminal as one `warning: ...` line, not as Python's file:line report."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

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


def test_fp16_on_the_cpu_is_a_warning_that_names_bf16(tmp_path: Path) -> None:
    """`--precision fp16` on a CPU trained a 1-epoch MNIST run 5-11x slower than fp32 without a word."""
    from typer.testing import CliRunner

    from cnnlab.cli import _format_warning, app
    from cnnlab.train.config import EngineOptions, SlowPrecisionWarning

    args = ["train", "mnist", "--device", "cpu", "--data-dir", str(tmp_path / "missing")]
    with pytest.warns(SlowPrecisionWarning) as caught:
        CliRunner().invoke(app, [*args, "--precision", "fp16"])  # the data is missing: it stops after the warning
    slow = [warned for warned in caught if issubclass(warned.category, SlowPrecisionWarning)]  # not a stray one's
    message = str(slow[0].message)
    assert message.startswith("--precision fp16 on the CPU trains several times slower than fp32")
    assert "use --precision bf16" in message
    assert _format_warning(slow[0].message, SlowPrecisionWarning, "x.py", 1) == f"warning: {message}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPrecisionWarning)
        for precision in ("bf16", "fp32", None):
            EngineOptions(precision=precision, device="cpu")


def test_fp16_on_the_cpu_is_said_by_the_trainer_from_python_and_once_on_the_command_line(tmp_path: Path) -> None:
    """`TrainConfig(precision="fp16")` from Python trained on the CPU without the warning the CLI gives; then the
    warning named the CLI's `--precision` to a Python caller, who typed no flag."""
    import torch
    import typer
    from torch import nn
    from typer.testing import CliRunner

    from cnnlab.cli.engine_options import ENGINE, with_engine_options
    from cnnlab.train import TrainConfig, Trainer
    from cnnlab.train.config import EngineOptions, SlowPrecisionWarning

    data = (torch.randn(16, 4), torch.randint(0, 2, (16,)))

    def train(**options: object) -> None:
        config = TrainConfig(epochs=1, batch_size=8, output=str(tmp_path), overwrite=True, progress=False, **options)
        Trainer(nn.Linear(4, 2), config).fit(data)

    with pytest.warns(SlowPrecisionWarning) as caught:  # named as the caller named it: the field, not the flag
        train(precision="fp16", device="cpu")
    assert str(caught[0].message).startswith("precision fp16 on the CPU trains several times slower")
    assert "use precision bf16" in str(caught[0].message) and "--precision" not in str(caught[0].message)
    with warnings.catch_warnings():  # from Python, EngineOptions holds options; the trainer says it, naming the field
        warnings.simplefilter("error", SlowPrecisionWarning)
        EngineOptions(precision="fp16", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPrecisionWarning)
        train(precision="bf16", device="cpu")
    app = typer.Typer()

    @app.command()
    @with_engine_options
    def tiny(engine: EngineOptions = ENGINE) -> None:
        train(**engine.overrides())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # not Python's once per place: said once, before the data, not again
        result = CliRunner().invoke(app, ["--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [type(w.message) for w in caught if issubclass(w.category, SlowPrecisionWarning)] == [SlowPrecisionWarning]
