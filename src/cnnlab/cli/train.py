"""`cnnlab train ...`: one subcommand per task. Other task modules add theirs to `train_app`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

train_app = typer.Typer(help="Train a model (one subcommand per task).", no_args_is_help=True)


@train_app.command("mnist")
def mnist(
    recipe: str = typer.Option(
        "default",
        "--recipe",
        "-r",
        help="default (best accuracy), quick (~1 min), baseline (the answer sets' CNN).",
    ),
    ensemble: int = typer.Option(1, "--ensemble", "-n", help="Train N members (seeds seed..seed+N-1) and ensemble."),
    member: int | None = typer.Option(
        None,
        "--member",
        help="Train only member K (0-based; seed + K) of --ensemble N in this process, so members can train side by "
        "side (one --threads 1 process per core) or on several machines sharing --output; needs --name. The last "
        "member to finish evaluates and saves the ensemble; `--ensemble N --name NAME --resume` also does.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the first member."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
    batch_size: str | None = typer.Option(
        None, "--batch-size", help="Override the recipe's batch size: N, or auto (the largest that fits in memory)."
    ),
    accum: str | None = typer.Option(
        None, "--accum", help="Micro-batches per step (gradient accumulation): N, or auto (as many as memory needs)."
    ),
    grad_checkpointing: bool = typer.Option(
        False, "--grad-checkpointing", help="Recompute activations in backward to save memory (model stages)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Override the recipe's peak learning rate."),
    precision: str | None = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (autocast)."),
    channels_last: bool | None = typer.Option(None, "--channels-last/--no-channels-last", help="Memory format."),
    compile_model: bool = typer.Option(False, "--compile", help="Wrap the model in torch.compile."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    name: str | None = typer.Option(None, "--name", help="Run name (default <recipe>-<timestamp>)."),
    output: Path = typer.Option(Path("runs"), "--output", "-o", help="Runs root; the run goes to OUTPUT/mnist/NAME."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="MNIST root (else $CNNLAB_DATA, else ./data)."),
    val_size: int = typer.Option(5000, "--val-size", help="Training images held out for validation."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run called --name."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run called --name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or epoch lines."),
) -> None:
    """Train a CNN from scratch on MNIST; the test set is evaluated once, at the end."""
    from cnnlab.errors import CnnlabError
    from cnnlab.tasks.mnist import get_recipe, train_mnist
    from cnnlab.train.batch_size import batch_options
    from cnnlab.train.config import config_overrides

    get_recipe(recipe)  # fail fast on a typo, before reading data
    if resume and name is None:
        raise CnnlabError("--resume needs the --name of the run to continue")
    overrides = config_overrides(
        epochs=epochs,
        lr=lr,
        precision=precision,
        channels_last=channels_last,
        compile=compile_model or None,
        device=device,
        num_threads=threads,
    )
    overrides.update(batch_options(batch_size, accum, grad_checkpointing))
    summary = train_mnist(
        recipe,
        data_dir=None if data_dir is None else str(data_dir),
        output=str(output),
        name=name,
        seed=seed,
        ensemble=ensemble,
        member=member,
        val_size=val_size,
        overrides=overrides,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    for member in summary["members"]:
        typer.echo(
            f"seed {member['seed']}: val {member['val_accuracy']:.4f}  test {member['test_accuracy']:.4f}  "
            f"({member['train_seconds']:.0f} s training, {member['images_per_second']:.0f} img/s)  {member['run_dir']}"
        )
    if summary.get("missing_members"):
        typer.echo(f"members still to train (seeds): {summary['missing_members']}; the ensemble is saved once they are")
    if "ensemble_test_accuracy" in summary:
        typer.echo(f"ensemble of {ensemble}: test {summary['ensemble_test_accuracy']:.4f}")
    typer.echo(f"run: {summary['run_dir']}  (load it with cnnlab.load_model; evaluate with `cnnlab evaluate`)")
    Path(summary["run_dir"], "results.json").write_text(json.dumps(summary, indent=1))


def register(app: typer.Typer) -> None:
    """Add the `train` command group."""
    app.add_typer(train_app, name="train")
