"""benchmarks/memory_cpu.py's `--arch` and `--batch-sizes` (the command behind the bf16 figure in the README)."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest

from benchmark_script import load_benchmark


def _script() -> ModuleType:
    return load_benchmark("memory_cpu")


def test_arch_and_batch_sizes_pick_the_cases() -> None:
    script = _script()
    cases = script.select_cases(False, ["mnist_net", "lenet5"], [1, 16])
    assert cases == [("mnist_net", (1, 28, 28), (1, 16)), ("lenet5", (1, 32, 32), (1, 16))]
    assert [name for name, _, _ in script.select_cases(False, None, None)] == ["exercise 2", "mnist_net", "resnet50"]
    assert len(script.select_cases(True, None, None)) == 14


def test_unknown_arch_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["memory_cpu.py", "--arch", "nosuchnet"])
    with pytest.raises(SystemExit) as exit_info:
        _script().main()
    assert exit_info.value.code == 2
    assert "unknown --arch nosuchnet" in capsys.readouterr().err
