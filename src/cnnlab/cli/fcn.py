"""`cnnlab fcn convert RUN` and `cnnlab fcn scan RUN IMAGE`: classifiers made fully convolutional."""

from __future__ import annotations

import functools
from pathlib import Path

import typer

from cnnlab.cli.engine_options import apply_device, apply_threads, device_option, quiet_option, threads_option

fcn_app = typer.Typer(help="Make a trained classifier fully convolutional and scan large images.", no_args_is_help=True)


@fcn_app.command("convert")
def convert(
    run: Path = typer.Argument(..., help="Run directory (or model.json) of a trained MNIST classifier."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Where to save it (default RUN/fcn)."),
    pool: str = typer.Option("window", "--pool", help="Global-pool heads: window (exact) or none (finer map)."),
    threads: int | None = threads_option(),
) -> None:
    """Replace the classifier's dense head by convolutions (same weights) and save the converted network."""
    import torch

    from cnnlab.fcn.scan import convert_run, converted_folder, geometry_text, save_fully_convolutional

    apply_threads(threads)  # converted and checked on the CPU, so the saved network holds no device (scan's --device)
    target = converted_folder(run, output)
    converted, source = convert_run(run, pool=pool)
    save_fully_convolutional(converted, target, source, pool)
    channels, height, width = converted.input_size
    window, stride = converted.output_geometry()
    reference = next(converted.parameters())
    with torch.no_grad():  # in the network's dtype, as `scan` gives it each tile
        larger = converted(torch.zeros(1, channels, height * 4, width * 4, dtype=reference.dtype))
    typer.echo(f"converted {source['arch']}: head is now")
    for name, layer in converted.head.named_children():
        typer.echo(f"  {name}: {layer}")
    fits = ((height * 4 - window[0]) // stride[0] + 1, (width * 4 - window[1]) // stride[1] + 1)
    beyond = ""
    if tuple(larger.shape[-2:]) != fits:  # a padded trunk also scores windows that run off the edge; scan drops them
        beyond = f"; {fits[0]}x{fits[1]} of them are windows inside the image, the others run off its edge"
    typer.echo(
        f"outputs equal the classifier's at {height}x{width} (checked to 1e-5); a {height * 4}x{width * 4} input "
        f"gives {list(larger.shape)}: one score vector per {geometry_text(window, stride)}{beyond}"
    )
    typer.echo(f"saved: {target}  (cnnlab fcn scan {target} IMAGE)")


@fcn_app.command("scan")
def scan_command(
    run: Path = typer.Argument(..., help="An MNIST classifier run directory or a converted (fcn) directory."),
    image: Path = typer.Argument(..., help="Image to scan (larger than the classifier's input), e.g. a PNG."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Heatmap image (.png, .jpg, .pdf, .svg, ...), or a folder for IMAGE-heatmap.png in it "
        "(default: beside IMAGE).",
    ),
    refine: int | None = typer.Option(
        None,
        "--refine",
        help="Shift-and-stitch factor, a divisor of the network's stride (of both, where it strides further down "
        "than across): locations stride/refine px apart, refine x refine scans (default: each stride's largest "
        "divisor up to 4).",
    ),
    invert: bool | None = typer.Option(
        None,
        "--invert/--no-invert",
        help="Dark-on-light to light-on-dark, or not, and nothing else (default: the paper, told from the ink at the "
        "image's border, inverted when light and stretched to black, the ink to white; a table round a page, black).",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace a file at the heatmap's path that no scan wrote (an earlier heatmap is replaced without it).",
    ),
    threads: int | None = threads_option(),
    device: str = device_option(
        "Where the network scores the image's tiles (the image and its score maps stay in RAM, which the memory "
        "check counts; on a GPU, each tile's pass is checked against its free memory)."
    ),
    quiet: bool = quiet_option(),
) -> None:
    """Score every classifier-sized window of IMAGE and write a heatmap PNG of per-location class probabilities."""
    from cnnlab.fcn.scan import (
        check_scan_memory,
        geometry_text,
        heatmap_path,
        load_converted_or_run,
        load_scan_image,
        save_heatmap,
        scan,
    )

    apply_threads(threads)
    device = apply_device(device)  # a typo or a missing GPU: one line, before the run is read
    path = heatmap_path(output, image, overwrite=overwrite)
    converted, source = load_converted_or_run(run, device=device)
    checked = check_scan_memory(converted, image, refine)  # by its header; its size is then decoded, however large
    picture = load_scan_image(image, channels=converted.input_size[0], invert=invert, checked=checked)
    # the memory a large scan needs, as it starts: a progress note (-q drops it), on stderr (stdout: the result alone)
    note = None if quiet else functools.partial(typer.echo, err=True)
    result = scan(converted, picture, refine=refine, progress=not quiet, log=note, checked=checked)
    classes = result.probabilities.shape[0]
    names = [str(d) for d in range(10)] if classes == 10 else None
    path = save_heatmap(picture, result, path, names, title=f"{source['arch']} scanning {image.name}")
    rows, cols = result.probabilities.shape[1:]
    typer.echo(f"{rows}x{cols} locations (one per {geometry_text(result.window_size, result.steps)}): {path}")


def register(app: typer.Typer) -> None:
    """Add the `fcn` command group."""
    app.add_typer(fcn_app, name="fcn")
