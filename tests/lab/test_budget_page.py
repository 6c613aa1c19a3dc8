"""The Budget page shows exactly the figures of `cnnlab budget` for the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import CnnlabError
from cnnlab.lab.budget_page import EXERCISE_SPEC, budget_view, memory_chart, memory_unit, parse_target

EXERCISE = EXERCISE_SPEC.splitlines()


def _cli_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["budget", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_exercise_network_has_the_cli_figures_layer_by_layer_and_in_the_plan() -> None:
    view = budget_view(EXERCISE_SPEC, "3x200x300", 50, "8GiB")
    cli = _cli_json("--input", "3x200x300", *EXERCISE, "--batch", "50", "--memory", "8GiB")
    assert "parameters 903,400 " in view.summary and cli["params"] == 903_400
    headers = view.layers.headers
    body, total = view.layers.rows[:-1], view.layers.rows[-1]
    assert [row[headers.index("params")] for row in body] == [f"{layer['params']:,}" for layer in cli["layers"]]
    assert [row[headers.index("MACs")] for row in body] == [f"{layer['macs']:,}" for layer in cli["layers"]]
    assert total[headers.index("params")] == f"{cli['params']:,}" and total[headers.index("MACs")] == f"{cli['macs']:,}"
    # the line the CLI prints under the layer table was left out: why the activations kept exceed the column's sum
    inputs = cli["realistic"]["inputs_bytes"]
    assert view.layers.caption == f"The input batch is saved too ({inputs:,} bytes), by the layer that takes it."
    assert view.layers.label == f"spec: input 3x200x300, float32. {view.layers.caption}"
    memory = {row[0].strip(): row for row in view.memory.rows}
    assert memory["total"][1].startswith(f"{cli['training']['total_bytes']:,} ")
    assert memory["total"][2].startswith(f"{cli['realistic']['total_bytes']:,} ")
    assert view.plan is not None
    assert [row[-1] for row in view.plan.rows] == [f"{r['max_batch']:,}" for r in cli["plan"]["remedies"]]
    assert [row[0] for row in view.plan.rows] == [r["remedy"] for r in cli["plan"]["remedies"]]


def test_zoo_model_takes_its_own_input_size_and_no_plan_without_memory() -> None:
    view = budget_view("lenet5")
    cli = _cli_json("lenet5")
    assert view.report.params == cli["params"] and list(view.report.input_shape) == cli["input_shape"]
    assert view.plan is None


def test_chart_stacks_the_components_to_each_views_total() -> None:
    view = budget_view("conv 8 k3 same\nbn\nrelu\ngap\nflatten\ndense 10", "3x32x32", 4)
    assert view.report.buffers > 0
    figure = memory_chart(view.report)
    bars = figure.axes[0].patches
    textbook = sum(bar.get_height() for bar in bars if abs(bar.get_x() + bar.get_width() / 2) < 1e-9)
    realistic = sum(bar.get_height() for bar in bars if abs(bar.get_x() + bar.get_width() / 2 - 1) < 1e-9)
    unit, size = memory_unit(max(view.report.training["total_bytes"], view.report.realistic["total_bytes"]))
    assert figure.axes[0].get_ylabel() == unit
    assert textbook == pytest.approx(view.report.training["total_bytes"] / size)
    assert realistic == pytest.approx(view.report.realistic["total_bytes"] / size)


def test_chart_unit_follows_the_data_with_no_hidden_offset() -> None:
    """A 3x20000x20000 input at batch 64 was charted in MB with a hidden 1e7 multiplier: the axis read "1.4 MB"."""
    assert memory_unit(999) == ("B", 1) and memory_unit(1500) == ("kB", 1e3) and memory_unit(2.5e13) == ("TB", 1e12)
    view = budget_view("conv 8 k3 same", "3x20000x20000", 64)
    figure = memory_chart(view.report)
    figure.canvas.draw()
    axis = figure.axes[0]
    assert axis.get_ylabel() == "TB" and axis.yaxis.get_offset_text().get_text() == ""
    assert 1 <= max(axis.get_ylim()) < 1000


def test_target_is_a_zoo_name_or_layer_strings_never_a_file() -> None:
    assert parse_target("  resnet18 \n") == "resnet18"
    assert parse_target("conv 8 k3\n\ngap") == ["conv 8 k3", "gap"]
    assert parse_target("gap") == ["gap"]  # one word, but a layer type
    with pytest.raises(CnnlabError, match="unknown model 'pyproject.toml'; `cnnlab zoo` lists the models"):
        budget_view("pyproject.toml", "3x32x32")  # read as a misspelt model name, not opened
    with pytest.raises(CnnlabError, match="unknown layer type 'pyproject.toml'"):
        budget_view("pyproject.toml\ngap", "3x32x32")
    with pytest.raises(CnnlabError, match="enter a zoo model name"):
        parse_target(" \n ")
    with pytest.raises(CnnlabError, match="enter a zoo model name"):  # Gradio's API sends null: an AttributeError
        budget_view(None, None, 1, None, None, None)
    assert budget_view("lenet5", None, 1, None, None, None).report.optimizer == "adam"  # the dropdowns' defaults
    # What only the CLI sizes was "unknown model ...; `cnnlab zoo` lists the models", as if misspelt
    for target in ("torchvision.models:resnet18", "my_nets.py:build(width=32)", "runs/mnist/a", "net.yaml"):
        with pytest.raises(CnnlabError) as refused:
            parse_target(target)
        assert str(refused.value) == (
            "the page sizes zoo models and layer strings only (it imports no code and opens no file a form names): "
            f"`cnnlab budget {target}` sizes it (with --input CxHxW for a network without a default input size)"
        )


@pytest.mark.parametrize(
    ("typed", "refused"),
    [
        ("resnet50 --input 3x224x224 --batch 32 --memory 8GiB", "'--input'"),  # README's lines, pasted
        ("conv 8 k3 same\ngap --measure", "'--measure'"),
        ("resnet50 -b 32", "'-b'"),
        ("cnnlab budget resnet50", "'cnnlab'"),
        ('"conv 100 k3 s2 same" "conv 200 k3 s2 same"', "without quotes"),
    ],
)
def test_a_pasted_command_line_is_refused_naming_the_pages_fields(typed: str, refused: str) -> None:
    """Its options and quotes were read as layer strings: "unknown layer type 'resnet50'", "cannot understand
    '--measure'", "unknown layer type '"conv'"."""
    with pytest.raises(CnnlabError) as error:
        budget_view(typed, "3x64x64")
    assert refused in str(error.value) and "layer type" not in str(error.value)
    if refused != "without quotes":
        assert "the input CxHxW, batch and memory have fields of their own" in str(error.value)
        assert "--measure, --explain and --json are the command line's alone" in str(error.value)


@pytest.mark.parametrize("name", ["resnet5O", "ResNet50", "RESNET50"])
def test_a_misspelt_model_name_gets_the_zoos_did_you_mean(name: str) -> None:
    """It was read as a layer string: "a layer spec needs --input, the shape of one sample" (a flag the page lacks)."""
    cli = CliRunner().invoke(app, ["budget", name])
    assert cli.exit_code != 0 and "did you mean resnet50" in str(cli.exception or cli.output)
    with pytest.raises(CnnlabError, match=rf"unknown model '{name}'; did you mean resnet50\b"):
        budget_view(name)


def test_layer_strings_without_an_input_name_the_pages_field_not_the_cli_flag() -> None:
    with pytest.raises(CnnlabError, match="layer strings need the input CxHxW field") as error:
        budget_view(EXERCISE_SPEC)
    assert "--input" not in str(error.value)


def test_the_budgets_messages_and_notes_name_the_pages_fields_not_the_cli_flags() -> None:
    """The messages and notes the page shares with `cnnlab budget` named its options, which the page does not have:
    "--input 3x32x32 has 3 channels", "use that --input", "train at --batch 2 or more"."""
    cases = [
        (("lenet5", "3x32x32"), "lenet5 takes 1-channel input (e.g. 1x32x32); --input 3x32x32 has 3 channels"),
        (("lenet5", "1x32"), "(channels x height x width, e.g. 1x32x32); --input 1x32 has 2"),
        (("lenet5", "1x64x64"), "sized for 1x32x32: use that --input, or scan larger images"),
    ]  # fmt: skip
    for (target, shape), cli_words in cases:
        cli = CliRunner().invoke(app, ["budget", target, "--input", shape])
        assert cli_words in " ".join(str(cli.exception or cli.output).split())  # the command names its options
        with pytest.raises(CnnlabError) as refused:
            budget_view(target, shape)
        assert cli_words.replace("--input", "input CxHxW") in str(refused.value)
        assert "--" not in str(refused.value)
    cli = CliRunner().invoke(app, ["budget", "bn", "--input", "3x1x1"])
    assert "train at --batch 2 or more." in " ".join(cli.stdout.split())
    (note,) = budget_view("bn", "3x1x1", 1).notes
    assert note.endswith("train at batch 2 or more.") and "--" not in note


def test_a_step_too_large_for_torchs_byte_counts_is_refused_naming_batch_and_input() -> None:
    """It read "spec does not run on input 3x20000x20000: Storage size calculation overflowed with sizes=[...]", as if
    the layers did not fit that input; they do, at a smaller batch."""
    with pytest.raises(CnnlabError) as refused:
        budget_view("conv 100 k3", "3x20000x20000", 10**9)
    assert str(refused.value) == (
        "batch 1,000,000,000 of input 3x20000x20000 is too large to size: one tensor of the step, sized "
        "[1000000000, 100, 19998, 19998], would hold more bytes than PyTorch counts (2^63); enter a smaller batch or "
        "input"
    )


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (2.7, "the batch must be a whole number of samples; 2.7 is not"),  # was rounded to 3 unseen
        (1e20, "the batch 1e\\+20 is too large"),  # was torch's overflow message
        (0, "the batch must be at least 1"),  # was taken as 1
        (None, "enter a batch"),
    ],
)
def test_a_batch_that_is_not_a_whole_number_in_range_is_refused_in_words(batch: float | None, message: str) -> None:
    with pytest.raises(CnnlabError, match=message):
        budget_view("lenet5", "", batch)
    assert budget_view("lenet5", "", 4.0).report.batch_size == 4


@pytest.mark.filterwarnings("ignore:the batch must be:UserWarning")  # gr.Warning outside a request
def test_the_reason_a_budget_fails_stays_in_the_page(tmp_path: Path) -> None:
    """Every output became a red Error badge and the reason went with the toast after about ten seconds."""
    pytest.importorskip("gradio", reason="the lab extra")
    from cnnlab.lab.app import build_app

    app = build_app(tmp_path, warm=False)
    blocks = {getattr(block, "label", None): block for block in app.blocks.values()}
    assert blocks["batch"].precision is None  # Gradio would round 2.7 to 3 before the page saw it
    assert blocks["batch"].minimum is None  # Gradio refused 0 in a toast, the status left empty: the page says why
    (on_budget,) = [dependency.fn for dependency in app.fns.values() if dependency.fn.__name__ == "on_budget"]
    status, summary, _layers, _memory, chart, _plan = on_budget("lenet5", "", 2.7, "", "float32", "adam")
    assert status == "**Cannot size it:** the batch must be a whole number of samples; 2\\.7 is not"  # Markdown
    assert summary == "" and chart is None
    assert (
        on_budget("lenet5", "", 0, "", "float32", "adam")[0]
        == "**Cannot size it:** the batch must be at least 1; 0 is not"
    )
    # the message quotes what was typed: as text, not as the Markdown or HTML it may hold ("*k3*" was shown italic)
    with pytest.warns(UserWarning) as toasts:  # gr.Warning outside a request; a toast renders its message as HTML
        status, *_ = on_budget("conv_8 *k3* <b>x", "3x8x8", 2, "", "float32", "adam")
    assert str(toasts[0].message).startswith("layer 1 ('conv_8 *k3* &lt;b&gt;x'): unknown layer type")
    assert status.startswith("**Cannot size it:** layer 1 \\('conv\\_8 \\*k3\\* &lt;b&gt;x'\\): unknown layer type")
    status, summary, *_ = on_budget("lenet5", "", 2, "", "float32", "adam")
    assert status == "" and summary.startswith("parameters ")
    status, *_ = on_budget("lenet5", "", 2, "1kB", "float32", "adam")  # the plan's zeros were left unexplained
    import gradio

    (on_run,) = [dependency.fn for dependency in app.fns.values() if dependency.fn.__name__ == "on_run"]
    with pytest.raises(gradio.Error) as refused:  # every page's error toast: its words as text too
        on_run("<i>gone")
    assert "no run '&lt;i&gt;gone' under" in str(refused.value)
    assert status.startswith("No batch fits in 1,000 bytes: the least memory is ")


def test_the_notes_the_cli_prints_below_its_tables_are_on_the_page() -> None:
    """A plan where no batch fits showed a column of zeros, and a network with nothing to train zero gradients,
    without the line `cnnlab budget` prints to say why."""
    view = budget_view(EXERCISE_SPEC, "3x200x300", 50, "1MB")
    result = CliRunner().invoke(app, ["budget", "--input", "3x200x300", *EXERCISE, "--batch", "50", "--memory", "1MB"])
    assert len(view.notes) == 1 and view.notes[0].startswith("No batch fits in 1.0 MB: the least memory is ")
    assert " ".join(view.notes[0].split()) in " ".join(result.stdout.split())
    assert budget_view("gap", "3x8x8").notes[0].startswith("Nothing to train: spec has no trainable parameters")
    assert budget_view(EXERCISE_SPEC, "3x200x300", 50, "8GiB").notes == []


def test_a_layer_spec_is_sized_without_allocating_its_weights() -> None:
    """Layer strings were built with real weights (a zoo model is built on the meta device): `conv 10 k3` on a
    10^9-channel input, 90 billion parameters, ended in "DefaultCPUAllocator: can't allocate memory" (a bare error on
    the page), and a spec of 10^8 parameters took 10 s to initialise weights no figure needs."""
    view = budget_view("conv 10 k3 s2 same", "1000000000x8x8", 1, "")
    cli = _cli_json("--input", "1000000000x8x8", "conv 10 k3 s2 same")
    assert view.report.params == cli["params"] == 10 * 9 * 10**9 + 10
    assert view.summary.startswith("parameters 90,000,000,010 ")
