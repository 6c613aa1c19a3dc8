"""`cnnlab evaluate RUN`: re-evaluate a trained run on its test set and draw its figures."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (or model.json / model.safetensors / ensemble.json)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Dataset root (else $CNNLAB_DATA, else ./data)."),
    output_dir: Path | None = typer.Option(
        None, "--output", "-o", "--out", help="Where figures go (default RUN/evaluation)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto (a GPU when there is one)."),
) -> None:
    """An MNIST run (or ensemble) on the MNIST test set: accuracy, per-class accuracy, a confusion-matrix PNG and a
    PNG of the misclassified images. (Transfer and segmentation runs score their own test set once, in report.md.)"""
    from cnnlab.errors import CnnlabError
    from cnnlab.tasks.mnist import evaluate_mnist

    if not run.exists():
        raise CnnlabError(f"run {run} does not exist; pass a directory under runs/ (e.g. runs/mnist/<name>)")
    result = evaluate_mnist(run, None if data_dir is None else str(data_dir), output_dir, device=device)
    typer.echo(f"test accuracy {result['test_accuracy']:.4f} ({result['errors']} errors)")
    typer.echo("per class: " + "  ".join(f"{i}: {a:.4f}" for i, a in enumerate(result["per_class_accuracy"])))
    typer.echo(f"confusion matrix: {result['confusion_matrix_png']}")
    typer.echo(f"misclassified:    {result['misclassified_png']}")


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command."""
    app.command("evaluate")(evaluate)
