"""`cnnlab experiment NAME`: turn a claim about CNNs into a repeatable experiment with a generated report."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, quiet_option, threads_option


def experiment(
    name: str = typer.Argument(..., help="cnn-vs-dense, pool-vs-stride or lrn-vs-bn."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs per run (default: the experiment's)."),
    subset: int | None = typer.Option(
        None, "--subset", help="Training images (default: the experiment's; 0 = all 55,000)."
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", help="Repeats over seeds 0..N-1 (default 3; from fewer, no difference is claimed)."
    ),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Root dir; writes OUTPUT/experiment/NAME/."),
    test_subset: int | None = typer.Option(None, "--test-subset", help="Test images evaluated (default all)."),
    val_subset: int | None = typer.Option(
        None, "--val-subset", help="Validation images (default: the experiment's; all 5,000 unless it sets fewer)."
    ),
    data_dir: str | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing report (removed before training) and train every run again. Without it, the runs "
        "an interrupted invocation finished (same settings) are read back, not trained again; an interrupted "
        "--overwrite is continued without --overwrite.",
    ),
    threads: int | None = threads_option(),
    device: str = device_option(
        "Where every run trains and is measured (default cpu: the report compares the runs' times on one device)."
    ),
    quiet: bool = quiet_option(),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report's path and its results.json as JSON on stdout (no progress lines)."
    ),
) -> None:
    """Run a claim about CNNs as an experiment on MNIST over several seeds; writes report.md, plots, results.json.

    cnn-vs-dense: CNN vs a dense net of equal parameter count (accuracy, MACs, time, robustness, sample efficiency).

    pool-vs-stride: 2x2 max pooling vs stride-2 convolution (cost, accuracy, feature invariance to 1-px shifts).

    lrn-vs-bn: small AlexNet-style net with no normalisation, LRN or batch norm (accuracy, convergence, time/step).

    The report's conclusion is generated from the measurements, with a noise rule over the seeds.
    """
    from cnnlab.tasks.experiments import run_experiment

    apply_threads(threads)  # the report's hardware line says the threads it ran on

    report = run_experiment(
        name,
        epochs=epochs,
        subset=subset,
        seeds=seeds,
        output=output,
        test_subset=test_subset,
        val_subset=val_subset,
        data_dir=data_dir,
        overwrite=overwrite,
        progress=not (quiet or as_json),
        device=device,
    )
    if as_json:
        results = json.loads((report.parent / "results.json").read_text())
        typer.echo(json.dumps({"run_dir": str(report.parent), "report": str(report), "results": results}))
        return
    text = report.read_text()
    conclusion = text.split("## Conclusion", 1)[-1].strip()
    typer.echo(f"{report}\n\n{conclusion}")


def register(app: typer.Typer) -> None:
    """Add the `experiment` command."""
    app.command("experiment")(experiment)
