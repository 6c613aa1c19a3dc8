"""Report helpers: confusion matrix against scikit-learn, per-class accuracy, figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from cnnlab.report.classification import plot_highest_loss
from cnnlab.report.metrics import accuracy_from_matrix, confusion_matrix, per_class_accuracy
from cnnlab.report.plots import TICK_LABEL_CHARS, plot_confusion_matrix, plot_misclassified
from cnnlab.train.records import plot_learning_curves
from figure_texts import assert_labels_apart_and_inside
from stopped_midway import stop_savefig_midway

PNG = b"\x89PNG\r\n\x1a\n"


def _saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the code under test saves (it closes them), kept for their Axes to be inspected."""
    saved: list[Figure] = []
    savefig = Figure.savefig

    def keep(figure: Figure, *args: object, **kwargs: object) -> None:
        saved.append(figure)
        savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_confusion_matrix_matches_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    targets, predictions = (
        torch.randint(0, 5, (300,), generator=generator),
        torch.randint(0, 5, (300,), generator=generator),
    )
    matrix = confusion_matrix(predictions, targets, 5)
    assert matrix.tolist() == sklearn_confusion_matrix(targets, predictions, labels=range(5)).tolist()
    assert accuracy_from_matrix(matrix) == (predictions == targets).sum().item() / 300
    recall = per_class_accuracy(matrix)
    assert recall[2] == ((predictions == 2) & (targets == 2)).sum().item() / (targets == 2).sum().item()


def test_figures_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = [
        {"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2, "val_accuracy": 0.5},
        {"epoch": 2.0, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8},
    ]
    assert plot_learning_curves(history, tmp_path / "curves.png").read_bytes()[:8] == PNG
    saved = _saved_figures(monkeypatch)
    images = torch.rand(3, 1, 28, 28)
    path = plot_misclassified(images, torch.tensor([1, 2, 3]), torch.tensor([7, 7, 8]), tmp_path / "wrong.png")
    assert path.read_bytes()[:8] == PNG
    # 23 of 25 shown, in colour; then none (a perfect test pass). The grid was 10 subplots a row and tight_layout:
    # 3 CPU s for 100 digits, a third of an MNIST test pass. Now one Axes holds a mosaic, its labels figure texts.
    labels = torch.arange(25) % 10
    plot_misclassified(torch.rand(25, 3, 20, 20), labels, (labels + 1) % 10, tmp_path / "rgb.png", max_images=23)
    plot_misclassified(torch.rand(0, 1, 28, 28), labels[:0], labels[:0], tmp_path / "none.png")
    texts = [[text.get_text() for text in figure.texts if text is not figure._suptitle] for figure in saved]
    assert texts[0] == ["1→7", "2→7", "3→8"]
    assert texts[1] == [f"{k % 10}→{(k + 1) % 10}" for k in range(23)] and texts[2] == []
    assert [figure._suptitle.get_text() for figure in saved] == [
        "misclassified: true → predicted (3 in total, 3 shown)",
        "misclassified: true → predicted (25 in total, 23 shown)",
        "misclassified: true → predicted (0 in total, 0 shown)",
    ]
    for figure in saved:
        assert len(figure.axes) == 1 and len(figure.axes[0].images) == 1
        assert_labels_apart_and_inside(figure)
    mosaic = saved[1].axes[0].images[0].get_array()
    assert mosaic.shape[1:] == (10 * (20 + 3), 3) and mosaic.shape[0] % 3 == 0 and mosaic.shape[0] > 3 * 20  # 3 rows
    assert mosaic[..., 0].max() <= 1 and (mosaic == 1).all(axis=-1).mean() > 0.2  # white around the tiles


class _StopWhenWritten(float):
    """A metric whose CSV text cannot be made: the stop (Ctrl+C, SIGTERM) arrives while metrics.csv is written."""

    def __repr__(self) -> str:
        raise KeyboardInterrupt


def test_records_stopped_while_written_leave_the_earlier_ones_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics.csv and the report PNGs were written in place: a stop mid-write left a truncated file (the header
    and some rows; an image PIL calls truncated) where the previous epoch's had been."""
    from cnnlab.train.records import write_history

    history = [{"epoch": 1.0, "train_loss": 1.0, "val_accuracy": 0.5}, {"epoch": 2.0, "train_loss": 0.5}]
    write_history(history, tmp_path)
    earlier = {name: (tmp_path / name).read_bytes() for name in ("metrics.csv", "learning_curves.png")}
    with pytest.raises(KeyboardInterrupt):
        write_history([*history, {"epoch": 3.0, "train_loss": _StopWhenWritten(0.25)}], tmp_path)
    stop_savefig_midway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        plot_learning_curves(history[:1], tmp_path / "learning_curves.png")
    with pytest.raises(KeyboardInterrupt):
        plot_misclassified(torch.rand(1, 1, 28, 28), torch.tensor([1]), torch.tensor([7]), tmp_path / "wrong.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*earlier, "metrics.json"])  # no temporary files
    assert {name: (tmp_path / name).read_bytes() for name in earlier} == earlier
    assert b"epoch,train_loss,val_accuracy" in earlier["metrics.csv"]


@pytest.mark.parametrize("epochs", [1, 2, 4, 30])
def test_learning_curves_tick_whole_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Four epochs were ticked 1.0, 1.5, 2.0 ... 4.0, and one epoch 0.945, 0.96 ... 1.05."""
    saved = _saved_figures(monkeypatch)
    history = [
        {"epoch": float(e), "train_loss": 1 / e, "val_loss": 1.2 / e, "val_accuracy": 0.9} for e in range(1, epochs + 1)
    ]
    plot_learning_curves(history, tmp_path / "curves.png")
    for axis in saved[0].axes:
        low, high = axis.get_xlim()
        shown = [tick for tick in axis.get_xticks() if low <= tick <= high]
        assert shown and all(float(tick).is_integer() for tick in shown), shown
        # A one-epoch curve is a single point: only its marker shows it.
        assert all(line.get_marker() not in ("", "None", None) for line in axis.get_lines())


@pytest.mark.parametrize(
    "names",
    [
        ["astronaut", "chelsea", "coffee"],  # ran together as "astronautchelsea coffee"
        ["monocrystalline defective", "polycrystalline functional", "mono ok", "poly broken"],
        [str(digit) for digit in range(10)],
        ["background", "sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian"],
    ],
)
def test_confusion_matrix_labels_do_not_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> None:
    saved = _saved_figures(monkeypatch)
    matrix = torch.eye(len(names), dtype=torch.long) * 40 + 1
    plot_confusion_matrix(matrix, tmp_path / "confusion.png", names, title="test set")
    figure = saved[0]
    renderer = FigureCanvasAgg(figure).get_renderer()  # closing the figure took its canvas
    axis = figure.axes[0]
    labels = axis.get_xticklabels()
    assert [label.get_text() for label in labels] == names
    angle = math.radians(labels[0].get_rotation())
    # Every label is a rectangle turned by `angle` about its anchor; in coordinates turned back by `angle` each is
    # axis-aligned, so two overlap exactly when their intervals overlap on both axes.
    rectangles = []
    for label in labels:
        anchor_x, anchor_y = label.get_transform().transform(label.get_position())
        label.set_rotation(0)
        width, height = label.get_window_extent(renderer).width, label.get_window_extent(renderer).height
        label.set_rotation(math.degrees(angle))
        u = anchor_x * math.cos(angle) + anchor_y * math.sin(angle)
        v = -anchor_x * math.sin(angle) + anchor_y * math.cos(angle)
        left = u - width * {"right": 1.0, "center": 0.5, "left": 0.0}[label.get_horizontalalignment()]
        rectangles.append((left, left + width, v - height, v))  # hung from the tick (va top)
    for (u0, u1, v0, v1), (w0, w1, x0, x1) in zip(rectangles[:-1], rectangles[1:], strict=True):
        assert u1 <= w0 or w1 <= u0 or v1 <= x0 or x1 <= v0, (names, rectangles)
    # Sized for the longest name: no tick label leaves the figure, and short names stay horizontal.
    figure_box = figure.bbox
    for label in labels + axis.get_yticklabels():
        box = label.get_window_extent(renderer)
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and figure_box.y0 <= box.y0, label.get_text()
    if max(map(len, names)) <= 2:
        assert angle == 0


@pytest.mark.parametrize(
    "names",
    [
        [f"class {i} " + "a very long descriptive name of a kind of thing " * 2 for i in range(6)],  # 100 characters
        ["x" * 100, "y" * 100],  # no space to wrap at, and two classes: a narrow figure
        [f"category number {i} of twenty, named" for i in range(20)],
    ],
)
def test_long_class_names_are_cut_on_the_ticks_and_given_whole_in_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> None:
    """100-character names turned 45 degrees made a figure mostly of label and pushed "true" out of it; the
    matrix of 20 classes had its labels cut off."""
    saved: list[Figure] = []  # drawn below, not written: faster
    monkeypatch.setattr("cnnlab.report.plots.save_figure_whole", lambda figure, *_, **__: saved.append(figure))
    plot_confusion_matrix(torch.eye(len(names), dtype=torch.long) * 40 + 1, tmp_path / "c.png", names, "test set")
    figure = saved[0]
    ticks = [label.get_text() for label in figure.axes[0].get_xticklabels()]
    assert all(len(tick) <= TICK_LABEL_CHARS for tick in ticks)
    assert all(tick.startswith(f"{index}: ") for index, tick in enumerate(ticks))
    (key,) = figure.texts  # every name whole, after its index, wrapped to the figure's width
    assert all(
        f"{index}:{name}".replace(" ", "") in "".join(key.get_text().split()) for index, name in enumerate(names)
    )
    assert_labels_apart_and_inside(figure)


def test_highest_loss_titles_with_long_class_names_are_wrapped_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 100-character class name ran into the next image's title and off the figure."""
    saved: list[Figure] = []
    monkeypatch.setattr("cnnlab.report.classification.save_figure_whole", lambda figure, *_, **__: saved.append(figure))
    names = ["class 0 " + "a very long descriptive name of a kind of thing " * 2, "x" * 100, "short"]
    titles = [f"img_{i}.jpg\ntrue {names[i % 3]}\npred {names[(i + 1) % 3]}\np(pred) 0.91, loss 2.31" for i in range(6)]
    plot_highest_loss([np.zeros((160, 120, 3), dtype=np.uint8)] * 6, titles, tmp_path / "h.png")
    shown = [axis.title.get_text() for axis in saved[0].axes[:6]]
    assert all(
        title.endswith("\np(pred) 0.91, loss 2.31") and title.startswith(f"img_{i}.jpg\ntrue ")
        for i, title in enumerate(shown)
    )
    assert "…" in shown[0] and "short" in shown[1]
    assert_labels_apart_and_inside(saved[0])


def test_confusion_matrix_counts_are_dark_on_light_cells_and_light_on_dark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every diagonal count was white: a class the model rarely gets right (a pale cell) had white text on pale blue."""
    saved = _saved_figures(monkeypatch)
    matrix = torch.tensor([[500, 3], [40, 2]])  # class 1: 2 right of 42, its diagonal cell pale
    plot_confusion_matrix(matrix, tmp_path / "confusion.png", ["a", "b"])
    colours = {text.get_text(): text.get_color() for text in saved[0].axes[0].texts}
    assert colours == {"500": "white", "3": "black", "40": "black", "2": "black"}


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("cpu", "on AMD EPYC, 16 cores (1 torch thread); torch"),  # the GPU was named for a --device cpu run
        ("cuda:0", "on NVIDIA H100; torch"),
        ("cuda", "on NVIDIA H100; torch"),
        (None, "on AMD EPYC, 16 cores (1 torch thread) and NVIDIA H100; torch"),  # not told which: both
    ],
)
def test_the_hardware_line_names_the_device_the_run_trained_on(device: str | None, expected: str) -> None:
    from cnnlab.report.markdown import RunReport

    environment = {
        "command": "cnnlab train mnist --device cpu",
        "versions": {"torch": "2.14.1", "cnnlab": "0.1.0"},
        "hardware": {"cpu": "AMD EPYC", "cpu_count": 16, "torch_threads": 1, "cuda": "NVIDIA H100"},
    }
    written = next(line for line in RunReport("run", environment=environment, device=device).lines if "written" in line)
    assert expected in written


def test_score_columns_are_written_to_four_places_and_the_rest_to_four_digits() -> None:
    from cnnlab.report.markdown import markdown_table

    rows = [["a", 1.0, 3, 0.03034], ["b", 0.007782, 2, 12.5]]
    table = markdown_table(["class", "recall", "support", "seconds"], rows, scores=["recall"])
    assert table.splitlines()[2:] == ["| a | 1.0000 | 3 | 0.03034 |", "| b | 0.0078 | 2 | 12.5 |"]
    # a class named with a "|" kept its own cell: it had pushed its numbers one column right
    piped = markdown_table(["class", "recall"], [["cats|dogs", 0.5], ["two\nlines", 0.25]], scores=["recall"])
    assert piped.splitlines()[2:] == ["| cats\\|dogs | 0.5000 |", "| two lines | 0.2500 |"]
    # numbers with one not measured stay a right-aligned column (the transfer cost table's epochs were left-aligned)
    assert markdown_table(["step", "epochs"], [["head", 4], ["test pass", None]]).splitlines()[1:] == [
        "|---|---:|",
        "| head | 4 |",
        "| test pass | - |",
    ]


def test_learning_curves_break_and_mark_where_a_phase_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transfer run's head and fine-tuning epochs were joined into one curve, as if trained on from epoch 12's
    weights, while the second phase starts from the head's best epoch with another part of the network trained."""
    saved = _saved_figures(monkeypatch)
    history = [
        {"epoch": float(e), "phase": "head" if e <= 3 else "finetune", "train_loss": 1 / e, "val_accuracy": 0.5}
        for e in range(1, 6)
    ]
    plot_learning_curves(history, tmp_path / "curves.png")
    loss_axis = saved[0].axes[0]
    curves = [line for line in loss_axis.get_lines() if len(line.get_xdata()) > 0 and line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in curves] == [[1.0, 2.0, 3.0], [4.0, 5.0]]  # not one line over both
    assert curves[0].get_color() == curves[1].get_color()  # one key, one colour
    assert [t.get_text() for t in loss_axis.get_legend().get_texts()] == ["train_loss"]  # listed once
    boundaries = [line.get_xdata()[0] for line in loss_axis.get_lines() if line.get_linestyle() == ":"]
    assert boundaries == [3.5]
    assert {text.get_text().strip() for text in loss_axis.texts} == {"head", "finetune"}


def test_sessions_of_a_resumed_run_keep_each_command_and_a_killed_one_makes_the_total_unknown(tmp_path: Path) -> None:
    """A resumed run recorded its last command only and its last session's wall time; sessions.json keeps each
    (an interrupted one's wall time written as it stops), and one killed outright makes the total unknown, not less."""
    import json
    from unittest import mock

    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import SESSIONS, RunSessions

    def session(argv: list[str], clock: float, first: int, epochs: int, stop: type[BaseException] | None) -> None:
        with mock.patch("sys.argv", argv), mock.patch("time.perf_counter", return_value=clock):
            sessions = RunSessions(tmp_path, resume=first > 0, started=clock - 100 * (first + 1))
        with mock.patch("sys.argv", argv), mock.patch("time.perf_counter", return_value=clock), sessions:
            sessions.begin(first)
            for epoch in range(first + 1, first + epochs + 1):
                sessions.epoch_done(epoch)
            if stop is not None:
                raise stop
            sessions.end()

    with pytest.raises(KeyboardInterrupt):  # Ctrl+C or SIGTERM
        session(["cnnlab", "train", "mnist", "--name", "r"], 100.0, 0, 2, KeyboardInterrupt)
    first = json.loads((tmp_path / SESSIONS).read_text())
    assert [(s["ended"], s["wall_seconds"], s["first_epoch"], s["last_epoch"]) for s in first] == [
        ("interrupted", 100.0, 0, 2)
    ]
    session(["cnnlab", "train", "mnist", "--name", "r", "--resume"], 500.0, 2, 3, None)
    sessions = json.loads((tmp_path / SESSIONS).read_text())
    assert [s["command"] for s in sessions] == ["cnnlab train mnist --name r", "cnnlab train mnist --name r --resume"]
    assert [s["wall_seconds"] for s in sessions] == [100.0, 300.0]
    text = "\n".join(RunReport("run").add_sessions(sessions).lines)
    assert "2 sessions, last resumed after epoch 2. Wall time of all sessions: **6 min 40 s**." in text
    assert "| 1 | " in text and "`cnnlab train mnist --name r` | 1-2 | 1 min 40 s | interrupted |" in text
    assert "`cnnlab train mnist --name r --resume` | 3-5 | 5 min | finished |" in text

    # A session killed outright (SIGKILL) recorded its start and epochs, not its end: the total is unknown.
    killed = RunSessions(tmp_path, resume=True)
    killed.begin(5)
    killed.epoch_done(6)
    last = RunSessions(tmp_path, resume=True)
    last.begin(6)
    last.end()
    assert last.total_wall_seconds is None
    text = "\n".join(RunReport("run").add_sessions(last.sessions).lines)
    assert "Wall time of all sessions: **unknown**: session 3 recorded no wall time" in text
    assert "| 6 | unknown | not recorded (stopped outright) |" in text
    assert "## Sessions" not in "\n".join(RunReport("run").add_sessions(last.sessions[:1]).lines)


def test_a_session_recorded_finished_before_its_results_were_written_is_read_as_interrupted(tmp_path: Path) -> None:
    """Each task records its session's end a moment before it writes results.json: a stop between the two left a run
    whose sessions said "finished" with no results. A resume reads that session as interrupted, and says why."""
    import json

    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import SESSIONS, RunSessions

    stopped = RunSessions(tmp_path, resume=False)
    stopped.begin(0)
    stopped.epoch_done(2)
    stopped.end()  # then killed: no results.json
    assert json.loads((tmp_path / SESSIONS).read_text())[0]["ended"] == "finished"
    resumed = RunSessions(tmp_path, resume=True)
    resumed.begin(2)
    resumed.end()
    assert [s["ended"] for s in json.loads((tmp_path / SESSIONS).read_text())] == ["interrupted", "finished"]
    text = "\n".join(RunReport("run").add_sessions(resumed.sessions).lines)
    assert "| 1-2 | 0 s | interrupted (stopped before results.json was written) |" in text
    (tmp_path / "results.json").write_text("{}")  # written: the run is finished, its last session with it
    assert [s["ended"] for s in RunSessions(tmp_path, resume=True).sessions] == ["interrupted", "finished"]


def test_a_run_saved_before_sessions_were_recorded_resumes_with_its_earlier_command(tmp_path: Path) -> None:
    """A run folder written by cnnlab before sessions.json: its config.yaml's command stands for its earlier
    sessions, their time unknown."""
    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import RunSessions

    (tmp_path / "config.yaml").write_text(
        "config:\n  epochs: 4\nenvironment:\n  command: cnnlab train mnist --name old\n"
    )
    sessions = RunSessions(tmp_path, resume=True)
    sessions.begin(3)
    sessions.end()
    assert sessions.sessions[0]["command"] == "cnnlab train mnist --name old"
    assert sessions.total_wall_seconds is None
    text = "\n".join(RunReport("run").add_sessions(sessions.sessions).lines)
    assert "`cnnlab train mnist --name old` | 1-3 | unknown | not recorded (the run was saved before" in text


def test_a_run_trained_in_phases_counts_each_sessions_epochs_across_them(tmp_path: Path) -> None:
    """Transfer trains a head phase, then fine-tunes, each with a trainer of its own in a sub-folder: its sessions
    showed "-" for epochs. Each counts the run's epochs across the phases; a phase an earlier session finished
    trains none, so a resumed session begins where the phase it continues does."""
    from types import SimpleNamespace

    from cnnlab.report.markdown import RunReport
    from cnnlab.train.callbacks import SessionEpochs
    from cnnlab.train.records import RunSessions

    def phase(sessions: RunSessions, before: int, start: int, stop: int) -> None:
        counter = SessionEpochs(sessions, epochs_before=before)
        counter.on_fit_start(SimpleNamespace(epoch=start))
        for epoch in range(start, stop):
            counter.on_epoch_end(None, epoch, {})

    first = RunSessions(tmp_path, resume=False)
    first.begin()  # the run folder is claimed before any phase's checkpoint is read
    phase(first, 0, 0, 3)  # the head phase: 3 epochs
    phase(first, 3, 0, 2)  # fine-tuning: killed after counting its 2nd epoch, whose checkpoint was not written
    second = RunSessions(tmp_path, resume=True)
    second.begin()
    phase(second, 0, 3, 3)  # the head phase is finished: no epoch
    phase(second, 3, 1, 4)  # fine-tuning resumes after its 1st epoch
    second.end()
    assert [(s["first_epoch"], s["last_epoch"]) for s in second.sessions] == [(0, 4), (4, 7)]
    text = "\n".join(RunReport("run").add_sessions(second.sessions).lines)
    assert "last resumed after epoch 4" in text and " | 1-4 | " in text and " | 5-7 | " in text


def test_a_resumed_session_stopped_before_it_trained_is_recorded_and_ends_no_earlier_sessions_epochs(
    tmp_path: Path,
) -> None:
    """A --resume stopped while it read its data (before `begin`) recorded nothing, so the run's report left out that
    session and its time; a new run's, or a refused one's, is no session of a run. The next session's start still
    corrects the epochs of the last session that trained, not of the one that trained none."""
    from cnnlab.errors import CnnlabError
    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import SESSIONS, RunSessions

    fresh = RunSessions(tmp_path, resume=False)
    with pytest.raises(KeyboardInterrupt), fresh:
        raise KeyboardInterrupt
    assert not (tmp_path / SESSIONS).exists()  # no run yet
    killed = RunSessions(tmp_path, resume=False)
    killed.begin(0)
    killed.epoch_done(3)  # its 3rd epoch's checkpoint was never written
    for stop in CnnlabError("refused"), KeyboardInterrupt():
        before = (tmp_path / SESSIONS).read_bytes()
        stopped = RunSessions(tmp_path, resume=True)
        stopped.doing("loading MNIST")
        with pytest.raises(type(stop)), stopped:
            raise stop
        if isinstance(stop, CnnlabError):  # no work on the run: withdrawn, the file as it was found
            assert (tmp_path / SESSIONS).read_bytes() == before
    # A resume killed outright (SIGKILL) while it prepared, say fetching pretrained weights, left no trace, so the
    # run's total wall time was the other sessions' sum rather than unknown: the session is written as that work begins
    RunSessions(tmp_path, resume=True).doing("fetching the pretrained weights")  # nothing after it runs
    last = RunSessions(tmp_path, resume=True)
    last.begin(2)
    last.end()
    assert [(s["first_epoch"], s["last_epoch"], s["ended"]) for s in last.sessions] == [
        (0, 2, None), (None, None, "interrupted"), (None, None, None), (2, 2, "finished")
    ]  # fmt: skip
    assert last.sessions[1]["preparing"] == "loading MNIST" and last.sessions[1]["wall_seconds"] >= 0
    assert last.sessions[2]["wall_seconds"] is None and last.total_wall_seconds is None
    text = "\n".join(RunReport("run").add_sessions(last.sessions).lines)
    assert "| 1-2 | unknown |" in text and "| none (stopped while loading MNIST) |" in text
    assert "| none (stopped while fetching the pretrained weights) | unknown |" in text


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[\n {\n  "command": "cnnlab tr', "sessions.json is unreadable (Unterminated string"),  # cut short
        ('{"sessions": []}', "sessions.json is unreadable (not a list of sessions)"),
        ('[{"command": "cnnlab train mnist --name r", "first_epoch": 0, "last_epoch": 2, "wall_seconds": "about 1 s"}]',
         "session 1's wall_seconds 'about 1 s' is not what cnnlab records; read as unknown"),
    ],
)  # fmt: skip
def test_a_sessions_record_cut_short_or_edited_by_hand_is_said_and_the_run_goes_on(
    tmp_path: Path, text: str, said: str
) -> None:
    """A sessions.json cut short or edited by hand failed --resume, and the report, with a traceback (JSONDecodeError,
    AttributeError, TypeError in the total): it is said in one line, its sessions' time is unknown, and the run goes
    on with a fresh record."""
    import json

    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import SESSIONS, RunSessions, SessionsRecordWarning

    (tmp_path / "config.yaml").write_text("config: {}\nenvironment:\n  command: cnnlab train mnist --name r\n")
    (tmp_path / SESSIONS).write_text(text)
    with pytest.warns(SessionsRecordWarning, match=re.escape(said)) as caught:
        sessions = RunSessions(tmp_path, resume=True)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    sessions.begin(2)
    sessions.end()
    assert sessions.total_wall_seconds is None  # unknown, not the last session's alone
    assert [s["command"] for s in json.loads((tmp_path / SESSIONS).read_text())] == ["cnnlab train mnist --name r"] + [
        sessions.current["command"]
    ]  # fmt: skip
    report = "\n".join(RunReport("run").add_sessions(sessions.sessions).lines)
    assert "Wall time of all sessions: **unknown**: session 1 recorded no wall time" in report
    assert "| 1-2 | unknown |" in report


def test_a_failed_session_names_its_error_and_started_when_its_command_did(tmp_path: Path) -> None:
    """A session ended by an exception other than an interrupt said "failed" and not what failed it; its "started"
    was when it reached its training (after reading its data), while its wall time counted from the command's start."""
    from datetime import UTC, datetime
    from unittest import mock

    from cnnlab.report.markdown import RunReport
    from cnnlab.train.records import RunSessions

    with mock.patch("time.perf_counter", return_value=1000.0):
        sessions = RunSessions(tmp_path, resume=False, started=400.0)  # its command began 10 min ago
        now = datetime.now(UTC)
        sessions.begin(0)
        with pytest.raises(OSError), sessions:
            raise OSError(28, "No space left on device")
    (failed,) = sessions.sessions
    assert failed["ended"] == "failed" and failed["wall_seconds"] == 600.0
    assert failed["error"] == "OSError: [Errno 28] No space left on device"
    assert abs((now - datetime.fromisoformat(failed["started"])).total_seconds() - 600) < 2
    last = RunSessions(tmp_path, resume=True)
    last.begin(0)
    last.end()
    text = "\n".join(RunReport("run").add_sessions(last.sessions).lines)
    assert "| none | 10 min | failed (OSError: [Errno 28] No space left on device) |" in text


def test_a_figure_missing_beside_the_report_is_named_not_linked(tmp_path: Path) -> None:
    """A finished run whose figures were deleted and whose report.md --resume wrote again linked the missing files:
    the report showed broken images. A figure beside the report is linked; one that is not is named as missing."""
    from cnnlab.report.markdown import RunReport

    plot_learning_curves([{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2}], tmp_path / "learning_curves.png")
    report = RunReport("run").add_training([{"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2}])
    report.image("confusion matrix", "confusion_matrix.png").text("after")
    text = report.write(tmp_path / "report.md").read_text()
    assert "![learning curves](learning_curves.png)" in text
    assert "](confusion_matrix.png)" not in text
    assert "_Figure not shown (confusion matrix): `confusion_matrix.png` is not in the run folder._\n\nafter\n" in text
    (tmp_path / "learning_curves.png").unlink()
    (tmp_path / "confusion_matrix.png").write_bytes(b"drawn since")  # the same report, written again: as it is now
    text = report.write(tmp_path / "report.md").read_text()
    assert "![confusion matrix](confusion_matrix.png)" in text and "](learning_curves.png)" not in text
    assert "`learning_curves.png` is not in the run folder" in text


def test_a_file_name_that_is_not_utf8_is_drawn_in_a_title(tmp_path: Path) -> None:
    """A Latin-1 file name (a str with a surrogate on Linux) in a title raised TypeError in matplotlib's text layout:
    a transfer run, trained and tested, ended in a traceback before its results; a segmentation run's did too."""
    from cnnlab.report.segmentation import save_overlays

    name = "caf\udce9.png"
    plot_highest_loss([np.zeros((16, 16, 3), dtype=np.uint8)], [f"{name}\ntrue a\npred b"], tmp_path / "h.png")
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    save_overlays(torch.zeros(1, 3, 8, 8), labels, labels, tmp_path / "o.png", ["a", "b"], titles=[f"{name}: 0%"])
    assert (tmp_path / "h.png").read_bytes().startswith(PNG) and (tmp_path / "o.png").read_bytes().startswith(PNG)
