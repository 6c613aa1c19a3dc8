"""A quick segmentation training on a small canvas set learns far more than predicting background everywhere."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from cnnlab.data.segmentation import DigitSegmentation, make_canvases
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.tasks.segmentation import EncoderClassifier, evaluate_segmentation, pretrain_encoder, train_segmentation
from cnnlab.train import TrainConfig


def _digit_pool(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three synthetic 'digit' shapes (a bar, a square, a cross) with jitter: a task a tiny net learns in seconds."""
    generator = torch.Generator().manual_seed(seed)
    digits = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    labels = torch.arange(count) % 3
    for i in range(count):
        dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=generator))
        if labels[i] == 0:
            digits[i, 0, 6 + dy : 22 + dy, 12 + dx : 16 + dx] = 255
        elif labels[i] == 1:
            digits[i, 0, 8 + dy : 20 + dy, 8 + dx : 20 + dx] = 255
        else:
            digits[i, 0, 12 + dy : 16 + dy, 6 + dx : 22 + dx] = 255
            digits[i, 0, 6 + dy : 22 + dy, 12 + dx : 16 + dx] = 255
    return digits, labels, torch.arange(count)


def _canvases(count: int, seed: int, pool: int = 60):
    """`count` 32x32 canvases of one synthetic digit each, from a pool of `pool` shapes seeded with `seed`."""
    return make_canvases(*_digit_pool(pool, seed), count, size=32, digits_per_canvas=(1, 1), seed=seed)


def _train_tiny(tmp_path, name: str, data: DigitSegmentation, recipe: str = "quick", epochs: int = 1, **options):
    """`train_segmentation` with the small settings these tests share (U-Net 8-16-32, batch 16, no progress bar);
    `lr` goes to the overrides, any other option to `train_segmentation`."""
    overrides = {"epochs": epochs, "batch_size": 16, "channels_last": False}
    if "lr" in options:
        overrides["lr"] = options.pop("lr")
    return train_segmentation(
        recipe,
        output=str(tmp_path),
        name=name,
        data=data,
        overrides=overrides,
        model_kwargs={"widths": (8, 16, 32)},
        progress=False,
        **options,
    )


def test_quick_training_learns(tmp_path):
    data = DigitSegmentation(train=_canvases(192, 0), val=_canvases(32, 1), test=_canvases(64, 2))
    summary = _train_tiny(tmp_path, "t", data, epochs=4, lr=1e-2, pretrain_epochs=0)
    run = tmp_path / "segment" / "t"
    assert (run / "model.safetensors").is_file() and (run / "test_overlays.png").is_file()
    assert json.loads((run / "results.json").read_text())["test"]["miou_includes_background"] is False
    assert summary["batch"] == {"batch_size": 16, "micro_batch_size": 16, "processes": 1, "oom_events": []}
    meta = json.loads((run / "model.json").read_text())["meta"]  # the layout of every model record: its kind said
    assert meta["kind"] == "digit-segmenter" and meta["classes"] == ["background", *map(str, range(10))]
    assert "normalisation" not in meta  # the network takes the canvases' [0, 1] as they are

    background_only = torch.zeros(len(data.test), 11, 32, 32)
    background_only[:, 0] = 1.0

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return background_only[: len(x)]

    baseline, _ = evaluate_segmentation(Constant(), data.test.images, data.test.masks)
    assert baseline["miou"] == 0.0
    # 4 short epochs on 192 canvases: far from converged, but clearly learning shapes and classes
    assert summary["test"]["miou"] > 0.15, summary["test"]
    assert summary["test"]["pixel_accuracy"] > baseline["pixel_accuracy"]


def test_encoder_pretraining_trains_the_encoder_only_and_then_segments(tmp_path):
    digits, labels, ids = _digit_pool(256, 0)
    pool = (digits, labels, ids)
    data = DigitSegmentation(train=_canvases(64, 0), val=_canvases(16, 1), test=_canvases(16, 2), train_digits=pool)
    torch.manual_seed(0)
    model = create_model("unet", widths=(8, 16, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=2, output=str(tmp_path), task="segment", name="p", progress=False)
    record = pretrain_encoder(model, data, config, epochs=2)
    after = model.state_dict()
    assert record["train_accuracy"] > 0.6  # three shapes, chance is 1/3
    assert not torch.equal(before["encoders.0.0.conv.weight"], after["encoders.0.0.conv.weight"])
    assert torch.equal(before["classifier.weight"], after["classifier.weight"])  # the decoder is untouched
    assert (tmp_path / "segment" / "p" / "pretrain-encoder" / "metrics.csv").is_file()

    summary = _train_tiny(tmp_path, "q", data, pretrain_epochs=1)
    assert summary["epochs"] == 1 and (tmp_path / "segment" / "q" / "pretrain-encoder").is_dir()
    with pytest.raises(CnnlabError, match="needs a U-Net"):
        EncoderClassifier(create_model("fcn8s", backbone="resnet18", num_classes=11))


def test_pretraining_without_the_digit_pool_is_a_clear_error(tmp_path):
    data = DigitSegmentation(
        train=_canvases(32, 0, pool=30), val=_canvases(16, 1, pool=30), test=_canvases(16, 2, pool=30)
    )
    with pytest.raises(CnnlabError, match="training pool"):
        train_segmentation("quick", output=str(tmp_path), name="n", data=data, pretrain_epochs=1, progress=False)


def test_resume_with_overwrite_is_refused(tmp_path):
    """The canvas task resumed without a word when given both (every other task refuses them)."""
    with pytest.raises(CnnlabError, match="--resume continues a run and --overwrite starts it again"):
        train_segmentation("quick", output=str(tmp_path), name="n", resume=True, overwrite=True, progress=False)


def test_a_bad_upsample_mode_is_refused_before_the_canvases_are_built(tmp_path, monkeypatch):
    """It was refused by the model's constructor, after ~9 s of building MNIST canvases."""

    def no_data(*args, **kwargs):
        raise AssertionError("the canvases were built before --upsample was checked")

    monkeypatch.setattr("cnnlab.tasks.segmentation.make_digit_segmentation", no_data)
    with pytest.raises(CnnlabError, match="--upsample 'cubic' is not one of transposed, bilinear"):
        train_segmentation("quick", output=str(tmp_path), model_kwargs={"upsample": "cubic"}, progress=False)


def test_encoder_pretraining_runs_under_ddp(tmp_path, monkeypatch):
    # Under torchrun the pretraining stopped at its second step: DDP waited for the decoder's gradients ("Expected
    # to have finished reduction in the prior iteration ..."). A one-process gloo job shows it.
    import socket

    import torch.distributed as dist

    import cnnlab.train.trainer as engine
    from cnnlab.train.strategy import DDPStrategy, DistInfo

    pool = _digit_pool(256, 0)  # two steps of the pretraining's batch of 128
    data = DigitSegmentation(train=_canvases(8, 0), val=_canvases(8, 1), test=_canvases(8, 2), train_digits=pool)
    torch.manual_seed(0)
    model = create_model("unet", widths=(8, 16, 32))
    config = TrainConfig(epochs=1, output=str(tmp_path), task="segment", name="ddp", progress=False)
    monkeypatch.setattr(engine, "select_strategy", lambda device: DDPStrategy(DistInfo(0, 1, 0, "gloo")))
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        record = pretrain_encoder(model, data, config, epochs=1)
    finally:
        dist.destroy_process_group()
    assert record["epoch"] == 1.0


def test_a_process_other_than_rank_zero_writes_nothing_in_the_run(tmp_path, monkeypatch):
    # Under torchrun every process wrote test_overlays.png and the saved model into the same folder at once.
    data = DigitSegmentation(train=_canvases(32, 0), val=_canvases(16, 1), test=_canvases(16, 2))
    monkeypatch.setenv("RANK", "1")  # what torchrun sets; with no process group, is_main_process() reads it
    _train_tiny(tmp_path, "r1", data, pretrain_epochs=0)
    assert [p for p in (tmp_path / "segment" / "r1").rglob("*") if p.is_file()] == []


def test_a_run_interrupted_in_its_first_epoch_resumes(tmp_path, monkeypatch):
    # Ctrl+C said "continue with the same command and --resume", which then failed: "--resume: no checkpoint at
    # .../checkpoint.pt; start the run without --resume" (no epoch had finished).
    import cnnlab.train.trainer as engine

    data = DigitSegmentation(train=_canvases(32, 0), val=_canvases(16, 1), test=_canvases(16, 2))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine.Trainer, "train_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _train_tiny(tmp_path, "i", data, pretrain_epochs=0)
    import cnnlab.models

    with monkeypatch.context() as patch:  # a resume stopped while it built the model recorded no session
        patch.setattr(cnnlab.models, "create_model", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _train_tiny(tmp_path, "i", data, pretrain_epochs=0, resume=True)
    resumed = _train_tiny(tmp_path, "i", data, pretrain_epochs=0, resume=True)
    assert resumed["epochs"] == 1
    assert [(s["ended"], s.get("preparing")) for s in resumed["sessions"]] == [
        ("interrupted", None), ("interrupted", "setting up the run"), ("finished", None)
    ]  # fmt: skip
    with pytest.raises(CnnlabError, match="--resume: no run at"):
        _train_tiny(tmp_path, "never-started", data, pretrain_epochs=0, resume=True)


def test_a_run_interrupted_after_its_pretraining_keeps_the_pretrained_epochs(tmp_path, monkeypatch):
    """The pretraining sub-run was redone from scratch until the segmentation run had a checkpoint: Ctrl+C in its
    first epoch, which said "keeps its finished epochs; continue with ... --resume", cost every pretraining epoch."""
    import cnnlab.train.trainer as engine

    data = DigitSegmentation(
        train=_canvases(32, 0), val=_canvases(16, 1), test=_canvases(16, 2), train_digits=_digit_pool(128, 0)
    )
    uninterrupted = _train_tiny(tmp_path, "u", data, pretrain_epochs=2)
    step = engine.Trainer.train_step
    pretraining_steps, interrupt = [], [True]

    def counted(trainer, *args, **kwargs):
        if trainer.config.name.endswith("pretrain-encoder"):
            pretraining_steps.append(trainer.config.name)
        elif interrupt[0]:
            raise KeyboardInterrupt  # in the segmentation run's first step
        return step(trainer, *args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "train_step", counted)
    with pytest.raises(KeyboardInterrupt):
        _train_tiny(tmp_path, "i", data, pretrain_epochs=2)
    assert len(pretraining_steps) == 2  # two epochs of one batch of 128 digits
    interrupt[0] = False
    resumed = _train_tiny(tmp_path, "i", data, pretrain_epochs=2, resume=True)
    assert len(pretraining_steps) == 2  # none again
    assert resumed["test"] == uninterrupted["test"]
    # the interrupted session's wall time, its pretraining's included, is recorded beside the resumed one's
    sessions = resumed["sessions"]
    assert [(s["ended"], s["first_epoch"], s["last_epoch"]) for s in sessions] == [
        ("interrupted", 0, 0),
        ("finished", 0, resumed["epochs"]),
    ]
    assert all(s["wall_seconds"] > 0 for s in sessions)
    report = (tmp_path / "segment" / "i" / "report.md").read_text()
    assert "2 sessions, the last started before any epoch had finished. Wall time of all sessions: **" in report
    weights = [torch.load(tmp_path / "segment" / name / "checkpoint.pt", weights_only=True)["model"] for name in "ui"]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.parametrize("canvases", [True, False])
def test_evaluate_sends_a_segmentation_run_only_where_it_is_taken(tmp_path, canvases):
    """`cnnlab evaluate` of a canvas run pointed to `cnnlab predict --model RUN IMAGE...`, which refuses canvas runs
    (they record no normalisation for new images); a folder run's predict is still named."""
    from cnnlab.tasks.mnist import check_mnist_run
    from cnnlab.train.saved import save_model

    kwargs = {"widths": (4, 8), "num_classes": 3}
    meta = {"task": "segment"} if canvases else {"task": "segment", "normalisation": {"mean": [0.0], "std": [1.0]}}
    save_model(create_model("unet", **kwargs), tmp_path, "unet", kwargs, meta)
    with pytest.raises(CnnlabError, match="is a segment run, not an MNIST run") as refused:
        check_mnist_run(tmp_path)
    assert ("cnnlab predict" in str(refused.value)) is not canvases
    assert ("--data DIR` scores it on a folder of new labelled images" in str(refused.value)) is not canvases
    assert ("test_overlays.png" in str(refused.value)) is canvases


def test_the_best_epoch_is_saved_and_tested_across_a_resume(tmp_path, monkeypatch, capsys):
    """The last epoch's weights were saved and tested, whichever epoch validation found best."""
    import cnnlab.tasks.segmentation as task
    from cnnlab.train.config import environment_record
    from cnnlab.train.saved import load_model

    def with_a_gpu() -> dict:
        record = environment_record()
        return {**record, "hardware": {**record["hardware"], "cuda": "A GPU"}}

    monkeypatch.setattr(task, "environment_record", with_a_gpu)
    from worse_last_epoch import WorseLastEpoch

    data = DigitSegmentation(train=_canvases(16, 0), val=_canvases(8, 1), test=_canvases(1, 2))  # a step an epoch
    record = WorseLastEpoch(stop_before=2)  # interrupted after 2 of its 3 epochs, then resumed
    options = dict(epochs=3, lr=1e-2, pretrain_epochs=0, callbacks=[record])
    with pytest.raises(KeyboardInterrupt):
        _train_tiny(tmp_path, "b", data, **options)
    summary = _train_tiny(tmp_path, "b", data, resume=True, **options)
    run = tmp_path / "segment" / "b"
    scores = [row["val_miou"] for row in json.loads((run / "metrics.json").read_text())]
    best = scores.index(max(scores)) + 1
    assert best < 3 and summary["saved_epoch"] == best and summary["val_miou"] == scores[best - 1]
    saved = load_model(run).state_dict()
    assert all(torch.equal(saved[key], value) for key, value in record.weights[best].items())
    report = (run / "report.md").read_text()
    assert f"holds the weights of epoch {best}, the best val_miou" in report
    # the hardware line names the device trained on (a CPU here), not also the machine's GPU
    assert "A GPU" not in report and "written: " in report
    # the recipe's summary ("4000 canvases") is followed by what was given on top of it; "1 test canvas"
    assert "given: epochs 3 (the recipe's 3)" not in report
    assert "train_canvases 16 (the recipe's 4000), pretrain_epochs 0 (the recipe's 1)" in report
    assert "and 1 test canvas of " in report and "the test canvas (built" in report
    table = report.split("| class | IoU |\n")[1].split("\n\n")[0].splitlines()[1:]
    assert table and all(re.fullmatch(r"\| .+ \| (\d\.\d{4}|absent|-) \|", row) for row in table), table  # 4 places
    # finished: --resume read it back by testing it again (a second session, the model saved again); now it is read
    # back, under its own options only, and a stop before its report.md leaves that alone to write, from its results
    (run / "report.md").unlink()
    saved_at = {name: (run / name).stat().st_mtime_ns for name in ("model.safetensors", "sessions.json")}
    read_back = {**json.loads(json.dumps(summary)), "finished_before": True}  # which the CLI says, as transfer's
    assert _train_tiny(tmp_path, "b", data, resume=True, **options) == read_back
    assert {name: (run / name).stat().st_mtime_ns for name in saved_at} == saved_at
    written = re.compile(r"- written: [^,]*,")  # when the report was written: the rest is the first one's, but
    rewritten = (run / "report.md").read_text().replace("[8, 16, 32]", "(8, 16, 32)")  # config.yaml keeps lists
    assert written.sub("", rewritten) == written.sub("", report)
    # ... and renamed since: the report written back was titled with the name config.yaml recorded
    run.rename(run.with_name("renamed"))
    (run.with_name("renamed") / "report.md").unlink()
    _train_tiny(tmp_path, "renamed", data, resume=True, **options)
    title = (run.with_name("renamed") / "report.md").read_text().splitlines()[0]
    assert title == "# Segmentation run `renamed`", title
    run.with_name("renamed").rename(run)
    with pytest.raises(CnnlabError, match=r"cannot resume .*b with different options \(.*epochs: 3 -> 4"):
        _train_tiny(tmp_path, "b", data, resume=True, **{**options, "epochs": 4})

    # its options were compared after the canvases were made (~9 s of MNIST); they need none, so none are made
    def no_canvases(*args, **kwargs):
        raise AssertionError("a finished run's --resume made the canvases")

    monkeypatch.setattr(task, "make_digit_segmentation", no_canvases)
    curves = (run / "learning_curves.png").read_bytes()  # deleted since: drawn again from metrics.json, the same
    (run / "learning_curves.png").unlink()
    assert _train_tiny(tmp_path, "b", None, resume=True, sizes=(16, 8, 1), **options) == read_back
    assert (run / "learning_curves.png").read_bytes() == curves
    # a report that what the run saved cannot make (its metrics.json gone) was a traceback: the results, all the same
    (run / "report.md").unlink()
    (run / "metrics.json").unlink()
    capsys.readouterr()
    # said without progress too (the CLI's -q, which then named a report.md that was not there)
    assert _train_tiny(tmp_path, "b", None, resume=True, sizes=(16, 8, 1), notes=True, **options) == read_back
    said = capsys.readouterr().out
    assert said.startswith(f"{run} is already finished; its report is missing, and what it saved cannot make one: ")
    assert "metrics.json" in said and not (run / "report.md").exists()
    with pytest.raises(CnnlabError, match=r"cannot resume .*b with different options \(.*canvas_sizes"):
        _train_tiny(tmp_path, "b", None, resume=True, sizes=(16, 8, 2), **options)
    # its config.yaml unparseable was a yaml traceback, deleted an OSError line (exit code 1): each one line, exit 2
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("{not what cnnlab wrote")
    with pytest.raises(CnnlabError, match=rf"^{re.escape(str(run / 'config.yaml'))} cannot be read as a run's config"):
        _train_tiny(tmp_path, "b", None, resume=True, sizes=(16, 8, 1), **options)
    (run / "config.yaml").unlink()
    with pytest.raises(CnnlabError, match=rf"^{re.escape(str(run / 'config.yaml'))} is missing; it records how the"):
        _train_tiny(tmp_path, "b", None, resume=True, sizes=(16, 8, 1), **options)
    (run / "config.yaml").write_text(config)


@pytest.mark.parametrize("task", ["canvases", "folder"])
def test_a_python_callers_threads_are_set_before_the_data_is_prepared(tmp_path, monkeypatch, task):
    """train_segmentation made its canvases, and train_segmentation_folder read its pairs, on torch's default threads
    (every core) under {"num_threads": 1}: only the first Trainer set them, as train_transfer had done before."""
    import cnnlab.tasks.segment_folder as segment_folder
    import cnnlab.tasks.segmentation as segmentation

    seen = []

    def preparing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt  # stop here: only the threads while preparing matter

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(KeyboardInterrupt):
            if task == "canvases":
                monkeypatch.setattr(segmentation, "make_digit_segmentation", preparing)
                train_segmentation("quick", output=str(tmp_path / "runs"), overrides={"num_threads": 1})
            else:
                monkeypatch.setattr(segment_folder, "SegmentationFolder", preparing)
                (tmp_path / "data").mkdir()
                segment_folder.train_segmentation_folder(
                    str(tmp_path / "data"), output=str(tmp_path / "runs"), overrides={"num_threads": 1}
                )
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]


def test_evaluate_scores_a_canvas_run_on_its_test_canvases_made_again(tmp_path, monkeypatch):
    """`cnnlab evaluate RUN` refused a canvas run ("its test_overlays.png shows its masks"), where its test canvases
    are a seeded function of MNIST and its record: made again, they give its test pass's scores; made from another
    MNIST (its results.json records their digest) they are refused, and a run whose config.yaml is gone is told
    where its scores are."""
    import shutil
    from pathlib import Path

    from cli_in_process import run_cnnlab

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "data"))
    from test_mnist_idx import write_fake_mnist

    mnist = write_fake_mnist(tmp_path / "mnist", train=60, test=30)
    with monkeypatch.context() as undrawn:  # the training's figures (2 of its 3 s), which evaluate does not read
        undrawn.setattr("cnnlab.tasks.segmentation.save_overlays", lambda *args: None)
        undrawn.setattr("cnnlab.train.records.plot_learning_curves", lambda *args, **kwargs: None)
        summary = train_segmentation(
            "quick",
            data_dir=str(mnist),
            output=str(tmp_path / "runs"),
            name="c",
            sizes=(4, 2, 3),
            overrides={"epochs": 1, "batch_size": 2},
            model_kwargs={"widths": (4, 8)},
            pretrain_epochs=0,
            progress=False,
        )
    run = tmp_path / "runs" / "segment" / "c"
    completed = run_cnnlab("evaluate", str(run), "--data-dir", str(mnist))
    assert completed.returncode == 0, completed.stderr
    assert f"test mIoU {summary['test']['miou']:.4f} (digits;" in completed.stdout
    scored = json.loads((run / "evaluation" / "evaluation.json").read_text())
    assert scored["test"] == summary["test"] and scored["canvases_checked"] and scored["canvases"] == 3
    assert (run / "evaluation" / "test_overlays.png").is_file()
    other = write_fake_mnist(tmp_path / "other", train=60, test=30, seed=1)
    refused = run_cnnlab("evaluate", str(run), "--data-dir", str(other))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert f"are not those {run} was tested on" in refused.stderr and "pass --data-dir with the MNIST" in refused.stderr
    with_data = run_cnnlab("evaluate", str(run), "--data", str(other))
    assert with_data.returncode == 2 and f"`cnnlab evaluate {run}`, without --data, scores it again" in with_data.stderr
    copied = shutil.copytree(run, tmp_path / "copied", ignore=shutil.ignore_patterns("config.yaml"))
    unknown = run_cnnlab("evaluate", str(copied), "--data-dir", str(mnist))
    assert unknown.returncode == 2 and "cannot be made again; its test scores are in" in unknown.stderr
    (copied / "config.yaml").write_text("{not what cnnlab wrote")  # yaml's message ran over 7 lines, a caret drawn
    unparsed = run_cnnlab("evaluate", str(copied), "--data-dir", str(mnist))
    assert unparsed.returncode == 2 and len(unparsed.stderr.strip().splitlines()) == 1, unparsed.stderr
    assert "does not say which test canvases it was scored on (while parsing a flow mapping)" in unparsed.stderr


def test_a_read_back_of_a_run_whose_sessions_record_is_unreadable_neither_warns_nor_writes(tmp_path, monkeypatch):
    """A read-back of a finished run writes no session: it warned "a fresh record of them begins" all the same."""
    run = tmp_path / "segment" / "r"
    run.mkdir(parents=True)
    (run / "results.json").write_text("{}")  # finished (the read-back itself is stood in for: no training here)
    (run / "sessions.json").write_text("[{")  # cut short
    monkeypatch.setattr("cnnlab.tasks.segmentation._read_back", lambda *args: {"read": "back"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a SessionsRecordWarning would raise
        summary = train_segmentation("quick", output=str(tmp_path), name="r", resume=True, progress=False)
    assert summary == {"read": "back"} and (run / "sessions.json").read_text() == "[{"
