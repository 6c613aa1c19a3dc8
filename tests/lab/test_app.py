"""`cnnlab lab`: localhost unless --host (with a warning), a clear message without the lab extra, the app builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cnnlab.lab.app as lab_app
from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from unreadable import refuse_listing


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
    # a loopback host is this machine only, as the default: it was warned that "anyone who can reach this machine"
    # could use the lab
    for loopback in ("localhost", "127.0.0.2"):
        result, called = _invoke(monkeypatch, "--host", loopback)
        assert result.exit_code == 0 and called["host"] == loopback and "warning" not in result.output


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


def test_a_port_taken_while_the_app_is_built_is_the_same_one_line_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two labs started together both found the port free, and the second ended in Gradio's "Cannot find empty port
    in range: 7860-7860. You can specify a different port by setting the GRADIO_SERVER_PORT environment variable or
    passing the `server_port` parameter to `launch()`", exit code 1."""
    import socket

    class TakenMeanwhile:  # the app, whose launch finds the port another lab took while it was built (as Gradio's)
        def queue(self, **options: object) -> TakenMeanwhile:
            return self

        def launch(self, **options: object) -> None:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            raise OSError(f"Cannot find empty port in range: {port}-{port}. You can specify a different port ...")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(lab_app, "build_app", lambda *args, **kwargs: TakenMeanwhile())
    with socket.socket() as taken, pytest.raises(CnnlabError) as refused:
        lab_app.serve(Path("runs"), port=port, warm=False)
    assert str(refused.value) == (
        f"cannot listen on 127.0.0.1:{port} (Address already in use); another program, perhaps another lab, may hold "
        f"it: pass another --port, such as --port {port + 1}"
    )


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


def test_a_runs_root_that_is_a_file_or_unreadable_is_refused_and_a_missing_one_noted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "runs.txt").write_text("not a folder")
    result, called = _invoke(monkeypatch, "--runs", str(tmp_path / "runs.txt"))
    assert isinstance(result.exception, CnnlabError) and "is a file" in str(result.exception) and not called
    result, called = _invoke(monkeypatch, "--runs", str(tmp_path / "not-yet"))
    assert result.exit_code == 0 and "not-yet does not exist yet" in result.output and called
    # a folder this user cannot read listed no runs on any page, unsaid (chmod 000 does not stop root: simulated)
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_listing(monkeypatch, locked)
    result, called = _invoke(monkeypatch, "--runs", str(locked))
    assert isinstance(result.exception, CnnlabError) and not called
    assert (
        str(result.exception) == f"--runs {locked} cannot be read (Permission denied); pass a runs folder this "
        "user can read, or give it read permission"
    )


def test_missing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    with pytest.raises(CnnlabError, match=r'pip install "cnnlab\[lab\]"'):
        lab_app.build_app("runs", warm=False)


def test_app_builds_with_its_four_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio", reason="the lab extra")
    blocks = lab_app.build_app(tmp_path, warm=False)
    labels = {getattr(block, "label", None) for block in blocks.blocks.values()}
    assert {"Budget", "Classify and explain", "Runs", "Scan and segment"} <= labels
    # The labels of classes wrap (a long folder name was one line scrolled sideways, its percentage out of sight):
    # the style names components the page has, and the lab is launched with it.
    import re

    styled = set(re.findall(r"#([\w-]+)", lab_app._CSS))
    assert styled == {"classify-top", "scan-shares"}
    assert styled <= {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    launched: dict = {}

    class Recorded:
        def queue(self, **options: object) -> Recorded:
            return self

        def launch(self, **options: object) -> None:
            launched.update(options)

    monkeypatch.setattr(lab_app, "build_app", lambda *args, **kwargs: Recorded())
    monkeypatch.setattr(lab_app, "check_address", lambda host, port: None)
    from cnnlab.lab import runs

    cleaned: list = []  # the figure folders killed labs left are removed when a lab starts
    monkeypatch.setattr(runs, "remove_stale_scratch", lambda: cleaned.append(True))
    lab_app.serve(tmp_path, port=7860, warm=False)
    assert cleaned == [True]
    assert launched["css"] == lab_app._CSS and "overflow-wrap: anywhere" in launched["css"]


def test_the_answer_sheet_and_the_runs_are_read_when_the_page_loads_and_on_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both were read once when the app was built: a sheet written, or a run trained, after the lab started never
    showed, even after a reload of the page (which said "reload this page")."""
    pytest.importorskip("gradio", reason="the lab extra")
    from PIL import Image

    from cnnlab.train.config import TrainConfig, save_config

    blocks = lab_app.build_app(tmp_path, warm=False)
    loads = {
        dependency.fn.__name__: dependency
        for dependency in blocks.fns.values()
        if any(event == "load" for _, event in dependency.targets)
    }
    buttons = {getattr(blocks.blocks.get(block), "value", None): dependency
               for dependency in blocks.fns.values() for block, _ in dependency.targets}  # fmt: skip
    refresh = buttons["Refresh"]
    assert refresh.fn is loads["on_refresh_runs"].fn
    text, gallery = loads["on_answers"].fn()
    assert "cnnlab answers --quick" in text and gallery.visible is False
    *_, note = refresh.fn(None, None, None, "efficientnet_lite0", None)  # no runs: an empty table said nothing
    assert note.visible and note.value.startswith(f"No runs under `{tmp_path}` yet")
    assert f"`cnnlab train mnist --recipe quick --output {tmp_path}`" in note.value
    (tmp_path / "answers").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "answers" / "cm.png")
    (tmp_path / "answers" / "answers.md").write_text("## Exercise 1\n\n![confusion](cm.png)\n")
    (tmp_path / "mnist" / "later").mkdir(parents=True)
    save_config(TrainConfig(task="mnist", name="later"), tmp_path / "mnist" / "later" / "config.yaml")
    text, gallery = loads["on_answers"].fn()  # a reload of the page
    assert "## Exercise 1" in text and gallery.visible and len(gallery.value) == 1
    table, run, first, _second, model, _scan, curves, _confusion, _mistakes, config, note = refresh.fn(
        None, None, None, "efficientnet_lite0", None
    )
    assert note.visible is False
    assert [row[0] for row in table.value["data"]] == ["mnist/later"]
    assert run.value == "mnist/later" and first.value is None and model.value == "efficientnet_lite0"
    assert curves.visible is False and "name: later" in config  # the run's records on show, its missing curves hidden
    Image.effect_noise((64, 64), 50).save(tmp_path / "curves.png")  # a run killed while it redrew its curves:
    (tmp_path / "mnist" / "later" / "learning_curves.png").write_bytes((tmp_path / "curves.png").read_bytes()[:2000])
    with pytest.warns(UserWarning, match="mnist/later: cannot show learning_curves.png: corrupt or truncated"):
        table, *_, curves, _confusion, _mistakes, config, _note = refresh.fn("mnist/later", None, None, None, None)
    assert [row[0] for row in table.value["data"]] == ["mnist/later"]  # was "image file is truncated", no page
    assert curves.visible is False and "name: later" in config
    # a task folder this user cannot read hid its runs, unsaid (chmod 000 does not stop root: simulated)
    refuse_listing(monkeypatch, tmp_path / "mnist")
    table, *_, note = refresh.fn("mnist/later", None, None, None, None)
    assert "mnist/later" not in str(table.value["data"])
    assert note.visible and f"cannot read them: `{tmp_path / 'mnist'}` (Permission denied)" in note.value


def test_an_input_error_shown_in_the_page_leaves_no_traceback_in_the_servers_log() -> None:
    """Each input error the page showed in words (an unknown layer, a text file named .png) also printed a full
    traceback in the terminal running `cnnlab lab`, which reads as the server failing."""
    gradio = pytest.importorskip("gradio")

    @lab_app._shown_errors
    def page(value: str) -> str:
        raise CnnlabError(f"unknown layer {value!r}")

    with pytest.raises(gradio.Error, match="unknown layer 'x'") as raised:
        page("x")
    assert raised.value.print_exception is False
    assert raised.value.duration is None  # the reason stays on the page until closed; it went after 10 s


def test_help_says_what_each_option_governs() -> None:
    """--runs named no page nor the answer sheet, and --max-upload-mb neither the pages it limits nor Scan's pixel
    limits, which refuse a photo far under 10 MiB."""
    from cnnlab.lab.scan_page import MAX_DOWNSCALED_PIXELS, MAX_PIXELS

    result = CliRunner().invoke(app, ["lab", "--help"], terminal_width=200)
    words = " ".join(result.output.replace("│", " ").split())
    assert "list its RUNS/<task>/<name> runs, and Answers shows RUNS/answers/answers.md" in words
    assert f"at most {MAX_PIXELS // 2**20} MP, {MAX_DOWNSCALED_PIXELS // 2**20} MP for a segmentation run" in words
    assert "http://HOST:PORT" in words


def test_an_empty_run_list_says_why_before_an_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no run to scan, the Scan page showed an empty list and said nothing until an image (up to 10 MiB) was
    uploaded; so did the Classify page's list without zoo weights or runs. Each list now says why it is empty and how
    to fill it, as the upload is told, from the page's load on (and on Refresh); a list with runs says nothing."""
    gradio = pytest.importorskip("gradio", reason="the lab extra")
    from PIL import Image

    import cnnlab.lab.classify
    from cnnlab.models import create_model
    from cnnlab.train.config import TrainConfig, save_config
    from cnnlab.train.saved import save_model

    monkeypatch.setattr(cnnlab.lab.classify, "pretrained_models", list)  # no zoo model's weights installed
    blocks = lab_app.build_app(tmp_path, warm=False)
    handlers = {dependency.fn.__name__: dependency.fn for dependency in blocks.fns.values()}
    *_, models, scan_runs, _curves, _confusion, _mistakes, _config, _note = handlers["on_refresh_runs"](
        None, None, None, None, None
    )
    assert models.choices == [] and scan_runs.choices == []
    assert models.info == (
        "No model to classify with: no zoo model's pretrained weights are installed (`cnnlab zoo` marks those a pip "
        f"package holds) and no MNIST, transfer or segmentation run is under {tmp_path}; train one, e.g. `cnnlab "
        f"train mnist --recipe quick --output {tmp_path}`, then Refresh on the Runs page"
    )
    assert scan_runs.info == (
        f"No run to scan under {tmp_path}: the page takes a finished MNIST run of one network or a finished `cnnlab "
        f"train segment --data` run; train one with `cnnlab train mnist --recipe quick --output {tmp_path}` or "
        f"`cnnlab train segment --data DIR --output {tmp_path}`, then Refresh on the Runs page"
    )
    image = tmp_path / "image.png"
    Image.new("L", (64, 64)).save(image)
    with pytest.raises(gradio.Error) as refused:  # what an upload is told: the same words
        handlers["on_scan"](None, str(image))
    assert lab_app.sentence(refused.value.message) == scan_runs.info
    save_model(create_model("mnist_net_small"), tmp_path / "mnist" / "small", "mnist_net_small", {}, {"task": "mnist"})
    save_config(TrainConfig(task="mnist", name="small"), tmp_path / "mnist" / "small" / "config.yaml")
    *_, models, scan_runs, _curves, _confusion, _mistakes, _config, _note = handlers["on_refresh_runs"](
        None, None, None, None, None
    )
    assert [value for _, value in models.choices] == [value for _, value in scan_runs.choices] == ["mnist/small"]
    assert models.info is None and scan_runs.info is None


def test_each_upload_box_says_its_limit_before_a_file_is_picked(tmp_path: Path) -> None:
    """A file over --max-upload-mb is refused by Gradio in the browser, before cnnlab sees it: a note "File(s) exceed
    the maximum allowed size of 10.0 Mb" that went after 10 s, then "Error" in the box, with no word of the limit in
    MiB nor of what to do. Each upload box now says its limit and the remedy under it, from the start."""
    pytest.importorskip("gradio", reason="the lab extra")
    blocks = lab_app.build_app(tmp_path, max_upload_bytes=3 * 2**20, warm=False)
    notes = {block.elem_id: block.value for block in blocks.blocks.values() if getattr(block, "elem_id", None)}
    remedy = "downscale it or save it as a lower-quality JPEG, or start the lab with a larger `--max-upload-mb`."
    assert notes["classify-upload-limit"] == (
        'Files up to 3 MiB. The browser refuses a larger file ("File(s) exceed the maximum allowed size", then '
        f'"Error" in the box): {remedy}'
    )
    assert notes["scan-upload-limit"] == (
        "Files up to 3 MiB and 4 MP (24 MP for a segmentation run trained with `--max-side`). The browser refuses a "
        f'larger file ("File(s) exceed the maximum allowed size", then "Error" in the box): {remedy}'
    )


def test_an_upload_gone_from_the_server_is_said_in_words(tmp_path: Path) -> None:
    """The photo on show is read again when another model, layer or run is picked: one removed from Gradio's upload
    folder since (a cleaner of temporary files) was a FileNotFoundError traceback in the server's log and its text,
    naming Gradio's temporary path, in the page."""
    gradio = pytest.importorskip("gradio", reason="the lab extra")
    blocks = lab_app.build_app(tmp_path, warm=False)
    handlers = {dependency.fn.__name__: dependency.fn for dependency in blocks.fns.values()}
    gone = str(tmp_path / "gradio" / "photo.png")
    said = (
        "the uploaded file is no longer on the server (No such file or directory; a cleaner of temporary files may "
        "have removed it): upload it again"
    )
    for name, args in (("on_model", ("mnist/any", gone)), ("on_upload", ("mnist/any", gone, None)),
                       ("on_scan", ("mnist/any", gone)), ("on_scan_run", ("mnist/any", gone))):  # fmt: skip
        with pytest.raises(gradio.Error) as refused:
            handlers[name](*args)
        assert refused.value.message == said, name


def test_a_run_or_task_folder_given_as_the_runs_root_is_refused_naming_the_root_to_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--runs runs/mnist/small` (a run's own folder) listed no runs and said to train one with `--output
    runs/mnist/small`; `--runs runs/mnist` listed an ensemble's members as runs of a task named after the ensemble and
    left every other run out, unsaid. Both are refused before the app is built, naming the runs root."""
    from cnnlab.train.config import TrainConfig, save_config

    for name in ("small", "pair/seed0", "pair"):
        (tmp_path / "mnist" / name).mkdir(parents=True, exist_ok=True)
        save_config(TrainConfig(task="mnist", name=name), tmp_path / "mnist" / name / "config.yaml")
        (tmp_path / "mnist" / name / "sessions.json").write_text("[]")  # as a run's first session writes it
    (tmp_path / "config.yaml").write_text("another tool's settings\n")  # no run's: a runs root may hold one
    monkeypatch.chdir(tmp_path)
    for runs, message in (
        ("mnist/small", "--runs mnist/small is a run's folder (it holds config.yaml), not a runs root"),
        ("mnist/pair/seed0", "--runs mnist/pair/seed0 is a run's folder (it holds config.yaml), not a runs root"),
        ("mnist", "--runs mnist holds runs itself (pair/config.yaml), as a task's folder does, not a runs root"),
    ):
        result, called = _invoke(monkeypatch, "--runs", runs)
        assert isinstance(result.exception, CnnlabError) and not called, runs
        assert str(result.exception).startswith(message + ": pass the folder ")
        assert str(result.exception).endswith(" which holds <task>/<name>/ runs: --runs ."), runs
    result, called = _invoke(monkeypatch, "--runs", str(tmp_path / "mnist"))
    assert str(result.exception).endswith(f"--runs {tmp_path}")  # as typed: absolute
    result, called = _invoke(monkeypatch, "--runs", ".")
    assert result.exit_code == 0 and called["runs"] == Path(".")
