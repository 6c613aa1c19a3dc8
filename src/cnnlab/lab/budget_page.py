"""The Budget page: `cnnlab budget` for a layer spec or a zoo model, as tables and a chart.

The tables are the CLI's own (`cnnlab.budget.render`), read cell by cell, so every figure on the page is the one
``cnnlab budget`` prints for the same inputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from cnnlab.budget import BudgetReport, budget, parse_memory
from cnnlab.budget.render import (
    layer_table,
    memory_table,
    plan_table,
    report_notes,
    summary_line,
)
from cnnlab.budget.spec import parse_size
from cnnlab.errors import CnnlabError
from cnnlab.tasks.answers.measure import EXERCISE_2_SPEC

__all__ = [
    "EXERCISE_SPEC",
    "BudgetView",
    "TableData",
    "MAX_BATCH",
    "budget_view",
    "check_batch",
    "in_page_words",
    "memory_chart",
    "memory_unit",
    "parse_target",
    "table_data",
]

EXERCISE_SPEC = "\n".join(EXERCISE_2_SPEC)

# The options of ``cnnlab budget`` by the labels of the page's fields that hold them: the library's messages and notes,
# which the command shares, name its options ("use that --input", "train at --batch 2 or more").
_FIELDS = {"--input": "input CxHxW", "--batch": "batch", "--memory": "memory", "--dtype": "dtype",
           "--optimizer": "optimizer"}  # fmt: skip


@dataclass
class TableData:
    """A table as plain strings: what a data frame in the page shows.

    Attributes:
        caption: the line the CLI prints under the table (the layer table's: whether the input batch is saved), or "".
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""

    @property
    def label(self) -> str:
        """The title, the caption after it: the page's frame has one label."""
        return f"{self.title}. {self.caption}" if self.caption else self.title


@dataclass
class BudgetView:
    """Everything the Budget page shows.

    Attributes:
        notes: what ``cnnlab budget`` prints below its tables for these inputs: that no batch fits the memory given
            (and what one sample needs), that a network without trainable parameters has nothing to train.
    """

    report: BudgetReport
    summary: str
    layers: TableData
    memory: TableData
    plan: TableData | None
    notes: list[str] = field(default_factory=list)


def table_data(table: Table) -> TableData:
    """The cells of a rich table (its footer, when shown, as the last row), its title and its caption."""
    columns = [[str(cell) for cell in column.cells] for column in table.columns]
    rows = [list(row) for row in zip(*columns, strict=True)]
    if table.show_footer:
        rows.append([str(column.footer) for column in table.columns])
    headers = [str(column.header) for column in table.columns]
    return TableData(str(table.title or ""), headers, rows, str(table.caption or ""))


def parse_target(text: str) -> str | list[str]:
    """A zoo model name, or layer strings one per line. Never a file: the page reads nothing from disk.

    One word that is not a layer type (``resnet5O``, ``ResNet50``) is read as a model name, so a misspelt one gets
    the zoo's "did you mean" rather than a complaint about layer strings.

    Raises:
        CnnlabError: nothing entered, or one word that is neither a zoo model nor a layer type.
    """
    import difflib

    from cnnlab.budget.spec import LAYER_TYPES
    from cnnlab.models import is_model, list_models

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CnnlabError("enter a zoo model name (resnet50) or layer strings, one per line (conv 100 k3 s2 same)")
    _refuse_command_line(lines)
    if len(lines) == 1 and is_model(lines[0]):
        return lines[0]
    if len(lines) == 1 and _cli_only(lines[0]):  # was "unknown model ...; `cnnlab zoo` lists the models"
        raise CnnlabError(
            "the page sizes zoo models and layer strings only (it imports no code and opens no file a form names): "
            f"`cnnlab budget {lines[0]}` sizes it (with --input CxHxW for a network without a default input size)"
        )
    if len(lines) == 1 and len(lines[0].split()) == 1 and lines[0].lower() not in LAYER_TYPES:
        close = difflib.get_close_matches(lines[0].lower(), list_models(), n=3)  # the names are lower case
        hint = f"did you mean {', '.join(close)}?" if close else "`cnnlab zoo` lists the models"
        raise CnnlabError(
            f"unknown model {lines[0]!r}; {hint} (layer strings start with a layer type: conv 100 k3 s2 same)"
        )
    return lines


def _refuse_command_line(lines: list[str]) -> None:
    """Refuse a `cnnlab budget` command line pasted in, as README shows them: its quotes and options were read as
    layer strings (\"unknown layer type '"conv'\", "unknown layer type 'resnet50'" for ``resnet50 --input ...``).

    Raises:
        CnnlabError: a line that starts with ``cnnlab``, holds an option (a word starting with ``-``) or quotes.
    """
    words = [word for line in lines for word in line.split()]
    if words[0].lower() == "cnnlab" or any(word.startswith("-") for word in words):
        option = next((word for word in words if word.startswith("-")), words[0])
        raise CnnlabError(
            f"enter a zoo model name or layer strings only, not a command line ({option!r}): the input CxHxW, batch "
            "and memory have fields of their own; --measure, --explain and --json are the command line's alone "
            "(`cnnlab budget --help`)"
        )
    if any(quote in line for line in lines for quote in "\"'"):
        raise CnnlabError(
            "enter layer strings without quotes, one per line (conv 100 k3 s2 same): quotes keep each one a single "
            "argument on the command line only"
        )


def _cli_only(target: str) -> bool:
    """Whether `target` names what only ``cnnlab budget`` sizes: Python code (``MODULE:NAME``, ``FILE.py:NAME``), a
    run folder or a spec file."""
    path_like = any(mark in target for mark in (":", "/", "\\"))
    return path_like or target.lower().endswith((".py", ".yaml", ".yml", ".json"))


MAX_BATCH = 10**9  # far beyond any real mini-batch; larger ones overflow torch's byte counts (a huge input overflows
# them at a smaller batch: `budget.core.input_error` says so)


def check_batch(batch_size: float | None) -> int:
    """The batch field's value as an int.

    Raises:
        CnnlabError: empty, not a whole number, below 1 or above `MAX_BATCH`.
    """
    if batch_size is None:
        raise CnnlabError("enter a batch: the number of samples in one training step, e.g. 32")
    if math.isnan(batch_size) or (math.isfinite(batch_size) and batch_size != int(batch_size)):
        raise CnnlabError(f"the batch must be a whole number of samples; {batch_size:g} is not")
    if batch_size < 1:
        raise CnnlabError(f"the batch must be at least 1; {batch_size:g} is not")
    if batch_size > MAX_BATCH:
        raise CnnlabError(f"the batch {batch_size:g} is too large; the page sizes batches up to {MAX_BATCH:,}")
    return int(batch_size)


def in_page_words(text: str) -> str:
    """`text`, a message or note of `cnnlab.budget`, with each option the page has a field for named by that field's
    label: "--input 1x224x224 has 1 channel" reads "input CxHxW 1x224x224 has 1 channel"."""
    options = r"(?<![\w-])--(?:input|batch|memory|dtype|optimizer)(?![\w-])"  # not inside a quoted layer string
    return re.sub(options, lambda option: _FIELDS[option[0]], text)


def budget_view(
    target: str | None,
    input_shape: str | None = "",
    batch_size: float | None = 1,
    memory: str | None = "",
    dtype: str | None = "float32",
    optimizer: str | None = "adam",
) -> BudgetView:
    """Size `target` as ``cnnlab budget TARGET --input INPUT --batch B --memory M --dtype --optimizer`` does.

    Args:
        target: a zoo model name, or layer strings one per line.
        input_shape: one sample, CxHxW; empty for a zoo model's own size.
        batch_size: the training mini-batch: a whole number from 1 to `MAX_BATCH` (the page's number field may send
            a float; 2.7 is refused, not rounded).
        memory: plan for this much memory (e.g. 8GiB), or empty for no plan.
        dtype: float32, float16 or bfloat16.
        optimizer: sgd, momentum, adam or adamw.

    A field sent empty as None (Gradio's API takes null for any of them) is read as left empty, a dropdown's as its
    default: it was an AttributeError ("'NoneType' object has no attribute 'strip'") in place of a message.
    """
    target, input_shape, memory = target or "", input_shape or "", memory or ""
    dtype, optimizer = dtype or "float32", optimizer or "adam"
    batch = check_batch(batch_size)
    shape = parse_size(input_shape.strip(), "input") if input_shape.strip() else None
    parsed = parse_target(target)
    if isinstance(parsed, list) and shape is None:  # the library's message names the CLI's --input
        raise CnnlabError("layer strings need the input CxHxW field: the shape of one sample, e.g. 3x200x300")
    memory_limit = parse_memory(memory) if memory.strip() else None
    try:  # a step too large for torch's byte counts is refused naming batch and input, as by the CLI
        report = budget(
            parsed, input_shape=shape, batch_size=batch, dtype=dtype, optimizer=optimizer, memory_limit=memory_limit
        )
    except CnnlabError as error:  # it named options the page does not have ("use that --input")
        raise CnnlabError(in_page_words(str(error))) from None
    plan = plan_table(report)
    return BudgetView(
        report,
        summary_line(report),
        table_data(layer_table(report)),
        table_data(memory_table(report)),
        None if plan is None else table_data(plan),
        [in_page_words(note) for note in report_notes(report)],  # "train at --batch 2 or more"
    )


_UNITS = (("B", 1.0), ("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12))


def memory_unit(largest_bytes: float) -> tuple[str, float]:
    """The unit (name, bytes) that shows `largest_bytes` as a number from 1 to 1000 (B up to TB)."""
    return next(((name, size) for name, size in reversed(_UNITS) if largest_bytes >= size), _UNITS[0])


def memory_chart(report: BudgetReport) -> Any:
    """A matplotlib figure: training memory by component, textbook view beside what PyTorch keeps, in a unit chosen
    from the largest figure (kB for a small spec, TB for a 20000x20000 input), with no hidden offset on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    components = [
        ("parameters", "params_bytes"),
        ("buffers", "buffers_bytes"),  # batch-norm statistics; the textbook view has none
        ("gradients", "grads_bytes"),
        ("optimizer state", "optimizer_bytes"),
        ("input batch", "inputs_bytes"),
        ("activations", "activations_bytes"),
    ]
    views = [("textbook", report.training), ("PyTorch keeps", report.realistic)]
    largest = max(
        report.realistic["peak_bytes"], *(sum(values.get(key, 0) for _, key in components) for _, values in views)
    )
    unit, size = memory_unit(largest)
    figure, axis = plt.subplots(figsize=(7, 3.6))
    for position, (_view, values) in enumerate(views):
        bottom = 0.0
        for index, (label, key) in enumerate(components):
            height = values.get(key, 0) / size
            axis.bar(position, height, bottom=bottom, color=f"C{index}", label=label if position == 0 else None)
            bottom += height
    peak = report.realistic["peak_bytes"] / size
    axis.axhline(peak, color="black", linestyle="--", linewidth=1, label=f"peak of live tensors ({peak:,.1f} {unit})")
    axis.set_xticks(range(len(views)), [name for name, _ in views])
    axis.ticklabel_format(axis="y", style="plain", useOffset=False)  # an offset (1e7) is easily missed
    axis.set_ylabel(unit)
    axis.set_title(f"training memory, batch {report.batch_size}, {report.dtype}, {report.optimizer}")
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return figure
