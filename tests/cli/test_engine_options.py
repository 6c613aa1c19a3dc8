"""Every `cnnlab train` subcommand takes the same engine options, from one definition, and passes them on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.cli.engine_options import ENGINE_OPTIONS, with_engine_options
from cnnlab.cli.train import train_app
from cnnlab.errors import CnnlabError
from cnnlab.train.config import EngineOptions

ENGINE_FLAGS = [
    "--epochs",
    "--lr",
    "--batch-size",
    "--accum",
    "--precision",
    "--grad-checkpointing",
    "--channels-last",
    "--compile",
    "--threads",
    "--device",
    "--seed",
    "--resume",
    "--name",
    "--output",
    "--tensorboard",
]
SUBCOMMANDS = sorted(command.name or command.callback.__name__ for command in train_app.registered_commands)


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


def test_the_train_group_has_the_three_tasks() -> None:
    assert SUBCOMMANDS == ["mnist", "segment", "transfer"]


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_train_subcommand_takes_every_engine_option(subcommand: str) -> None:
    text = _help("train", subcommand)
    options = set(re.findall(r"--[a-z][a-z-]*", text))
    missing = [flag for flag in ENGINE_FLAGS if flag not in options]
    assert not missing, f"`cnnlab train {subcommand}` lacks {missing}"
    assert "Engine options" in text  # listed together, in their own panel


def test_the_engine_options_are_defined_once() -> None:
    defined = {names[0].split("/")[0] for _, _, names, _ in ENGINE_OPTIONS.values()}
    assert set(ENGINE_FLAGS) <= defined
    # --accum's update equals the whole batch's only without BatchNorm (per micro-batch statistics), which --help did
    # not say: the MNIST nets, U-Nets and FCNs all normalise each micro-batch on its own
    assert "but for BatchNorm, which normalises each micro-batch" in ENGINE_OPTIONS["accum"][3]

    def retypes_an_engine_option(epochs: int = 3, engine: EngineOptions | None = None) -> None: ...

    with pytest.raises(TypeError, match="defines engine options itself: epochs"):
        with_engine_options(retypes_an_engine_option)


def test_recipe_help_names_exactly_the_recipes() -> None:
    from cnnlab.tasks.mnist import RECIPES as MNIST
    from cnnlab.tasks.segmentation import RECIPES as SEGMENT

    for subcommand, book in (("mnist", MNIST), ("segment", SEGMENT)):
        text = _help("train", subcommand)
        recipe_help = text[text.index("--recipe") : text.index("--", text.index("--recipe") + 9)]
        named = {name for name in book.names() if re.search(rf"\b{re.escape(name)}\b", recipe_help)}
        assert named == set(book.names()), f"--recipe help of {subcommand} names {named}, not {book.names()}"


def test_options_become_config_fields() -> None:
    options = EngineOptions(epochs=3, lr=0.01, batch_size="64", accum="2", precision="bf16", threads=1, device="cpu")
    assert options.overrides() == {
        "epochs": 3,
        "lr": 0.01,
        "batch_size": 64,
        "accum_steps": 2,
        "precision": "bf16",
        "num_threads": 1,
        "device": "cpu",
    }
    assert EngineOptions(grad_checkpointing=True, compile=True, channels_last=False).overrides() == {
        "grad_checkpointing": True,
        "compile": True,
        "channels_last": False,
    }
    with pytest.raises(CnnlabError, match="--resume needs the --name"):
        EngineOptions(resume=True)


def test_transfer_takes_the_engine_options_for_its_phases(tmp_path: Path) -> None:
    import torch
    import yaml
    from tests.tasks.test_transfer import make_photo_folder

    from cnnlab.tasks.feature_cache import FeatureCache

    make_photo_folder(tmp_path / "photos")
    arguments = [
        "train", "transfer", "--data", str(tmp_path / "photos"), "--model", "lenet5", "--no-pretrained",
        "--unfreeze", "1", "--min-per-class", "20", "--val-fraction", "0.25", "--test-fraction", "0.25",
        "--workers", "0", "--epochs", "1", "--lr", "0.02", "--batch-size", "8", "--accum", "2", "--device", "cpu",
        "--threads", "1", "--seed", "3", "--name", "cli", "--output", str(tmp_path / "runs"), "--quiet",
    ]  # fmt: skip
    threads_while_caching: list[int] = []
    build = FeatureCache.get_or_build

    def spy(self: FeatureCache, *args: object, **kwargs: object) -> object:
        threads_while_caching.append(torch.get_num_threads())
        return build(self, *args, **kwargs)  # type: ignore[arg-type]

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureCache, "get_or_build", spy)
        torch.set_num_threads(2)
        try:
            result = CliRunner().invoke(app, arguments)
        finally:
            torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    # the feature cache, most of a transfer run's work, is built before the phase's Trainer set --threads: it ran on
    # every core beside a run given the other
    assert threads_while_caching == [1, 1]  # train, val
    run = tmp_path / "runs" / "transfer" / "cli"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["config"]
    assert (recorded["seed"], recorded["unfreeze"], recorded["recipe"]) == (3, 1, "default")
    phase = yaml.safe_load((run / "partial" / "config.yaml").read_text())["config"]
    assert (phase["epochs"], phase["lr"], phase["batch_size"], phase["accum_steps"]) == (1, 0.02, 8, 2)
    assert (phase["num_threads"], phase["device"], phase["seed"]) == (1, "cpu", 3)
    for name in ("config.yaml", "metrics.csv", "metrics.json", "learning_curves.png", "results.json", "report.md"):
        assert (run / name).is_file(), name


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", "a\\b", ".", "..", "", "  "])
def test_a_run_name_is_one_folder_name(name: str) -> None:
    # --name ../evil wrote the run to OUTPUT/evil, outside the task's folder; a/b nested it in another run's folder.
    with pytest.raises(CnnlabError, match="is not a run name"):
        EngineOptions(name=name)


def test_ordinary_run_names_are_accepted() -> None:
    for name in ("lenet-adam-2", "run 3", "résumé_v1.2"):
        assert EngineOptions(name=name).name == name


def test_ensemble_refuses_a_path_as_its_name(tmp_path: Path) -> None:
    from cnnlab.tasks.mnist_ensemble import combine_mnist_ensemble

    with pytest.raises(CnnlabError, match="'../x' is not a run name"):
        combine_mnist_ensemble([tmp_path, tmp_path], "../x", output=tmp_path)
    assert not (tmp_path / "x").exists()


def test_one_member_of_an_ensemble_is_not_offered_for_predict_before_the_ensemble_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`train mnist -n 2 --member 0 --name E` ended with "use it with `cnnlab predict --model runs/mnist/E`", which
    fails until the other member has trained and the ensemble is saved."""
    import cnnlab.tasks.mnist

    member = {"seed": 0, "val_accuracy": 0.9, "test_accuracy": 0.9, "train_seconds": 1.0, "images_per_second": 9.0}
    run = str(tmp_path / "mnist" / "E")
    summary = {"members": [{**member, "run_dir": f"{run}/seed0"}], "missing_members": [1], "run_dir": run}
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", lambda *args, **kwargs: summary)
    result = CliRunner().invoke(app, ["train", "mnist", "-n", "2", "--member", "0", "--name", "E"])
    assert result.exit_code == 0, result.output
    assert "members still to train (seeds): [1]" in result.output and f"run: {run}\n" in result.output
    assert "cnnlab predict" not in result.output


@pytest.mark.parametrize(
    ("flags", "says"),
    [(["--member", "1"], "(--member of an ensemble whose members have all finished)"), (["--resume"], "(--resume of")],
)
def test_a_finished_ensemble_read_back_says_which_option_found_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], says: str
) -> None:
    """`train mnist -n 2 --member 1 --name E` finding both members finished said "(--resume of a finished run)",
    though no --resume was given."""
    import cnnlab.tasks.mnist

    member = {"seed": 0, "val_accuracy": 0.9, "test_accuracy": 0.9, "train_seconds": 1.0, "images_per_second": 9.0}
    run = str(tmp_path / "mnist" / "E")
    summary = {"members": [{**member, "run_dir": f"{run}/seed0"}], "run_dir": run, "finished_before": True}
    monkeypatch.setattr(cnnlab.tasks.mnist, "train_mnist", lambda *args, **kwargs: summary)
    result = CliRunner().invoke(app, ["train", "mnist", "-n", "2", "--name", "E", *flags])
    assert result.exit_code == 0, result.output
    assert "finished earlier, nothing run " + says in result.output
    assert ("--resume" in result.output) == ("--resume" in flags)


@pytest.mark.parametrize("subcommand", [["mnist", "--data-dir"], ["transfer", "--data"], ["segment", "--data"]])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "10", "--accum", "3"], "--batch-size 10 is not divisible by --accum 3: the accumulation "
         "steps that divide it are 1, 2, 5, 10"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--lr", "nan"], "--lr must be > 0 and finite, got nan"),
        (["--precision", "fp8"], "--precision 'fp8' is not one of fp32, bf16, fp16"),
        (["--seed", str(2**64)], f"--seed {2**64} is outside torch's seed range, -2**63 to 2**63 - 1"),
    ],
)  # fmt: skip
def test_a_bad_engine_option_is_named_by_its_flag(
    tmp_path: Path, subcommand: list[str], flags: list[str], message: str
) -> None:
    """The messages named TrainConfig's fields ("batch_size 10 is not divisible by accum_steps 3"), not what the user
    typed; each is refused before the data is read (the data folder does not exist)."""
    result = CliRunner().invoke(app, ["train", *subcommand, str(tmp_path / "missing"), *flags])
    assert isinstance(result.exception, CnnlabError), result.output
    assert str(result.exception) == message


def test_a_recipes_option_is_named_as_the_recipes(tmp_path: Path) -> None:
    """--accum 7 alone does not divide the recipe's batch: the message says whose batch it is."""
    from tests.tasks.test_transfer import make_photo_folder

    make_photo_folder(tmp_path / "photos")
    result = CliRunner().invoke(app, ["train", "transfer", "--data", str(tmp_path / "photos"), "--accum", "7"])
    assert isinstance(result.exception, CnnlabError), result.output
    assert str(result.exception) == (
        "the recipe's --batch-size 64 is not divisible by --accum 7: the accumulation steps that divide it are 1, 2, "
        "4, 8, 16, 32, 64"
    )
    assert not (tmp_path / "runs").exists()
