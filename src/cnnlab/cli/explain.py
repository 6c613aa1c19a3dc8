"""`cnnlab explain RUN_OR_PRETRAINED IMAGE`: what a CNN sees (first-layer filters, feature maps, Grad-CAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cnnlab.cli.engine_options import apply_threads, device_option, threads_option


def explain(
    source: str = typer.Argument(
        ...,
        help="A run directory (an MNIST run or ensemble, a transfer run, or a `train segment` run, of your own images "
        "with `--data` or of the MNIST canvases), a zoo model name such as efficientnet_lite0 (pretrained ImageNet "
        "weights), or your own network as `cnnlab budget` takes it: "
        "FILE.py:NAME(literal arguments) or MODULE:NAME, a function that builds it and loads its weights (quote it).",
    ),
    image: Path = typer.Argument(..., help="The image file to explain."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Directory for the PNGs (default: runs/explain/<model>-<image stem>, one per model and image, so that "
        "explaining another image keeps the first one's; given, its PNGs are replaced).",
    ),
    layer: list[str] = typer.Option(
        [],
        "--layer",
        "-l",
        help="Module whose feature maps to show (repeatable; default: three, from shallow to deep). An ensemble's "
        "maps and filters are its first member's, named as in it (features.5, not members.0.features.5).",
    ),
    cam_layer: str | None = typer.Option(
        None,
        "--cam-layer",
        help="Module for Grad-CAM (default: the deepest map, not an adaptive pool that enlarges it; a segmenter's "
        "decoder map at stride 4). An ensemble's Grad-CAM is the mean of its members', each at this layer of its own.",
    ),
    class_index: str | None = typer.Option(
        None,
        "--class",
        help="Class to explain, by name (as written, else in any case if that names one class) or index "
        "(default: the predicted one; a segmenter's largest class other than the background).",
    ),
    device: str = device_option(),
    threads: int | None = threads_option(),
    input_size: str | None = typer.Option(
        None,
        "--input",
        "-i",
        help="A network named by code: its input CxHxW (C 1: grey, 3: RGB), the whole image resized to HxW; with "
        "--mean and --std, in place of the pretrained_cfg it declares (default: that record; without one, needed).",
    ),
    mean: str | None = typer.Option(
        None,
        "--mean",
        help="A network named by code: the mean taken from inputs in [0, 1], one value or C (0.5 or 0.485,0.456,0.406; "
        "default: its pretrained_cfg's).",
    ),
    std: str | None = typer.Option(
        None,
        "--std",
        help="A network named by code: the std inputs are divided by after the mean (1: none; default: its "
        "pretrained_cfg's).",
    ),
    list_layers: bool = typer.Option(
        False,
        "--list-layers",
        help="Print every layer (the names --layer and --cam-layer take) with its output size on IMAGE, marking the "
        "ones explain would show (those --layer and --cam-layer name, else the defaults), and write nothing.",
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Print only the paths of the PNGs written, one a line (errors, warnings and notes on what they show, "
        "such as the preprocessing assumed, still go to stderr).",
    ),
) -> None:
    """Write filters.png, feature_maps.png and gradcam.png for IMAGE and print the top classes."""
    from cnnlab.tasks.explain import CodeInput, default_output_dir, explain_image

    apply_threads(threads)
    given = CodeInput(input_size, mean, std)
    if list_layers:
        _print_layers(source, image, device, given, layer, cam_layer)  # the listing is what it asks for, -q or not
        ignored = [flag for flag, value in (("--class", class_index), ("--output", output)) if value is not None]
        if ignored:  # a note on the options given, which -q keeps
            typer.echo(f"({' and '.join(ignored)} ignored: --list-layers explains no class and writes nothing)")
        return
    output = default_output_dir(source, image) if output is None else output
    result = explain_image(str(source), image, output, layers=layer, cam_layer=cam_layer, class_index=class_index,
                           device=device, given=given)  # fmt: skip
    # notes on what the PNGs show: with -q on stderr, stdout holding the paths alone (-q drops progress, not notes)
    preprocessing = [f"preprocessing: {result.preprocessing}"] if result.preprocessing else []
    member = (
        [
            "(an ensemble: the probabilities and Grad-CAM are the ensemble's, its Grad-CAM the mean of its members'; "
            f"the filters and feature maps are of {result.shown_member}: explain a member's folder to see another)"
        ]
        if result.shown_member
        else []
    )
    if quiet:
        for line in preprocessing + member:
            typer.echo(line, err=True)
        for path in result.files.values():
            typer.echo(path)
        return
    for line in preprocessing:
        typer.echo(line)
    share = " of the pixels" if result.scores == "pixel share" else ""
    typer.echo(
        f"{image}: explained class {result.label!r} ({result.probability:.1%}{share}), Grad-CAM at {result.cam_layer}"
    )
    if share:
        typer.echo("classes by their share of the pixels:")
    for rank, (label, probability) in enumerate(result.top, start=1):
        typer.echo(f"  {rank}. {label:<30} {probability:7.2%}")
    if len(result.views) > 1:
        typer.echo(
            f"(probabilities averaged over the run's {len(result.views)} views, as predict gives them; the maps are "
            "of the image as given)"
        )
    for line in member:
        typer.echo(line)
    typer.echo(f"feature maps of: {', '.join(result.feature_layers)}")
    for kind, path in result.files.items():
        typer.echo(f"{kind}: {path}")


def _print_layers(source: str, image: Path, device: str, given: Any, layers: list[str], cam_layer: str | None) -> None:
    from cnnlab.tasks.explain import list_layers

    listing = list_layers(source, image, device=device, given=given, layers=layers, cam_layer=cam_layer)
    of = f" of {listing.shown_member}, named as in it" if listing.shown_member else ""
    size = "x".join(map(str, listing.input_shape))
    typer.echo(f"layers{of}, in running order, with their outputs for {image} (input {size}); * has feature maps")
    width = max((len(layer.name) for layer in listing.layers), default=0)
    types = max((len(layer.type) for layer in listing.layers), default=0)
    for layer in listing.layers:
        roles = [(role, named) for role, names, named in (
            ("feature maps", listing.feature_layers, listing.named_feature_layers),
            ("Grad-CAM", [listing.cam_layer], listing.named_cam_layer),
        ) if layer.name in names]  # fmt: skip
        defaults = [role for role, named in roles if not named]
        asked = [role for role, named in roles if named]
        parts = ([f"default {' and '.join(defaults)}"] if defaults else []) + (
            [f"{' and '.join(asked)}, as named"] if asked else []
        )
        default = f"  ({'; '.join(parts)})" if parts else ""
        mark = "*" if layer.maps else " "
        typer.echo(f"{mark} {layer.name:<{width}}  {layer.type:<{types}}  {layer.output}{default}")
    for line in listing.unknown:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add the `explain` command."""
    app.command("explain")(explain)
