"""`cnnlab budget`: parameters, MACs and memory of a model, a run's network, a layer spec or a spec file."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from cnnlab.cli.engine_options import apply_threads, threads_option
from cnnlab.cli.help_text import paragraphs

# Typer renders help as Rich markup: each [relu] is escaped with a backslash, or Rich would drop it.
_HELP = """Size a CNN: per-layer shapes, parameters, MACs, and memory for inference and for training a mini-batch.

TARGET is a zoo model name (resnet50), a trained run's folder (runs/transfer/NAME: its network at its own input
size, weights not read; a cached transfer run also gets the step it trained, its top blocks on cached maps), an
`fcn convert` folder (the network that scans; --input sets the image's size), Python code that builds a network
(MODULE:NAME or FILE.py:NAME, with literal arguments if any: torchvision.models:mobilenet_v3_small,
"models.py:build(width=32)", quoted for the shell; imported and called on the meta device, so no weights are
allocated), a YAML/JSON spec file, or layer strings, one per argument (or several in one, separated by ';' or by ','
before a layer's name: "conv 64 k7 s2 same, maxpool k3 s2, gap, dense 10"):

  cnnlab budget --input 3x200x300 "conv 100 k3 s2 same" "conv 200 k3 s2 same" "conv 400 k3 s2 same" --batch 50

  cnnlab budget torchvision.models:mobilenet_v3_small --input 3x224x224 --memory 4GiB

Layer strings, their words in any order (\\[...] is optional): conv F \\[kK] \\[sS] \\[same|valid|pN] \\[dD] \\[gG]
\\[ACT] \\[nobias] \\[in=C], tconv|deconv F (a transposed convolution) with conv's words and \\[opN] (output
padding), maxpool|avgpool \\[kK] \\[sS] \\[same|valid|pN] \\[ceil], dense N \\[ACT] \\[nobias]
\\[in=N], dropout \\[P], lrn \\[N], gap, flatten, bn, and ACT (relu|tanh|sigmoid|gelu|silu|leakyrelu|elu|softmax) as a
layer of its own. Left out: conv k1 s1 valid d1 g1 (a 1x1 convolution), pooling k2 valid with the stride its kernel,
dropout 0.5, lrn 5. kK, sS, pN and dD take HxW too (k3x5); gG splits a conv into G groups (G = input channels:
depthwise); in= checks the input channels (conv) or features (dense); ceil rounds a pooling's output size up
(PyTorch's ceil_mode=True, as GoogLeNet's pools), where valid and pN round down; same ceil pads as same and rounds
up (k3 s2: 14 -> 8, same alone: 7). A tconv's output is
(in - 1) x s - 2p + d x (k - 1) + op + 1; same gives in x s.

MACs (FLOPs = 2 x MACs) count convolutions (grouped, dilated, transposed), linear layers, matmuls and attention;
normalisation, activations, pooling, upsampling, dropout, additions and concatenations count 0.

Memory is shown twice: the textbook view (every layer output kept, two consecutive layers at inference) and what
PyTorch really keeps (traced on the meta device).
"""


def budget_command(
    target: Annotated[
        list[str],
        typer.Argument(
            help="Zoo model name, run folder, MODULE:NAME or FILE.py:NAME, spec file, or layer strings.",
            show_default=False,
        ),
    ],
    input: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            help="Shape of one sample, CxHxW, e.g. 3x224x224 (default: a zoo model's, a run's or a spec file's own, "
            "or a timm network's pretrained_cfg input_size; layer strings need it).",
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", "-b", min=1, help="Training mini-batch size.")] = 1,
    dtype: Annotated[
        str, typer.Option(help="float32, float16, bfloat16 or float64 (also fp32, fp16, bf16, fp64).")
    ] = "float32",
    optimizer: Annotated[
        str,
        typer.Option(
            help="sgd, momentum (SGD with momentum), adam, adamw or nadam: its state in memory; none: no optimizer "
            "step."
        ),
    ] = "adam",
    depth: Annotated[int | None, typer.Option(help="Table rows at this module depth (default: leaf modules).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Print the arithmetic step by step.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON with stable keys (README lists them) instead of tables.")
    ] = False,
    measure: Annotated[
        bool, typer.Option("--measure", help="Run one real training step and compare with the estimate.")
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="Device the training is for, cpu, cuda, cuda:N, mps or auto (a CUDA GPU when there is one): the "
            "optimizer steps as the engine's does there. Sizing "
            "for cuda needs no GPU; --measure runs on this device, so it must be here. Default cpu; a cached transfer "
            "run's own step: the device it trained on.",
            show_default=False,
        ),
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(help="Plan for this memory (e.g. 8GiB): largest batch, and with each remedy (default: no plan)."),
    ] = None,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="Show the per-layer table.")] = True,
    threads: int | None = threads_option(),
) -> None:
    from cnnlab.budget import budget, parse_memory
    from cnnlab.budget.core import check_zoo_input
    from cnnlab.budget.python_model import declared_input_size, is_python_target
    from cnnlab.budget.spec import parse_size
    from cnnlab.errors import CnnlabError

    apply_threads(threads)
    input_shape = parse_size(input, "input") if input else None
    limit = parse_memory(memory) if memory else None
    # one word names a model, a run or a file; words with spaces are layer strings, unless it is Python code
    model = target[0] if len(target) == 1 and (" " not in target[0] or is_python_target(target[0])) else target
    built, shown = _converted(model, measure), f"{model} (fully convolutional)"
    input_note = None  # where a default input size came from, when the user may not expect it
    if built is not None:  # an `fcn convert` folder: the network that scans, at the given image size
        if input_shape is not None:
            check_zoo_input(str(model), input_shape, built.input_size)
        input_shape = input_shape or built.input_size
    elif (built := _python_model(model, measure)) is not None:  # MODULE:NAME or FILE.py:NAME
        shown, declared = str(model), declared_input_size(built)
        if input_shape is not None and declared is not None:
            check_zoo_input(shown, input_shape, declared[0])
        if input_shape is None and declared is not None:
            input_shape, source = declared
            if source is not None:  # a timm network's record: say where the size came from
                input_note = f"input {'x'.join(map(str, input_shape))}: {source}; --input sizes another"
        if input_shape is None:
            raise CnnlabError(f"{model}: give --input, the shape of one sample, e.g. --input 3x224x224")
    report = budget(
        model if built is None else built,
        input_shape=input_shape,
        batch_size=batch,
        dtype=dtype,
        optimizer=optimizer,
        depth=depth,
        measure=measure,
        device=device or "cpu",
        memory_limit=memory if limit is not None else None,  # as written, for the line that names it
        name=shown if built is not None else None,
        log=None if as_json else lambda line: typer.echo(line, err=True),  # stdout: the report alone
    )
    trained = _trained_step(model, input_shape, limit, device)
    explanation = None
    if explain:
        from cnnlab.budget.explain import explain as explain_report

        explanation = explain_report(report)
    if as_json:  # with --explain the arithmetic is one more field (it was dropped without a word)
        document = report.to_dict() | ({"explanation": explanation} if explanation is not None else {})
        document |= {"run_training_step": trained} if trained is not None else {}
        document |= {"input_note": input_note} if input_note is not None else {}
        typer.echo(json.dumps(document, indent=2))
        return
    from cnnlab.budget.render import print_report

    if input_note is not None:
        typer.echo(input_note)
    print_report(report, layers=layers)
    if trained is not None:
        typer.echo(_trained_step_note(trained))
    if explanation is not None:
        typer.echo("")
        typer.echo(explanation)


def _trained_step(
    model: str | list[str], input_shape: Any, limit: int | None, device: str | None
) -> dict[str, Any] | None:
    """A cached transfer run's own training step (`tasks.transfer_cost.trained_step_memory`) on `device` (None: the
    run's), else None."""
    from pathlib import Path

    if not isinstance(model, str) or not Path(model).is_dir():
        return None
    from cnnlab.tasks.transfer_cost import trained_step_memory

    return trained_step_memory(model, input_shape, limit, device)


def _trained_step_note(step: dict[str, Any]) -> str:
    import torch

    from cnnlab.report.units import file_size

    part = "the classifier" if step["blocks_trained"] == 0 else f"its top {step['blocks_trained']} blocks and the head"
    shape = "x".join(map(str, step["feature_shape"]))
    fit = ""
    if "max_batch" in step:  # as `budget --memory` marks a largest batch at the planner's search cap
        most = step["max_batch"]
        fit = (
            f"; within the memory given, batches of >= {most:,} (search cap)"
            if step.get("max_batch_capped")
            else f"; within the memory given, batches up to {most:,}"
        )
    optimizer = step["optimizer"]
    accumulated = f" (x{step['accum_steps']} accumulated)" if step.get("accum_steps", 1) > 1 else ""
    precision, how = "", "meta-device trace"
    if step.get("precision", "fp32") != "fp32":  # autocast does not run on the meta device: the planner's adjustment
        precision, how = f" in {step['precision']} autocast", "float32 meta-device trace, adjusted for autocast"
        if step["precision"] == "fp16":  # sized as bf16: on a CPU a real fp16 autocast step holds the same bytes
            how += " as for bf16, whose sizes fp16 shares"
        if str(step["device"]).startswith("cuda") and not torch.cuda.is_available():
            how += f"; checked against CPU steps only, with no GPU here to check it on {step['device']}"
    if step.get("momentum"):  # the engine's SGD: a momentum buffer per parameter
        optimizer += f" (Nesterov momentum {step['momentum']:g})"
    return (
        f"\nThe training figures above are for training the whole network (--recipe full). This run (recipe "
        f"{step['recipe']}) trained only {part} ({step['trained_parameters']:,} of {step['parameters']:,} "
        f"parameters) on cached {shape} maps: its step at batch {step['batch']}{accumulated} with {optimizer} on "
        f"{step['device']}{precision} peaks at {file_size(step['peak_bytes'])} ({how}){fit}."
    )


def _python_model(model: str | list[str], measure: bool) -> Any:
    """The network that ``MODULE:NAME`` or ``FILE.py:NAME`` builds (`budget.python_model`), else None; on the meta
    device unless a real step is to be measured."""
    from pathlib import Path

    from cnnlab.budget.python_model import build_python_model, is_python_target

    if not isinstance(model, str) or Path(model).exists() or not is_python_target(model):
        return None
    return build_python_model(model, on_meta=not measure)


def _converted(model: str | list[str], measure: bool) -> Any:
    """The converted network saved in an `fcn convert` folder (or its fcn.json) named by `model`, else None; moved
    to the meta device unless a real step is to be measured, as the other targets are built (with real weights,
    an input too small for it was refused without the smallest input it takes)."""
    from cnnlab.fcn.scan import is_converted, load_fully_convolutional

    if not isinstance(model, str) or not is_converted(model):
        return None
    converted = load_fully_convolutional(model)
    return converted if measure else converted.to("meta")


def register(app: typer.Typer) -> None:
    app.command("budget", help=paragraphs(_HELP))(budget_command)
