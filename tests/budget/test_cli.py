"""`cnnlab budget` from the command line: output, JSON, and one-line errors with exit code 2.

The command runs in this process, through `cnnlab.cli.main` as the console script does (a subprocess per test
spent most of its time importing torch; tests/cli_in_process.py).
"""

import json
import re
from pathlib import Path

import pytest

from cli_in_process import Completed, run_cnnlab
from cnnlab.budget.core import parse_memory
from cnnlab.errors import CnnlabError

EXERCISE = ["conv 100 k3 s2 same", "conv 200 k3 s2 same", "conv 400 k3 s2 same"]


def run(*args: str) -> Completed:
    return run_cnnlab("budget", *args)


def test_json_output():
    result = run("--input", "3x200x300", *EXERCISE, "--batch", "50", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["params"] == 903_400
    assert [layer["output_shape"] for layer in data["layers"]] == [[100, 100, 150], [200, 50, 75], [400, 25, 38]]
    # the keys README promises, no more and no fewer (they were documented nowhere)
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"`--json` keys: (.*?)\.\s", readme, re.DOTALL).group(1)  # the sentence, however wrapped
    layer_keys = set(re.findall(r"`(\w+)`", re.search(r"`layers` \((.*?)\)", listed, re.DOTALL).group(1)))
    optional = set(re.findall(r"`(\w+)`", re.split(r"with their\s+options", listed)[1]))
    top_level = re.sub(r"`layers` \(.*?\)", "`layers`", listed, flags=re.DOTALL)
    assert set(re.findall(r"`(\w+)`", top_level)) - optional == set(data)
    assert set(data["layers"][0]) == layer_keys
    assert optional == {"measured", "plan", "explanation", "input_note", "run_training_step", "detection", "recurrent"}


def test_json_with_explain_carries_the_arithmetic():
    """--json --explain printed the JSON alone: the explanation was dropped without a word."""
    result = run("--input", "3x200x300", *EXERCISE, "--batch", "50", "--json", "--explain")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "= 903,400 parameters" in data["explanation"] and "565,613,600" in data["explanation"]
    assert "explanation" not in json.loads(run("--input", "3x200x300", *EXERCISE, "--json").stdout)


def test_a_spec_file_name_with_brackets_is_shown_as_written(tmp_path):
    spec = tmp_path / "net[v2].yaml"  # Rich markup would read [v2] as a style and drop it from the table title
    spec.write_text("input: 1x28x28\nlayers:\n  - conv 8 k3 s1 same relu\n  - gap\n  - dense 10\n")
    result = run(str(spec))
    assert result.returncode == 0, result.stderr
    assert "net[v2]: input 1x28x28" in result.stdout


def test_explain_output():
    result = run("--input", "3x200x300", *EXERCISE, "--batch", "50", "--explain")
    assert result.returncode == 0, result.stderr
    assert "903,400" in result.stdout and "565,613,600" in result.stdout


def test_explain_with_depth_and_measure_explains_those_rows_and_sets_measured_beside_estimated():
    """--explain --depth derived the per-sample bytes from the depth rows' column ("2,008 - -30,704") and a spec's
    section 1 never named the rows the table shows; with --measure section 7 gave the ratios without the estimates."""
    result = run("lenet5", "--depth", "1", "--explain", "--measure", "--no-layers")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert " - -" not in text
    assert "per sample = every layer's output bytes (not the table's rows at --depth 1)" in text
    assert "= 59,224 - 26,512 = 32,712" in text and "1 x 32,712 = 32,712 bytes" in text
    assert "(rows at --depth 1, as the table" in text and "features (Sequential): output 120x1x1, params 50,692" in text
    assert "features (Sequential) saves 32,000 bytes (measured 32,000)" in text
    assert "saved for backward: estimate 36,432, measured 36,432 bytes, estimate/measured = 1.0000" in text
    spec = run("--input", "3x20x30", "conv 10 k3 s2 same relu", "maxpool", "conv 20 k3", "--depth", "0", "--explain")
    assert spec.returncode == 0, spec.stderr
    assert (
        "the table's rows at --depth 0 hold the layers above:\nSequential (Sequential): output 20x3x5, params 2,100"
        in (spec.stdout)
    )
    assert "= 14,600 - 6,000 = 8,600" in spec.stdout  # the spec layers' column, not the one row's 1,200


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--input", "3x32x32", "conv 8 k3", "frobnicate 2"], "layer 2"),
        (["--input", "3x-32x32", "conv 8 k3"], "input"),
        (["--input", "3x4x4", "conv 8 k7 valid"], "layer 1"),
        (["--input", "3x32x32", "conv 8 k3", "--dtype", "float12"], "dtype"),
        (["--input", "3x32x32", "conv 8 k3", "dense 10"], "layer 2"),
        (["--input", "3x224", "resnet50"], "takes one sample as 3 sizes"),  # was "Invalid channel dimensions"
        (["--input", "1x224x224", "resnet50"], "takes 3-channel input (e.g. 3x224x224)"),
        (["--input", "1x64x64", "lenet5"], "sized for 1x32x32"),  # the dense layers fix the input size
        # the smallest inputs torchvision documents for these architectures: 75x75 and 63x63
        (["--input", "3x74x300", "inception_v3"], "the smallest square input it takes is 3x75x75"),
        (["--input", "3x32x32", "alexnet"], "the smallest square input it takes is 3x63x63"),
        (["--input", "1x28x28", "lenet5"], "the smallest square input it takes is 1x32x32"),
        (["lenet5", "--depth", "-1"], "--depth -1 must be >= 0"),  # it was taken as "leaves"
        (["maxpool"], "a layer spec needs --input"),  # one word, one layer: it was "unknown model 'maxpool'"
        (["--input", "3x32x32", "conv", "8", "k3", "maxpool"], 'one quoted argument, e.g. "conv 8 k3" "maxpool"'),
        (["--input", "1x28x28", "dropout 1.2.3"], "the dropout rate '1.2.3' must be a number"),  # was a traceback
        (["--input", "1x28x28", "dropout ."], "the dropout rate '.' must be a number"),
        (["--input", "1x28x28", "flatten", "dense 10 k5 s3 same"], "dense takes no 'k5', 's3', 'same'"),  # ignored
        (["--input", "1x28x28", "conv 8 k3 in=3"], "declared in=3 but the input has 1 channel"),  # was not checked
        # layer strings were asked for --input before being read: "a layer spec needs --input"
        (["resnet18", "resnet50"], "resnet18 is a zoo model, not a layer: budget one model per command"),
        (["conv 8 k3", "frob 2"], "layer 2 ('frob 2'): unknown layer type 'frob'"),
        # nadam and none were taken but not named
        (["--input", "1x8x8", "conv 2 k3", "--optimizer", "lion"], "use one of sgd, momentum, adam, adamw, nadam or"),
        # was torch's "spec does not run on input 3x20000x20000: Storage size calculation overflowed with sizes=[...]"
        (
            ["--input", "3x20000x20000", "conv 100 k3", "--batch", "1000000000"],
            "batch 1,000,000,000 of input 3x20000x20000 is too large to size: one tensor of the step, sized "
            "[1000000000, 100, 19998, 19998], would hold more bytes than PyTorch counts (2^63); enter a smaller batch",
        ),
        # a traceback (exit 1): torch's "Overflow when unpacking long long" building the conv's weight
        (["--input", "99999999999999999999x8x8", "conv 8 k3"], "spec on input 99999999999999999999x8x8 is too large"),
        (["--input", "461168601842738790", "dense 8"], "weights, sized [8, 461168601842738790], would hold more"),
        # was "spec does not run on input 1x8x8: empty(): argument 'size' failed to unpack the object ...": the batch
        (
            ["--input", "1x8x8", "conv 2 k3", "--batch", "100000000000000000000"],
            "batch 100,000,000,000,000,000,000 of input 1x8x8 is too large to size: the input batch alone would hold",
        ),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1PiB", 2**50),  # was refused: "cannot read memory size '1PiB'"
        ("2 pib", 2 * 2**50),
        ("1.5PB", 1_500_000_000_000_000),
        ("1EiB", 2**60),
        ("16 GiB", 16 * 2**30),
        ("16GiB", 16 * 2**30),
        (" 16 gib ", 16 * 2**30),
        ("16GB", 16_000_000_000),
        ("16G", 16 * 2**30),
        ("2TiB", 2 * 2**40),
        ("2 TB", 2_000_000_000_000),
        ("512MiB", 512 * 2**20),
        ("512 mb", 512_000_000),
        ("4096", 4096),
        ("4096B", 4096),
        ("4096 bytes", 4096),
        ("1 byte", 1),
        ("1kB", 1000),
        ("1KiB", 1024),
    ],
)
def test_memory_sizes_in_every_unit_are_read(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "1.2.3GB", "16 QB", "-1GB", "1 GiBs", "1e9"])
def test_an_unreadable_memory_size_is_one_line(text):
    with pytest.raises(CnnlabError, match="cannot read memory size"):
        parse_memory(text)


@pytest.mark.parametrize(
    "args",
    [["maxpool k2", "--input", "1x28x28"], ["dropout 0.5", "--input", "1x28x28"], ["torch.nn:ReLU", "-i", "3x8x8"]],
)
def test_a_network_without_trainable_parameters_is_budgeted(args):
    """It failed with "spec does not run on input 1x28x28: element 0 of tensors does not require grad"."""
    result = run(*args, "--batch", "8", "--no-layers")
    assert result.returncode == 0, result.stderr
    assert "parameters 0 (0 trainable)" in result.stdout
    assert "Nothing to train: " in result.stdout and "at batch 8 it holds what inference on 8 samples" in result.stdout
    # no remedy has a backward to spare: bf16 planned a smaller batch than plain, the others repeated it
    planned = run(*args, "--memory", "1MB", "--json")
    assert planned.returncode == 0, planned.stderr
    assert [row["remedy"] for row in json.loads(planned.stdout)["plan"]["remedies"]] == ["as configured"]


def test_a_device_this_machine_lacks_is_sized_for_and_a_wrong_name_refused():
    """--device was for --measure alone: the estimate stepped the optimizer as on the CPU, whatever the GPU."""
    sized = [
        run("--input", "1x16x16", "conv 8 k3", "flatten", "dense 10", "--device", d, "--json") for d in ("cpu", "cuda")
    ]
    assert all(result.returncode == 0 for result in sized), [result.stderr for result in sized]
    cpu, cuda = (json.loads(result.stdout) for result in sized)
    assert (cpu["device"], cuda["device"]) == ("cpu", "cuda")
    assert cuda["realistic"]["peak_bytes"] != cpu["realistic"]["peak_bytes"]  # Adam's step, a group at once on CUDA
    wrong = run("--input", "1x16x16", "conv 8 k3", "--device", "gpu")
    assert wrong.returncode == 2 and "unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps" in wrong.stderr


def _memory_rows(stdout: str) -> dict[str, tuple[int | None, int]]:
    """The memory table's rows: label -> (textbook bytes or None for '-', realistic bytes)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 3 and cells[2][:1].isdigit():
            textbook, realistic = (None if c == "-" else int(c.split(" (")[0].replace(",", "")) for c in cells[1:])
            rows[cells[0]] = (textbook, realistic)
    return rows


def test_the_memory_rows_add_up_to_their_totals_and_each_says_what_it_counts():
    """'inference: parameters (+ buffers)' showed the textbook's parameters alone (resnet18: 46,758,048 beside
    46,796,448), and the realistic training rows left the buffers out of their sum but not of their total."""
    result = run("--input", "3x16x16", "conv 8 k3", "bn", "relu", "gap", "dense 10", "--batch", "4", "--no-layers")
    assert result.returncode == 0, result.stderr
    rows = _memory_rows(result.stdout)
    # batch norm's running mean and variance, and its int64 num_batches_tracked (left out, though in the peak)
    params, buffers = (8 * 27 + 8 + 2 * 8 + 8 * 10 + 10) * 4, (2 * 8) * 4 + 8
    assert rows["inference: parameters"] == (params, params)
    assert rows["inference: buffers"] == (None, buffers) == rows["buffers"]
    inference = ["inference: parameters", "inference: buffers", "inference: working set, 1 instance"]
    training = [label for label in rows if label.startswith("training") or label in ("buffers", "gradients")]
    training += ["optimizer state", "input batch", "activations kept for backward"]
    for column in (0, 1):
        assert sum(rows[label][column] or 0 for label in inference) == rows["inference: total"][column]
        assert sum(rows[label][column] or 0 for label in training) == rows["total"][column]
    from cnnlab.budget import budget

    half = budget(["conv 8 k3", "bn", "relu", "gap", "dense 10"], input_shape=(3, 16, 16), dtype="float16")
    assert half.realistic["buffers_bytes"] == (2 * 8) * 2 + 8  # the counter stays int64 in a float16 network


def test_the_slow_steps_say_what_they_do_on_stderr_and_json_stays_alone():
    """--measure and --memory took a minute on a large network with nothing printed; each now says what it does, on
    stderr, and --json prints its document alone."""
    args = ["--input", "1x16x16", "conv 8 k3", "flatten", "dense 10", "--batch", "2"]
    shown = run(*args, "--measure", "--memory", "1MB", "--no-layers")
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.splitlines() == [
        "measuring: one real training step of spec at batch 2 on cpu",
        "planning: the largest batch of spec within 1MB, as configured and with each remedy",
    ]
    assert "measuring" not in shown.stdout
    quiet = run(*args, "--measure", "--memory", "1MB", "--json")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert set(json.loads(quiet.stdout)) >= {"measured", "plan"}


@pytest.mark.parametrize(
    "size, shown",
    [
        (0, "0 bytes"),
        (1, "1 byte"),  # was "1 bytes" (budget --memory 1B: "No batch fits in 1 bytes")
        (2, "2 bytes"),
        (9_999, "9,999 bytes"),
        (14_336, "14.3 kB"),
        (212_480, "0.2 MB"),
        (800_400_000, "800.4 MB"),  # the figures README quotes in MB stay as they were
        (999_949_999, "999.9 MB"),
        (999_950_000, "1.00 GB"),  # not "1,000.0 MB"
        (8 * 2**30, "8.59 GB"),
        (7_065_886_800_000, "7.07 TB"),  # was "7,065,886.8 MB"
        (2**50, "1.13 PB"),
        (7.2e18, "7,200.00 PB"),
    ],
)
def test_byte_figures_are_shown_in_a_unit_a_person_reads(size, shown):
    from cnnlab.budget.render import readable_bytes

    assert readable_bytes(size) == shown


def test_a_huge_input_is_shown_in_gigabytes_and_terabytes_not_millions_of_megabytes():
    from rich.console import Console

    from cnnlab.budget import budget
    from cnnlab.budget.explain import explain
    from cnnlab.budget.render import memory_table

    report = budget(["conv 64 k3 same"], input_shape=(3, 30000, 30000), batch_size=8)
    console = Console(width=160, record=True)
    console.print(memory_table(report))
    text = console.export_text() + explain(report)
    assert "1,929,600,028,672 (1.93 TB)" in text and "86,400,000,000 (86.40 GB)" in text
    assert not re.search(r"\d,\d{3}(,\d{3})*\.\d MB", text)  # "1,929,600.0 MB"
