"""`--device` and `--threads` from users: a typo, a GPU this machine lacks or zero threads is one line, exit code 2,
before any data is read or any model is built (it was a torch traceback from deep inside the first `.to()`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from cnnlab.train.device import resolve_device


def _no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_is_the_cpu_without_a_gpu_and_names_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_gpu(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_cpu_with_an_index_is_the_cpu_and_loads_a_saved_model(tmp_path: Path) -> None:
    """torch takes "cpu:0", safetensors does not: `evaluate`, `predict` and `ensemble --device cpu:0` called the
    run's weights "damaged, not a whole safetensors file (device cpu:0 is invalid)"."""
    from cnnlab.models import create_model
    from cnnlab.train.saved import load_model, save_model

    save_model(create_model("mnist_net_small"), tmp_path, "mnist_net_small", {}, {})
    model = load_model(tmp_path, device="cpu:0")
    assert next(model.parameters()).device == torch.device("cpu")
    assert resolve_device("cpu:0") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_naming_what_there_is(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _no_gpu(monkeypatch)
    with pytest.raises(CnnlabError, match=rf"'{name}'.*no CUDA GPU.*available: cpu"):
        resolve_device(name)


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(CnnlabError, match=r"'cuda:2' does not exist.*2 CUDA GPU.*cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["banana", "gpu", "cuda:x", ""])
def test_an_unknown_name_is_refused(name: str) -> None:
    with pytest.raises(CnnlabError, match="unknown device|not supported"):
        resolve_device(name)


def _error(args: list[str]) -> str:
    """The `CnnlabError` a command raised (`cnnlab.cli.main` prints it on one line and exits with 2)."""
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert isinstance(result.exception, CnnlabError), (result.exception, result.output)
    return str(result.exception)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "mnist", "--device", "banana"],
        ["train", "transfer", "--data", "{missing}", "--device", "banana"],
        ["train", "segment", "--device", "banana"],
        ["predict", "--model", "lenet5", "--device", "banana", "{missing}"],
        ["explain", "lenet5", "{missing}", "--device", "banana"],
        ["budget", "lenet5", "--measure", "--device", "banana"],
    ],
)
def test_every_device_option_refuses_a_typo_in_one_line(tmp_path: Path, args: list[str]) -> None:
    # The data and image do not exist: the device is checked first, so its error is the one shown.
    args = [arg.replace("{missing}", str(tmp_path / "missing")) for arg in args]
    if args[0] == "explain":  # explain checks its image before loading the model
        (tmp_path / "missing").write_bytes(_png())
    assert "unknown device 'banana'" in _error(args)


def test_train_refuses_zero_threads_before_reading_data(tmp_path: Path) -> None:
    assert "--threads must be >= 1, got 0" in _error(["train", "mnist", "--threads", "0", "--data-dir", str(tmp_path)])


def test_train_refuses_a_missing_gpu_before_reading_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_gpu(monkeypatch)
    assert "no CUDA GPU" in _error(["train", "mnist", "--device", "cuda", "--data-dir", str(tmp_path)])


def test_the_console_script_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    image = tmp_path / "digit.png"
    image.write_bytes(_png())
    command = [sys.executable, "-m", "cnnlab", "predict", "--model", "lenet5", "--device", "cuda:x", str(image)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["error: unknown device 'cuda:x'; use auto, cpu, cuda, cuda:N or mps"]


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()
