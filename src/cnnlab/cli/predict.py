"""`cnnlab predict`: top-k classes of image files, with a fine-tuned run or a pretrained zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def predict(
    images: list[Path] = typer.Argument(..., help="Image files to classify."),
    model: str = typer.Option(
        "efficientnet_lite0",
        "--model",
        "-m",
        help="A `cnnlab train transfer` run directory, or a zoo model with pretrained weights.",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes shown per image."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
) -> None:
    """Classify images; a missing or unreadable image is reported and the others are still classified."""
    from cnnlab.tasks.predict import load_predictor, predict_images

    predictor = load_predictor(model, device=device)
    results = predict_images(predictor, [str(path) for path in images], top_k=top_k)
    if as_json:
        typer.echo(json.dumps({"model": predictor.source, "predictions": results}, indent=1))
    else:
        for result in results:
            if "error" in result:
                typer.echo(f"{result['image']}: error: {result['error']}", err=True)
                continue
            typer.echo(f"{result['image']}:")
            for rank, entry in enumerate(result["top"], start=1):
                typer.echo(f"  {rank}. {entry['label']:<30} {entry['probability']:7.2%}")
    if all("error" in result for result in results):
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add the `predict` command."""
    app.command("predict")(predict)
