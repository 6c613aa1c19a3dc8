"""`cnnlab export`: a fine-tuned run (or a pretrained zoo model) as TorchScript, ONNX or an ExportedProgram (pt2)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cnnlab.cli.engine_options import apply_threads, quiet_option, threads_option


def export(
    run: str = typer.Argument(
        ...,
        help="A `cnnlab train transfer`, `cnnlab train mnist` or `cnnlab train segment` run directory or its "
        "model.json (segmenters export with dynamic height and width), a `cnnlab fcn convert` folder (dynamic height "
        "and width too, of at least its window), or a pretrained zoo model name.",
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="torchscript (.pt, traced; torch 2.14 deprecates the tracer), onnx (.onnx; the onnx and onnxruntime "
        "packages, which check it) or pt2 "
        "(.pt2, torch.export's ExportedProgram, the tracer's successor; a segmenter's sides must exceed its stride, "
        "16 or 32, a converted network's its window + stride). Every format takes any batch size; a classifier's "
        "height and width are fixed at its input size (the record's input_shape), a segmenter's and a converted "
        "(fcn) network's are free. Default: the one --output's suffix names (one naming none is refused), else "
        "torchscript.",
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="File to write (default: RUN/model.pt, .onnx or .pt2)."
    ),
    opset: int | None = typer.Option(
        None,
        "--opset",
        help="ONNX opset version, 11 to 20 (below 11, input-sized padding cannot be written); default 17. ONNX only.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a file at --output that no export wrote (an earlier export is replaced without it).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    threads: int | None = threads_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Export with the normalisation inside; resize, crop and classes go to <file>.preprocessing.json beside it."""
    from cnnlab.tasks.export import export_model

    apply_threads(threads)  # the trace and its check (ONNX Runtime's too) run on the CPU: no --device
    # what it writes, as the trace and the check start: a progress line (--json: the document alone; -q: no progress)
    say = None if as_json or quiet else lambda line: typer.echo(line, err=True)
    result = export_model(run, fmt, output, opset=opset, log=say, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps(result))
        return
    shown_input = result.get("input", "RGB in [0, 1], normalisation inside")
    typer.echo(f"wrote {result['model']} ({result['format']}; input: {shown_input})")
    typer.echo(f"wrote {result['preprocessing']} (classes, the rest of the preprocessing, and how to load the model)")
    typer.echo(f"max |exported - PyTorch| on random images: {result['max_abs_difference']:.2e}")


def register(app: typer.Typer) -> None:
    """Add the `export` command."""
    app.command("export")(export)
