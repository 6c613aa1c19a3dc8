"""Saved models: a record that is not what a cnnlab run writes is one clear error wherever it is read."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.tasks.mnist_ensemble import member_dirs
from cnnlab.tasks.segment_predict import is_segmentation_run
from cnnlab.train.saved import build_network, load_model, save_ensemble, save_model, saved_meta

NOT_A_RECORD = "holds a JSON list, not a cnnlab model record; is it a cnnlab run?"


def _saved(folder: Path) -> Path:
    torch.manual_seed(0)
    save_model(cnnlab.create_model("lenet5"), folder, "lenet5", {}, {"task": "mnist"})
    return folder


@pytest.mark.parametrize("content", ["[1, 2]", '"lenet5"', "3"])
def test_a_model_json_that_is_not_an_object_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(CnnlabError, match="not a cnnlab model record"):
        saved_meta(tmp_path)  # was AttributeError: 'list' object has no attribute 'get'
    with pytest.raises(CnnlabError, match="not a cnnlab model record"):
        load_model(tmp_path)
    assert not is_segmentation_run(tmp_path)  # a question, answered without raising


def test_a_model_json_that_is_not_text_or_has_a_bad_meta_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(CnnlabError, match="not valid JSON"):
        load_model(tmp_path)  # was UnicodeDecodeError
    (tmp_path / "model.json").write_text(json.dumps({"arch": "lenet5", "meta": "mnist"}))
    with pytest.raises(CnnlabError, match="its 'meta' is a JSON str"):
        saved_meta(tmp_path)  # was "dictionary update sequence element #0 has length 1"
    (tmp_path / "model.json").write_text(json.dumps({"arch": ["lenet5"]}))
    with pytest.raises(CnnlabError, match="'arch' is \\['lenet5'\\], not a name"):
        load_model(tmp_path)


def test_a_save_stopped_midway_leaves_the_earlier_model_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights were written in place: a run stopped while it saved its model left a truncated model.safetensors,
    and `predict`/`evaluate` on it ended in safetensors' "incomplete metadata" traceback."""
    import safetensors.torch

    earlier = load_model(_saved(tmp_path))
    write = safetensors.torch.save_file

    def stopped_midway(tensors: dict[str, torch.Tensor], filename: str) -> None:
        write(tensors, filename)
        with open(filename, "r+b") as f:  # what a kill during the write leaves
            f.truncate(f.seek(0, 2) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        save_model(torch.nn.Linear(3, 2), tmp_path, "lenet5", {}, {"task": "mnist"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    reloaded = load_model(tmp_path)  # the earlier model, whole
    assert all(
        torch.equal(a, b) for a, b in zip(earlier.state_dict().values(), reloaded.state_dict().values(), strict=True)
    )
    weights = tmp_path / "model.safetensors"  # a file cut elsewhere (a copy, an older run): said in one line
    for size in (0, weights.stat().st_size // 2):
        with open(weights, "r+b") as f:
            f.truncate(size)
        with pytest.raises(CnnlabError, match="model.safetensors is damaged, not a whole safetensors file"):
            load_model(tmp_path)  # was safetensors' SafetensorError, a traceback in predict and in the lab


def test_weights_that_are_not_safetensors_are_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model.safetensors overwritten by another file (an export given -o RUN/model.safetensors) ended predict in
    safetensors' "header too large" traceback."""
    from PIL import Image

    (_saved(tmp_path / "run") / "model.safetensors").write_bytes(b"PK\x03\x04 a TorchScript zip, not weights" * 8)
    with pytest.raises(
        CnnlabError, match=r"model.safetensors is damaged, not a whole safetensors file \(.*\); copy the run again"
    ):
        load_model(tmp_path / "run")
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    monkeypatch.setattr(sys, "argv", ["cnnlab", "predict", "-m", str(tmp_path / "run"), str(tmp_path / "digit.png")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "is damaged, not a whole safetensors file" in error
    # one flipped bit inside a tensor still parses: it was loaded, predicted with and exported without a word
    weights = _saved(tmp_path / "flipped") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    for command in (
        ["predict", "-m", str(weights.parent), str(tmp_path / "digit.png")],
        ["export", str(weights.parent)],
    ):
        monkeypatch.setattr(sys, "argv", ["cnnlab", *command])
        with pytest.raises(SystemExit) as exit_info:
            main()
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.count("\n") == 1
        assert re.search(
            r"model.safetensors is damaged: its SHA-256 is \w{16}\.\.\., not the \w{16}\.\.\. model.json", error
        )
    assert sorted(path.name for path in weights.parent.iterdir()) == ["model.json", "model.safetensors"]  # no export


def test_an_ensemble_json_without_members_is_a_clear_error(tmp_path: Path) -> None:
    _saved(tmp_path / "a")
    (tmp_path / "e").mkdir()
    ensemble = save_ensemble(tmp_path / "e", [tmp_path / "a"], {"task": "mnist"})
    assert isinstance(load_model(ensemble.parent), cnnlab.train.saved.Ensemble)
    for members in ([], "a", [1]):
        ensemble.write_text(json.dumps({"members": members}))
        with pytest.raises(CnnlabError, match="does not list its members' folders"):
            load_model(ensemble.parent)  # was KeyError / a stack of no tensors / a TypeError
        with pytest.raises(CnnlabError, match="does not list its members' folders"):
            member_dirs([ensemble.parent])


@pytest.mark.parametrize("command", [["evaluate", "RUN"], ["export", "RUN", "-o", "x.onnx"], ["fcn", "convert", "RUN"]])
def test_commands_refuse_a_model_json_that_is_not_an_object_in_one_line(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model.json").write_text("[1, 2]")
    monkeypatch.setattr(sys, "argv", ["cnnlab", *(str(tmp_path) if word == "RUN" else word for word in command)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'model.json'} {NOT_A_RECORD}\n"


def test_a_folder_without_a_saved_model_says_what_it_holds(tmp_path):
    """Every such folder was "holds no model.json or ensemble.json; is it a finished cnnlab run?": a run stopped
    mid-training (its checkpoint there, to resume), an empty folder and an `fcn convert` folder alike."""
    from cnnlab.train.saved import spec_path

    stopped = tmp_path / "baseline-20261206-100408"
    stopped.mkdir()
    (stopped / "checkpoint.pt").write_bytes(b"")
    (stopped / "config.yaml").write_text("epochs: 3\n")
    with pytest.raises(
        CnnlabError, match=r"has not finished \(checkpoint.pt is there\).*with --resume \(and --name baseline-2026"
    ):
        spec_path(stopped)
    # a run training now (or killed outright): "run it again with --resume" would start a second process on it
    session = {"command": "cnnlab train mnist --name live", "started": "2026-12-07T11:43:57+00:00", "first_epoch": 0,
               "last_epoch": 2, "wall_seconds": None, "ended": None}  # fmt: skip
    (stopped / "sessions.json").write_text(json.dumps([session]))
    with pytest.raises(CnnlabError, match=r"has not finished: the session `cnnlab train mnist --name live` \(started "
                       r"2026-12-07T11:43:57\+00:00, 2 epochs finished\) has not ended, so it is still training or its "
                       r"process was killed; wait for it to save its model \(if it was killed, run that command again "
                       r"with --resume\)$"):  # fmt: skip
        spec_path(stopped)
    # stopped in its first epoch, before any checkpoint: was "(it holds config.yaml, sessions.json); is it a finished
    # cnnlab run?"
    (stopped / "checkpoint.pt").unlink()
    (stopped / "sessions.json").write_text(json.dumps([{**session, "last_epoch": 0, "ended": "interrupted"}]))
    with pytest.raises(CnnlabError, match=r"its training was interrupted before it saved a model \(sessions.json "
                       r"records it\); run the command that started it again with --resume"):  # fmt: skip
        spec_path(stopped)
    # an ensemble training its second member: was "(it holds seed0, seed1); is it a finished cnnlab run?"
    ensemble = tmp_path / "pair"
    save_model(torch.nn.Linear(2, 2), ensemble / "seed0", "lenet5", {}, {"task": "mnist"})
    (ensemble / "seed1").mkdir()
    unfinished = (r"pair holds no model.json or ensemble.json: it is an ensemble whose training has not finished "
                  r"\(seed0 saved, seed1 not yet\); pass a finished member's folder \(.*pair/seed0\) to use it alone, "
                  r"or wait for it, or if it stopped, run .* --resume")  # fmt: skip
    with pytest.raises(CnnlabError, match=unfinished):
        spec_path(ensemble)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnlabError, match="holds no model.json or ensemble.json; it is empty"):
        spec_path(tmp_path / "empty")
    other = tmp_path / "fcn"
    other.mkdir()
    for name in ("fcn.json", "fcn.safetensors", "a", "b", "c", "d"):
        (other / name).write_text("")
    with pytest.raises(CnnlabError, match=r"\(it holds a, b, c, d, fcn.json and 1 more\); is it a finished cnnlab run"):
        spec_path(other)


def test_an_experiments_run_is_named_as_one_with_what_to_use_instead(tmp_path: Path) -> None:
    """`evaluate runs/experiment/NAME/VARIANT/seed0` asked "is it a finished cnnlab run?" (its variant's folder: "an
    ensemble whose training has not finished"), though the run had finished: an experiment saves no model.json."""
    from cnnlab.train.saved import spec_path

    run = tmp_path / "pool-vs-stride" / "max-pool" / "seed0"
    run.mkdir(parents=True)
    for name in ("config.yaml", "finished.json", "finished.safetensors", "metrics.json"):
        (run / name).write_text("")
    (tmp_path / "pool-vs-stride" / "report.md").write_text("")
    for given, what in ((run, "is a run"), (run.parent, "holds runs"), (run.parent.parent, "holds runs")):
        with pytest.raises(CnnlabError) as refused:
            spec_path(given)
        said = str(refused.value)
        assert f": it {what} of `cnnlab experiment`, whose results are in " in said, said
        assert said.endswith("train one with `cnnlab train mnist` (or transfer, segment) and pass its run folder")
        assert "is it a finished cnnlab run" not in said and "an ensemble whose" not in said


def test_a_phase_folder_of_a_transfer_run_names_the_run_to_pass(tmp_path: Path) -> None:
    """`export RUN/head` (a finished transfer run's phase folder, which keeps its checkpoint.pt) said the training had
    not finished and to resume it with --name head; an unfinished run's phase asked for --name of the phase too."""
    from typer.testing import CliRunner

    from cnnlab.cli import app
    from cnnlab.train.config import TrainConfig, save_config
    from cnnlab.train.saved import spec_path

    run = tmp_path / "transfer" / "q1"
    (run / "head").mkdir(parents=True)
    (run / "head" / "checkpoint.pt").write_bytes(b"")
    save_config(TrainConfig(extra={"task": "transfer", "phase": "head"}), run / "head" / "config.yaml")
    with pytest.raises(CnnlabError, match=r"it is the 'head' phase of the run in .*q1, whose training has not "
                       r"finished; .* --resume \(and --name q1 if"):  # fmt: skip
        spec_path(run / "head")
    # the unfinished run itself (its checkpoint in its phase's folder): was "(it holds head); is it a finished run?"
    unfinished = r"q1 holds no model.json or ensemble.json: its training has not finished \(its 'head' phase stopped, "
    with pytest.raises(CnnlabError, match=unfinished + r"head/checkpoint.pt is there\).* --resume \(and --name q1 if"):
        spec_path(run)
    # while the run trains (its session not ended), its phase said to resume it, as the run said to wait for it
    session = {"command": "cnnlab train transfer --name q1", "started": "2026-12-07T11:43:57+00:00", "ended": None}
    (run / "sessions.json").write_text(json.dumps([session]))
    training = r"the session `cnnlab train transfer --name q1` \(started 2026-12-07T11:43:57\+00:00\) has not ended, " \
        r"so it is still training or its process was killed; wait for it to save its model \(if it was killed, run " \
        r"that command again with --resume\)$"  # fmt: skip
    with pytest.raises(CnnlabError, match=r"it is the 'head' phase of the run in .*q1, whose training has not "
                       r"finished: " + training):  # fmt: skip
        spec_path(run / "head")
    with pytest.raises(CnnlabError, match=r"q1 holds no model.json or ensemble.json: its training has not finished: "
                       + training):  # fmt: skip
        spec_path(run)
    (run / "sessions.json").unlink()
    save_model(torch.nn.Linear(2, 2), run, "lenet5", {}, {"task": "transfer"})
    message = rf"head holds no model.json or ensemble.json: it is the 'head' phase of the run in {run}, which holds " \
        rf"the model; pass {run}$"  # fmt: skip
    with pytest.raises(CnnlabError, match=message):
        spec_path(run / "head")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for command in (["export", str(run / "head")], ["predict", "-m", str(run / "head"), str(tmp_path / "x.png")]):
        result = CliRunner().invoke(app, command)
        assert isinstance(result.exception, CnnlabError) and f"pass {run}" in str(result.exception)
        assert "not finished" not in str(result.exception)


def test_an_exports_preprocessing_record_is_named_with_the_run_to_pass(tmp_path: Path) -> None:
    """`predict -m RUN/model.pt.preprocessing.json` said it "is not a cnnlab model record ('arch'); re-save the
    model", of a file `cnnlab export` wrote and a run that needs no re-saving."""
    from cnnlab.tasks.predict import load_predictor
    from cnnlab.train.saved import spec_path

    run = tmp_path / "run"
    save_model(torch.nn.Linear(2, 2), run, "lenet5", {}, {"task": "transfer"})
    record = {"format": "torchscript", "load": "torch.jit.load(path)", "classes": ["a", "b"]}
    (run / "model.pt.preprocessing.json").write_text(json.dumps(record))
    with pytest.raises(
        CnnlabError,
        match=rf"model.pt.preprocessing.json is the preprocessing record `cnnlab export` wrote for {run / 'model.pt'}, "
        rf"not a saved model; pass the run's folder, {run}$",
    ):
        load_model(run / "model.pt.preprocessing.json")
    with pytest.raises(CnnlabError, match=rf"not a saved model; pass the run's folder, {run}$"):  # `predict -m`
        load_predictor(str(run / "model.pt.preprocessing.json"))
    (tmp_path / "m.onnx.preprocessing.json").write_text(json.dumps(record))  # exported elsewhere with -o
    with pytest.raises(CnnlabError, match="wrote for .*m.onnx, not a saved model; pass the run directory it was"):
        spec_path(tmp_path / "m.onnx.preprocessing.json")


def test_an_exported_model_given_as_a_saved_one_is_named_with_the_run_to_pass(tmp_path: Path) -> None:
    """`predict -m RUN/model.pt` (a file `cnnlab export` wrote) said it "is a file other than a model.json", naming
    neither what the file is nor which run to pass."""
    from cnnlab.tasks.predict import load_predictor
    from cnnlab.train.saved import spec_path

    run = tmp_path / "run"
    save_model(torch.nn.Linear(2, 2), run, "lenet5", {}, {"task": "transfer"})
    (run / "model.pt").write_bytes(b"not read")
    record = {"format": "torchscript", "load": "torch.jit.load(path)", "classes": ["a", "b"]}
    (run / "model.pt.preprocessing.json").write_text(json.dumps(record))
    expected = (
        rf"model.pt is a model `cnnlab export` wrote \(outside cnnlab: torch.jit.load\(path\), with "
        rf"model.pt.preprocessing.json for the preprocessing\); cnnlab's commands read the saved run: pass the run's "
        rf"folder, {run}$"
    )
    with pytest.raises(CnnlabError, match=expected):  # `predict -m`
        load_predictor(str(run / "model.pt"))
    with pytest.raises(CnnlabError, match=expected):  # export, explain, budget: load_model
        load_model(run / "model.pt")
    (tmp_path / "m.onnx").write_bytes(b"")
    (tmp_path / "m.onnx.preprocessing.json").write_text("{not json")
    with pytest.raises(CnnlabError, match="m.onnx is a model `cnnlab export` wrote; .* the run directory it was"):
        spec_path(tmp_path / "m.onnx")
    (tmp_path / "other.pt").write_bytes(b"")  # no record beside it: the message for any other file
    with pytest.raises(CnnlabError, match="a file other than a model.json"):
        load_predictor(str(tmp_path / "other.pt"))


def test_the_recorded_command_is_one_a_shell_runs_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `python -m cnnlab` the records (config.yaml, report.md, answers.md) said `__main__.py train ...`, and
    arguments with spaces lost their quotes."""
    from cnnlab.train.config import environment_record

    main = str(Path(cnnlab.__file__).with_name("__main__.py"))
    monkeypatch.setattr("sys.argv", [main, "budget", "conv 8 k3", "--input", "1x28x28"])
    assert environment_record()["command"] == "cnnlab budget 'conv 8 k3' --input 1x28x28"
    monkeypatch.setattr("sys.argv", ["/usr/local/bin/cnnlab", "zoo"])
    assert environment_record()["command"] == "cnnlab zoo"


def test_the_recorded_command_of_a_torchrun_process_names_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-process run's config.yaml and report.md said `cnnlab train transfer ...`, a single-process command."""
    from cnnlab.train.config import environment_record

    main = str(Path(cnnlab.__file__).with_name("__main__.py"))
    monkeypatch.setattr("sys.argv", [main, "train", "mnist", "--name", "ddp2"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # torchrun's command line, where it can be read, is kept whole: a typed --standalone was dropped
    launched = ["/usr/bin/python3", "/usr/local/bin/torchrun", "--standalone", "--nproc_per_node", "2", "-m", "cnnlab"]
    parent = [launched + ["train", "mnist", "--name", "ddp2"]]
    monkeypatch.setattr("cnnlab.train.config._parent_command", lambda: parent[0])
    expected = "torchrun --standalone --nproc_per_node 2 -m cnnlab train mnist --name ddp2"
    assert environment_record()["command"] == expected
    parent[0] = ["python", "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "cnnlab", "train", "mnist"]
    parent[0] += ["--name", "ddp2"]
    assert environment_record()["command"] == "torchrun --nproc-per-node=2 -m cnnlab train mnist --name ddp2"
    # else rebuilt from its environment, saying that its other options are not known
    parent[0] = ["/bin/bash", "launch.sh"]
    rebuilt = "torchrun --nproc_per_node 2 -m cnnlab train mnist --name ddp2  # rebuilt: torchrun's other options"
    assert environment_record()["command"].startswith(rebuilt)
    parent[0] = None
    monkeypatch.setenv("WORLD_SIZE", "8")  # two nodes of four
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert environment_record()["command"].startswith("torchrun --nnodes 2 --nproc_per_node 4 -m cnnlab train")
    assert "are not known" in environment_record()["command"]


def test_an_ensemble_refuses_a_member_replaced_after_it_was_made(tmp_path: Path) -> None:
    """`train mnist --overwrite` of a run that `cnnlab ensemble` had averaged swapped the ensemble's member unsaid:
    evaluate and predict gave another model's numbers under a report that still quoted the old ones."""
    from cnnlab.models import create_model

    members = [tmp_path / "a", tmp_path / "b"]
    for seed, member in enumerate(members):
        torch.manual_seed(seed)
        save_model(create_model("mnist_net_small"), member, "mnist_net_small", {}, {})
    (tmp_path / "ens").mkdir()
    save_ensemble(tmp_path / "ens", members, {})
    load_model(tmp_path / "ens")  # as made: loads

    record = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    torch.manual_seed(7)
    save_model(create_model("mnist_net_small"), members[0], "mnist_net_small", {}, {})  # the run trained again
    with pytest.raises(CnnlabError, match=r"a was replaced after the ensemble .*ens was made"):
        load_model(tmp_path / "ens")
    weights = members[0] / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:100])  # replaced and damaged: the digest, checked first, says replaced
    with pytest.raises(CnnlabError, match=r"a was replaced after the ensemble .*ens was made"):
        load_model(tmp_path / "ens")
    # A member cut short after it finished, before a resumed `train mnist --ensemble` (which reuses finished members
    # unread) recorded the ensemble's digests: the damaged file's digest was recorded, and only loading said damaged.
    made = (tmp_path / "ens" / "ensemble.json").read_text()
    with pytest.raises(CnnlabError, match=r"cannot save the ensemble .*ens: .*a.model.safetensors is damaged, not a "):
        save_ensemble(tmp_path / "ens", members, {})
    assert (tmp_path / "ens" / "ensemble.json").read_text() == made  # the ensemble as it was made
    weights.unlink()
    with pytest.raises(CnnlabError, match=r"cannot save the ensemble .*ens: .*a.model.safetensors is missing"):
        save_ensemble(tmp_path / "ens", members, {})
    weights.write_bytes(whole)

    del record["digests"]  # an ensemble saved before digests were recorded loads as it did
    (tmp_path / "ens" / "ensemble.json").write_text(json.dumps(record))
    assert len(load_model(tmp_path / "ens").members) == 2
    # a member renamed on its own: the error named only "no saved model at .../a/model.json", not the ensemble
    shutil.move(members[0], tmp_path / "renamed")
    missing = r"^\S+ens is an ensemble whose member '../a' is not there \(\S+a: moved or renamed\?\); its members are"
    for read in (load_model, build_network):
        with pytest.raises(CnnlabError, match=missing):
            read(tmp_path / "ens")


def test_records_saved_before_they_said_their_kind_are_read_in_the_current_layout(tmp_path: Path) -> None:
    """A segmenter kept its mean/std under "normalisation" and its recipe under "model", a transfer run its mean/std
    only inside its weights' record, MNIST runs and canvas segmenters no classes, an ensemble no task: a reader had
    to know which kind a record was to find them. Records written so (by hand here, as those runs wrote them) are
    read as the tasks write them now, and are predicted with as before."""
    from cnnlab.models import PretrainedCfg
    from cnnlab.tasks.predict import load_predictor

    network = cnnlab.create_model("lenet5", num_classes=2, in_chans=3)
    cfg = PretrainedCfg.for_model(network).to_dict()
    old = {
        "transfer": {"task": "transfer", "classes": ["a", "b"], "preprocessing": cfg, "views": ["identity"]},
        "segment": {
            "task": "segment",
            "model": "unet",
            "classes": ["bg", "x"],
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3},
            "max_side": None,
        },  # fmt: skip
        "canvases": {"task": "segment", "recipe": "quick", "seed": 0},
        "mnist": {"task": "mnist", "recipe": "quick", "seed": 0},
    }
    for name, meta in old.items():
        save_model(network, tmp_path / name, "lenet5", {"num_classes": 2, "in_chans": 3}, meta)
    digits = [str(digit) for digit in range(10)]
    transfer = saved_meta(tmp_path / "transfer")
    assert transfer["kind"] == "image-classifier" and transfer["classes"] == ["a", "b"]
    assert transfer["normalisation"] == {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    segment = saved_meta(tmp_path / "segment")
    assert (segment["kind"], segment["recipe"], segment["normalisation"]["mean"]) == ("segmenter", "unet", [0.5] * 3)
    assert is_segmentation_run(tmp_path / "segment") and not is_segmentation_run(tmp_path / "canvases")
    canvases = saved_meta(tmp_path / "canvases")
    assert canvases["kind"] == "digit-segmenter" and canvases["classes"] == ["background", *digits]
    assert "normalisation" not in canvases  # its network takes [0, 1] as it is
    assert (saved_meta(tmp_path / "mnist")["kind"], saved_meta(tmp_path / "mnist")["classes"]) == (
        "digit-classifier",
        digits,
    )
    (tmp_path / "ensemble").mkdir()
    save_ensemble(tmp_path / "ensemble", [tmp_path / "mnist"], {"recipe": "quick"})  # as `train mnist -n` saved it
    ensemble = saved_meta(tmp_path / "ensemble")
    assert (ensemble["task"], ensemble["kind"], ensemble["recipe"]) == ("mnist", "digit-classifier", "quick")
    assert load_predictor(str(tmp_path / "transfer")).classes == ["a", "b"]  # read as before
    with pytest.raises(CnnlabError, match="segmentation run, not a classifier; `cnnlab predict --model RUN IMAGE"):
        load_predictor(str(tmp_path / "segment"))
    with pytest.raises(CnnlabError, match="segmentation run, not a classifier; it was trained on MNIST canvases"):
        load_predictor(str(tmp_path / "canvases"))


def test_an_export_record_of_the_earlier_layout_is_read_in_the_current_one(tmp_path: Path) -> None:
    """Exports written before records had a layout and a kind kept mean/std at the top (a segmenter), under "record"
    (a photo classifier) or nowhere (MNIST): `read_export_record` gives them in the one documented layout."""
    from cnnlab.train.saved import EXPORT_LAYOUT, read_export_record

    common = {"format": "onnx", "load": "onnxruntime.InferenceSession(path), input name 'images'", "decode": "..."}
    old = {  # as `cnnlab export` wrote them up to 2026-12-07, the keys that tell the kinds apart
        "photo.onnx": {**common, "resize_shorter_side_to": 36, "center_crop": [32, 32], "views": ["identity", "hflip"],
                       "record": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}, "classes": ["a"]},
        "masks.onnx": {**common, "max_side": None, "classes": ["bg", "x"], "mean": [0.5] * 3, "std": [0.25] * 3},
        "digits.onnx": {**common, "prepare_steps": {"canvas": 28}, "views": ["identity"], "classes": ["0"]},
    }  # fmt: skip
    for name, record in old.items():
        (tmp_path / f"{name}.preprocessing.json").write_text(json.dumps(record))
    photo = read_export_record(tmp_path / "photo.onnx")
    assert (photo["layout"], photo["kind"], photo["views"]) == (
        EXPORT_LAYOUT,
        "image-classifier",
        ["identity", "hflip"],
    )
    assert photo["normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    masks = read_export_record(tmp_path / "masks.onnx.preprocessing.json")  # the record itself, or the file
    assert (masks["kind"], masks["views"], masks["normalisation"]) == (
        "segmenter",
        ["identity"],
        {"mean": [0.5] * 3, "std": [0.25] * 3},
    )
    assert "mean" not in masks and "std" not in masks
    digits = read_export_record(tmp_path / "digits.onnx")
    assert digits["kind"] == "digit-classifier" and digits["normalisation"] == {"mean": [0.1307], "std": [0.3081]}
    # the shape each file takes, which records before input_shape gave in words ("[N, 3, H, W]") or not at all
    shapes = [record["input_shape"] for record in (photo, masks, digits)]
    assert shapes == [["N", 3, 32, 32], ["N", 3, "H", "W"], ["N", 1, 28, 28]]
    (tmp_path / "other.onnx.preprocessing.json").write_text(json.dumps(common))
    with pytest.raises(CnnlabError, match="not a record `cnnlab export` wrote"):
        read_export_record(tmp_path / "other.onnx")
    with pytest.raises(CnnlabError, match="missing; export the run again"):
        read_export_record(tmp_path / "gone.onnx")


def test_an_unfinished_run_the_answers_sheet_trained_is_continued_by_the_sheet_not_by_resume(tmp_path: Path) -> None:
    """predict, evaluate, explain, export and ensemble on the MNIST run of an interrupted `cnnlab answers` said "run
    the command that started it again with --resume (and --name quick ...)": answers has neither option; run again
    without --overwrite, it continues its runs. A run `train` started keeps the --resume words."""
    from cnnlab.train.saved import spec_path

    run = tmp_path / "quick"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    session = {"command": "cnnlab answers --output sheet", "started": "2026-12-07T11:43:57+00:00", "ended": None}
    again = "run `cnnlab answers --output sheet` again"
    for ended, stopped in ((None, "run that command again"), ("interrupted", again)):
        (run / "sessions.json").write_text(json.dumps([{**session, "ended": ended}]))
        with pytest.raises(CnnlabError) as refused:
            spec_path(run)
        assert "--resume" not in str(refused.value) and "--name" not in str(refused.value)
        assert f"{stopped} without --overwrite: the sheet continues its runs" in str(refused.value)
    (run / "checkpoint.pt").unlink()  # interrupted in its first epoch
    with pytest.raises(CnnlabError, match=r"sessions.json records it\); run `cnnlab answers --output sheet` again wi"):
        spec_path(run)
    (run / "sessions.json").write_text(json.dumps([{**session, "command": "cnnlab train mnist", "ended": "failed"}]))
    with pytest.raises(CnnlabError, match=r"again with --resume \(and --name quick if the run was named by its start"):
        spec_path(run)
