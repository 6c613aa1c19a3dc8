"""Rich tables for a budget report: the per-layer table, the two memory views, the measurement and the plan."""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cnnlab.budget.core import BudgetReport


def readable_bytes(value: float) -> str:
    """Bytes as a person reads them, in decimal units (MB = 1,000,000 bytes, as the docs and --explain say): bytes
    under 10 kB, kB under 0.1 MB, MB to one decimal under 1 GB, then GB, TB or PB to two (a 1KiB limit read "0.0 MB",
    a 3x30000x30000 input "1,929,600.0 MB"). --json keeps exact bytes."""
    if value < 1e4:
        count = f"{value:,.0f}"
        return f"{count} {'byte' if count == '1' else 'bytes'}"  # --memory 1B: "within 1 byte", not "1 bytes"
    if value < 1e5:
        return f"{value / 1e3:.1f} kB"
    if value < 999.95e6:  # what would round to "1,000.0 MB" is shown as 1.00 GB
        return f"{value / 1e6:,.1f} MB"
    for unit, size in (("GB", 1e9), ("TB", 1e12)):
        if value < 999.995 * size:
            return f"{value / size:.2f} {unit}"
    return f"{value / 1e15:,.2f} PB"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) or "-"


def layer_table(report: BudgetReport) -> Table:
    """Name, type, output shape, parameters, MACs, activation bytes and saved bytes, with totals."""
    # the name may be a user's file name: escaped, so Rich markup does not read "[v2]" in it as a style
    title = f"{escape(report.model_name)}: input {_shape(report.input_shape)}, {report.dtype}"
    table = Table(title=title, show_footer=True)
    saved_total = sum(row.saved_bytes for row in report.layers)
    columns = [
        ("layer", "total", "left"),
        ("type", "", "left"),
        ("output (per sample)", _shape(report.output_shape), "left"),
        ("params", f"{report.params:,}", "right"),
        ("non-trainable", f"{report.params - report.trainable_params:,}", "right"),
        ("MACs", f"{report.macs:,}", "right"),
        ("activation bytes", f"{sum(r.activation_bytes for r in report.layers):,}", "right"),
        (f"saved for backward (batch {report.batch_size})", f"{saved_total:,}", "right"),
    ]
    for header, footer, justify in columns:
        table.add_column(header, footer=footer, justify=justify)  # type: ignore[arg-type]
    for row in report.layers:
        table.add_row(
            row.name,
            row.type,
            _shape(row.output_shape),
            f"{row.params:,}",
            f"{row.params - row.trainable_params:,}",
            f"{row.macs:,}",
            f"{row.activation_bytes:,}",
            f"{row.saved_bytes:,}",
        )
    # Said from the trace: "saved too ... when the first layer needs it" was printed where no layer saves it
    # (mnist_baseline's first conv takes a normalised copy of the input, and saves that).
    saved_input = report.realistic["saved_for_backward_bytes"] - report.realistic["activations_bytes"]
    table.caption = (
        f"The input batch is saved too ({saved_input:,} bytes), by the layer that takes it."
        if saved_input
        else f"No layer saves the input batch ({report.realistic['inputs_bytes']:,} bytes) for backward."
    )
    # A tied weight is counted in the first row that holds it: said, so the later row's smaller count is not a mystery
    shared = [f"{escape(row.name)} ({row.shared_params:,})" for row in report.layers if row.shared_params]
    if shared:
        table.caption += (
            f" Parameters shared with an earlier row (tied weights) are counted there once: {', '.join(shared)}."
        )
    # Parameters a module above the rows holds (a gain on the model itself) are in the total but in no row: without
    # a word the column fell short of it (296 rows under a total of 312)
    unlisted = report.unlisted_params
    if unlisted:
        listed = report.params - sum(unlisted.values())
        names = ", ".join(f"{escape(name)} ({count:,})" for name, count in list(unlisted.items())[:6])
        table.caption += (
            f" Parameters held by a module above the rows, in no row: {names}"
            + (f" and {len(unlisted) - 6} more" if len(unlisted) > 6 else "")
            + f"; {listed:,} + {sum(unlisted.values()):,} = {report.params:,}, the total."
        )
    # MACs of functional calls outside every row (a matmul in a forward) are in the total but in no row
    outside_macs = report.macs - sum(row.macs for row in report.layers)
    if outside_macs:
        table.caption += (
            f" Calls outside the listed layers (functional ops) count {outside_macs:,} MACs: "
            f"{report.macs - outside_macs:,} + {outside_macs:,} = {report.macs:,}, the total."
        )
    # Functional calls between modules (a block's F.relu) save storages that no row holds: without a word the column's
    # total fell short of the memory table's "activations kept for backward" (mobilenet_v3_small by 949,984 bytes).
    outside = report.realistic["activations_bytes"] - saved_total
    if outside:
        table.caption += (
            f" Calls outside the listed layers (functional ops) save {outside:,} bytes more: "
            f"{saved_total:,} + {outside:,} = {report.realistic['activations_bytes']:,}, "
            "the activations kept for backward."
        )
    return table


def memory_table(report: BudgetReport) -> Table:
    """Each memory component, textbook and realistic side by side."""
    text, real, inf = report.training, report.realistic, report.inference
    table = Table(title=f"Memory ({report.dtype}, optimizer {report.optimizer} stepping as on {report.device})")
    table.add_column("component")
    table.add_column("textbook", justify="right")
    table.add_column("realistic (PyTorch)", justify="right")
    # Buffers (batch norm's running statistics and its int64 batch counter) are a row of their own, which the textbook
    # view does not count: a row "parameters (+ buffers)" showed the textbook's parameters alone beside the realistic
    # sum, and the realistic training rows did not add up to their total.
    buffers = real["buffers_bytes"]
    rows = [
        ("inference: parameters", inf["params_bytes"], real["params_bytes"]),
        ("inference: buffers", None, buffers),
        ("inference: working set, 1 instance", inf["working_set_bytes"], real["inference_working_set_bytes"]),
        ("inference: total", inf["total_bytes"], real["inference_total_bytes"]),
        (f"training (batch {text['batch_size']}): parameters", text["params_bytes"], real["params_bytes"]),
        ("  buffers", None, buffers),
        ("  gradients", text["grads_bytes"], real["grads_bytes"]),
        ("  optimizer state", text["optimizer_bytes"], real["optimizer_bytes"]),
        ("  input batch", text["inputs_bytes"], real["inputs_bytes"]),
        ("  activations kept for backward", text["activations_bytes"], real["activations_bytes"]),
        ("  total", text["total_bytes"], real["total_bytes"]),
        ("  peak of live tensors in a step", None, real["peak_bytes"]),
    ]
    for label, textbook, realistic in rows:
        if label.endswith("buffers") and not buffers:  # a network without batch norm: no row of zeros
            continue
        table.add_row(
            label,
            "-" if textbook is None else f"{textbook:,} ({readable_bytes(textbook)})",
            f"{realistic:,} ({readable_bytes(realistic)})",
        )
    return table


def ratio_text(ratio: float | None) -> str:
    """An estimate/measured ratio to four places; where the real step held 0 bytes and the estimate did not, none."""
    return "- (measured 0)" if ratio is None else f"{ratio:.4f}"


def measured_table(report: BudgetReport) -> Table | None:
    if not report.measured:
        return None
    measured = report.measured
    table = Table(title=f"Estimate vs measurement (one real training step on {measured['device']})")
    for header in ("quantity", "estimate", "measured", "estimate / measured"):
        table.add_column(header, justify="right" if header != "quantity" else "left")
    table.add_row(
        "saved for backward",
        f"{report.realistic['saved_for_backward_bytes']:,}",
        f"{measured['saved_for_backward_bytes']:,}",
        ratio_text(measured["saved_ratio"]),
    )
    table.add_row(
        "peak live tensors",
        f"{report.realistic['peak_bytes']:,}",
        f"{measured['peak_live_bytes']:,}",
        ratio_text(measured["peak_ratio"]),
    )
    if "cuda_max_allocated_bytes" in measured:
        table.add_row(
            "torch.cuda.max_memory_allocated",
            f"{report.realistic['peak_bytes']:,}",
            f"{measured['cuda_max_allocated_bytes']:,}",
            ratio_text(measured["cuda_ratio"]),
        )
    return table


def plan_table(report: BudgetReport) -> Table | None:
    if not report.plan:
        return None
    limit = report.plan["limit_bytes"]
    exact = readable_bytes(limit) if limit < 1e4 else f"{limit:,} bytes ({readable_bytes(limit)})"  # said once
    table = Table(title=f"Largest training batch within {exact}")
    for header in ("remedy", "fixed", "per sample", "max batch"):
        table.add_column(header, justify="left" if header == "remedy" else "right")
    for remedy in report.plan["remedies"]:
        table.add_row(
            remedy["remedy"],
            readable_bytes(remedy["fixed_bytes"]),
            readable_bytes(remedy["per_sample_bytes"]),
            f">= {remedy['max_batch']:,} (search cap)"
            if remedy.get("max_batch_capped")
            else f"{remedy['max_batch']:,}",
        )
    return table


def plan_note(report: BudgetReport) -> str | None:
    """When no remedy fits one sample in the memory planned for, what the least demanding one needs for one."""
    if not report.plan or any(remedy["max_batch"] > 0 for remedy in report.plan["remedies"]):
        return None
    need = min(report.plan["remedies"], key=lambda remedy: remedy["fixed_bytes"] + remedy["per_sample_bytes"])
    one = need["fixed_bytes"] + need["per_sample_bytes"]
    return (
        f"No batch fits in {readable_bytes(report.plan['limit_bytes'])}: the least memory is {need['remedy']}'s, about "
        f"{readable_bytes(one)} for one sample ({readable_bytes(need['fixed_bytes'])} fixed + "
        f"{readable_bytes(need['per_sample_bytes'])} per sample)."
    )


def bf16_note(plan: dict[str, Any] | None) -> str | None:
    """Why bf16 mixed precision needs more per sample than float32, where a plan says it does."""
    rows = {remedy["remedy"]: remedy for remedy in (plan or {}).get("remedies", [])}
    if "bf16 mixed precision" not in rows:
        return None
    bf16, configured = rows["bf16 mixed precision"], rows["as configured"]
    if bf16["per_sample_bytes"] <= configured["per_sample_bytes"]:
        return None
    return (
        f"bf16 mixed precision needs more per sample here ({readable_bytes(bf16['per_sample_bytes'])} against "
        f"{readable_bytes(configured['per_sample_bytes'])}): autocast keeps the float32 input and a bf16 copy of it, "
        "and where the loss is taken it holds the network's bf16 output and the loss's float32 copy of it; a "
        "network whose output is large next to the activations it saves gains nothing from bf16."
    )


def mixed_precision_note(report: BudgetReport) -> str | None:
    """What a plan's bf16 row is worth where it is not what it seems: for a network already in 16 bits the same step
    as configured (autocast changes a float32 model only), and for a GPU this machine lacks an estimate it cannot
    check (autocast does not run on the meta device: the row adjusts float32 traces, checked against CPU steps)."""
    rows = {remedy["remedy"] for remedy in (report.plan or {}).get("remedies", [])}
    if "bf16 mixed precision" not in rows:
        return None
    if report.dtype in ("float16", "bfloat16"):
        return (
            f"The network is already {report.dtype}: bf16 mixed precision (autocast of a float32 model) changes "
            "nothing here: its row repeats the configured step's, and all three's is gradient checkpointing with SGD."
        )
    if report.device.startswith("cuda") and not torch.cuda.is_available():
        return (
            "The bf16 row is an estimate (float32 meta-device traces adjusted for autocast, checked against real CPU "
            f"steps); this machine has no GPU to check it on {report.device}."
        )
    return None


def nothing_to_train_note(report: BudgetReport) -> str | None:
    """For a network without trainable parameters, what its training figures mean: a step is a forward pass."""
    if report.trainable_params:
        return None
    batch = report.training["batch_size"]
    return (
        f"Nothing to train: {escape(report.model_name)} has no trainable parameters, so a training step is its forward "
        f"pass alone (no backward: no gradients, no optimizer state, no activations kept for it); at batch {batch} "
        f"it holds what inference on {batch} sample{'' if batch == 1 else 's'} holds, a peak of "
        f"{report.realistic['peak_bytes']:,} bytes "
        f"({readable_bytes(report.realistic['peak_bytes'])})."
    )


def _modules(modules: dict[str, int]) -> str:
    names = ", ".join(escape(name) for name in modules)
    return f"{names} ({sum(modules.values()):,} parameters)"


def mode_notes(report: BudgetReport) -> list[str]:
    """What the figures hold of modules that run in training mode only (auxiliary heads), or get no gradient."""
    notes = []
    if report.training_only:
        notes.append(
            f"{_modules(report.training_only)} run in training mode only: the realistic training figures include "
            "their forward and backward (their outputs are added to the loss, as auxiliary classifiers are trained); "
            "the MACs, output shapes, textbook activations and inference figures are the eval-mode forward's, "
            "without them."
        )
    if report.no_gradient:
        notes.append(
            f"{_modules(report.no_gradient)} get no gradient in a training step (their output never reaches the "
            "network's output): the parameters count them, but the traced step makes no gradient or optimizer "
            "update for them, while the gradient and optimizer-state rows assume every trainable parameter has one."
        )
    if report.one_value_batch_norms:
        names = ", ".join(escape(name) for name in report.one_value_batch_norms)
        notes.append(
            f"At batch 1, batch norm in training mode sees one value per channel in {names} (a 1x1 map): PyTorch "
            'refuses such a step ("Expected more than 1 value per channel when training"), so it was traced with that '
            "check lifted. Its figures are exact for the step the kernels would run, but that step trains nothing "
            "useful there (each such channel's output is its bias, its running variance becomes NaN): train at "
            "--batch 2 or more."
        )
    return notes


def summary_line(report: BudgetReport) -> str:
    """Parameters, MACs and FLOPs on one line."""
    return (
        f"parameters {report.params:,} ({report.trainable_params:,} trainable) | "
        f"MACs {report.macs:,} per image ({report.macs / 1e9:.3f} G) | FLOPs = 2 x MACs = {report.flops:,}"
    )


def default_console() -> Console:
    """A console for the tables: the terminal's width, or 160 columns when output goes to a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def print_report(report: BudgetReport, console: Console | None = None, layers: bool = True) -> None:
    """Print the tables of a report."""
    console = console or default_console()
    if layers:
        console.print(layer_table(report))
    console.print(summary_line(report))
    console.print(memory_table(report))
    for note in memory_notes(report):
        console.print(note)
    for table in (measured_table(report), plan_table(report)):
        if table is not None:
            console.print(table)
    for note in plan_notes(report):
        console.print(note)


def memory_notes(report: BudgetReport) -> list[str]:
    """What the memory table's training figures mean where it is not plain (printed below that table)."""
    notes = (detection_note(report), recurrent_note(report), nothing_to_train_note(report), *mode_notes(report))
    return [note for note in notes if note]


def recurrent_note(report: BudgetReport) -> str | None:
    """What the training figures leave out of a recurrent layer (a CRNN's LSTM over the width): the workspace its
    fused kernel keeps for backward, which a real step saved (--measure) at several times the estimate's bytes."""
    if not report.recurrent:
        return None
    names = ", ".join(f"{escape(name)} ({kind})" for name, kind in report.recurrent.items())
    return (
        f"Recurrent layers {names}: the workspace their fused kernel keeps for backward (the gates of every time "
        "step; cuDNN's reserve space on CUDA) is not sized, so the saved-for-backward bytes, the peak and the plan "
        "are low for them (a small CRNN's real step saved about twice to four times the estimate's bytes for its "
        "LSTM); --measure gives the real figures."
    )


def detection_note(report: BudgetReport) -> str | None:
    """What was sized of a detection network, at what shape, and what depends on the image's values."""
    info = report.detection
    if info is None:
        return None
    transform = info["transform"]
    if transform["fixed_size"]:
        how = f"to its fixed_size {'x'.join(map(str, transform['fixed_size']))}"
    else:
        how = f"min_size {transform['min_size']}, max_size {transform['max_size']}"
        if transform["size_divisible"] > 1:
            how += f", padded to a multiple of {transform['size_divisible']}"
    given, resized = "x".join(map(str, info["given_shape"])), "x".join(map(str, info["resized_shape"]))
    if info["given_shape"][0] != info["resized_shape"][0]:  # 1 -> 3: "resizes 1x320x320 to 3x320x320" said no why
        how += (
            f"; its per-channel normalisation repeats the {info['given_shape'][0]} channel into "
            f"{info['resized_shape'][0]}, as torchvision's forward does"
        )
    text = (
        f"{escape(report.model_name)} is a detection network ({info['network']}): its own transform resizes the "
        f"{given} image to {resized} ({how}), and it is sized at that shape. The layers, MACs and memory above are "
        "its backbone and dense heads, which run on every position of every image of that size: exact whatever the "
        "image. Anchors, box decoding and non-maximum suppression add no MACs, but how many boxes they keep depends "
        "on the image's values"
    )
    heads = info["per_box_heads"]
    # said of every detection network: RetinaNet's, FCOS's and SSD's training figures left out their losses unsaid
    training = (
        "The training figures are one step of the backbone and dense heads on the sum of their outputs; torchvision's "
        "own training step (targets, "
        + ("sampled proposals" if heads else "anchors matched to them")
        + ", its losses) is not sized."
    )
    if not heads:
        return f"{text}, and no head runs per box: the MACs are one image's. {training}"
    parts = [
        f"{' + '.join(head['modules'])} {head['macs_per_box']:,} MACs per {head['runs_on']} (up to "
        f"{head['most_per_image']:,} per image)"
        for head in heads
    ]
    return (
        f"{text}, and so does the work of the heads that run once per box (their rows above show their parameters "
        f"only): {'; '.join(parts)}. "
        f"One image costs from {report.macs / 1e9:.3f} G (no box kept) to {info['most_macs'] / 1e9:.3f} G MACs "
        f"(every head at its most). {training}"
    )


def plan_notes(report: BudgetReport) -> list[str]:
    """What the memory plan's figures mean where it is not plain (printed below the plan)."""
    return [note for note in (plan_note(report), bf16_note(report.plan), mixed_precision_note(report)) if note]


def report_notes(report: BudgetReport) -> list[str]:
    """Every note ``cnnlab budget`` prints below its tables, in its order (the lab's Budget page shows them)."""
    return memory_notes(report) + plan_notes(report)
