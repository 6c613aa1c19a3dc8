"""`cnnlab lab`: localhost unless --host (with a warning), a clear message without the lab extra, the app builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnnlab.lab.app as lab_app
from cnnlab.cli import app
from cnnlab.errors import CnnlabError


def _invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[object, dict]:
    called: dict = {}
    monkeypatch.setattr(lab_app, "serve", lambda runs, **options: called.update(runs=runs, **options))
    monkeypatch.setattr(lab_app, "check_address", lambda host, port: None)  # the port may be busy on this machine
    return CliRunner().invoke(app, ["lab", *args]), called


def test_listens_on_localhost_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    result, called = _invoke(monkeypatch, "--runs", "myruns", "--port", "7999")
    assert result.exit_code == 0, result.output
    assert called == {"runs": Path("myruns"), "port": 7999, "host": "127.0.0.1", "max_upload_mb": 10}
    assert "warning" not in result.output


def test_host_prints_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    result, called = _invoke(monkeypatch, "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert called["host"] == "0.0.0.0"
    assert "warning: the lab listens on 0.0.0.0" in result.output


def test_a_port_in_use_is_refused_before_the_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the app was built for a port it cannot use")

    monkeypatch.setattr(lab_app, "build_app", never)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CnnlabError, match=rf"cannot listen on 127.0.0.1:{port} .*--port {port + 1}"):
            lab_app.serve("runs", port=port)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("no-such-host.invalid", "not an address or name this machine can resolve"),  # was "another program holds it"
        ("::1", "cannot serve on an IPv6 address"),  # was an httpx traceback from inside Gradio
    ],
)
def test_a_host_the_lab_cannot_use_says_why(host: str, message: str) -> None:
    with pytest.raises(CnnlabError, match=message):
        lab_app.check_address(host, 7860)


def test_a_runs_root_that_is_a_file_is_refused_and_a_missing_one_noted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "runs.txt").write_text("not a folder")
    result, called = _invoke(monkeypatch, "--runs", str(tmp_path / "runs.txt"))
    assert isinstance(result.exception, CnnlabError) and "is a file" in str(result.exception) and not called
    result, called = _invoke(monkeypatch, "--runs", str(tmp_path / "not-yet"))
    assert result.exit_code == 0 and "not-yet does not exist yet" in result.output and called


def test_missing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(CnnlabError, match=r'pip install "cnnlab\[lab\]"'):
        lab_app.build_app("runs", warm=False)


def test_app_builds_with_its_four_pages(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the lab extra")
    blocks = lab_app.build_app(tmp_path, warm=False)
    labels = {getattr(block, "label", None) for block in blocks.blocks.values()}
    assert {"Budget", "Classify and explain", "Runs", "Scan and segment"} <= labels
