"""`cnnlab lab`: the local web app (Answers, Budget, Classify and explain, Runs, Scan and segment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

_HELP = """Open cnnlab's views in the browser: the answer sheet, a per-layer budget you can edit, a photo's top classes
with Grad-CAM, feature maps and filters, your runs' curves and confusion matrices, and FCN heatmaps or a segmentation
run's masks of large images.

Needs the lab extra: pip install "cnnlab\\[lab]". Listens on 127.0.0.1 (this machine only) unless --host is given.
"""


def lab_command(
    runs: Annotated[
        Path,
        typer.Option(
            "--runs",
            help="Runs root (the `cnnlab train ... --output` runs were written to): the Runs, Classify and Scan "
            "pages list its RUNS/<task>/<name> runs, and Answers shows RUNS/answers/answers.md. It need not exist yet; "
            "a run's own folder, or a task's, is refused.",
        ),
    ] = Path("runs"),
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="TCP port: the lab is at http://HOST:PORT.")
    ] = 7860,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Listen on this address (e.g. 0.0.0.0) instead of the default 127.0.0.1; the lab has no login.",
        ),
    ] = None,
    max_upload_mb: Annotated[
        int,
        typer.Option(
            "--max-upload-mb",
            min=1,
            help="Largest file the Classify and Scan pages accept, in MiB (Scan also takes at most 4 MP, 24 MP for a "
            "segmentation run trained with `cnnlab train segment --max-side`).",
        ),
    ] = 10,
) -> None:
    from cnnlab.lab.app import check_address, check_runs_root, reachable_from_others, serve

    address = host or "127.0.0.1"
    check_address(address, port)  # before the address is announced
    if not check_runs_root(runs):
        typer.echo(f"note: {runs} does not exist yet: the pages list no runs until a train command writes there")
    if host is not None and reachable_from_others(host):  # --host localhost is this machine only, as the default
        typer.echo(
            f"warning: the lab listens on {host}: anyone who can reach this machine on port {port} can use it and see "
            "the runs under the runs root (there is no login)",
            err=True,
        )
    typer.echo(f"cnnlab lab: http://{address}:{port}  (runs root {runs}; Ctrl+C stops it)")
    serve(runs, port=port, host=address, max_upload_mb=max_upload_mb)


def register(app: typer.Typer) -> None:
    app.command("lab", help=_HELP)(lab_command)
