"""Planning: the largest training batch that fits a memory limit, as configured and with each out-of-memory remedy.

Training memory grows with the batch size: a fixed part (parameters, gradients, optimizer state) plus a per-sample
part (the input, the tensors saved for backward, the transient tensors of backward). Meta-device traces give the peak
of a step at any batch size at no memory cost, for each remedy:

- **gradient checkpointing**: traced for real on a copy checkpointed by
  `cnnlab.train.activation_checkpointing.checkpoint_stages` (the engine's own `--grad-checkpointing`), recomputation
  in backward included;
- **SGD without momentum**: traced with that optimizer (Adam keeps two copies of the weights);
- **bf16 mixed precision**: autocast cannot run on the meta device, so the peak is adjusted op by op: of what an op
  holds per sample, the bytes autocast leaves as they are stay (the float32 input, and what is computed from it
  before a convolution or matrix product; integer tensors such as max pooling's indices: the trace's
  ``autocast_kept_timeline``), a bf16 copy of the input is added where autocast holds it (from the first
  convolution that saves it to its backward: ``autocast_input_copy_timeline``), and every other tensor, activations
  and their gradients, is halved (`_Planner.bf16_per_sample`); parameters, gradients and optimizer state stay
  float32. Where the loss is taken the network's output is held twice, in bf16 and as the loss's float32 copy: for a
  network whose output is large (a segmenter's logits, a lone convolution) that makes bf16 need more per sample than
  float32. Autocast's bf16 copies of the weights are added at each op where autocast would hold them, from the op that
  first takes a weight until the backward of the ops that saved it has run (the trace's ``autocast_copy_timeline``; with
  checkpointing they are dropped when forward ends and made again by the recomputation), and those of the biases until
  forward (or a recomputation) ends. Against real CPU steps under autocast, as the engine runs them, it is never low and
  at most 0.3% high across the zoo, all three exact to the byte but alexnet's 8 kB (benchmarks/memory_cpu.py,
  docs/BENCHMARKS.md);
- **all three** combines them the same way.

How it stays fast. Searching batch sizes trace by trace took 63 traces for resnet152 (two minutes). Instead, the live
bytes after every op of forward and backward are a straight line in the batch size (a tensor's size is a multiple of
the batch or does not depend on it), so two traces of each model variant give every op's line: at batch 1 and 2, or
batch 1 and the batch `budget()` already traced for its report. The peak at any batch is the highest line there (the
op holding the peak moves from the end of backward, where the gradients live, to its start as the batch grows); the
optimizer step adds its temporaries on top of the live bytes after backward (traced once: they depend on the
parameters only); and the largest batch is where the highest line meets the limit, with no search. One more trace per
variant, at its largest answer, verifies every op's predicted bytes (see `_Planner.plan` for why that covers the
smaller answers too). Where they differ (memory not linear in the batch), a search with exact traces, starting from
the lines' answer, finds the largest batch. With `cnnlab.budget.trace`'s meta-kernel cache, resnet152 plans in
seconds, with the same answers and columns as the search.

`budget()` hands its own trace (at the report's batch size) to the planner as one of the two batch sizes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.budget.trace import (
    OptimizerStepBytes,
    TraceResult,
    copy_network,
    meta_copy_keeping_ties,
    optimizer_device,
    optimizer_step_bytes,
    trace,
)
from cnnlab.train.optim import ParamGroupBuilder

LARGEST_PLANNED_BATCH = 1 << 20  # the largest batch the planner reports


@dataclass(frozen=True)
class _Step:
    """What forward and backward of one model variant held at one batch size, without optimizer state."""

    batch: int
    timeline: tuple[int, ...]  # live bytes at the start and after each op
    step_start: int  # live bytes after backward, where the optimizer step begins
    saved: int  # bytes saved for backward, the input included
    copies: tuple[int, ...]  # at each op, the bytes bf16 autocast's copies of the weights would hold (any batch)
    loss_index: int = -1  # the op of the timeline where the loss is taken, the network's output alive
    output: int = 0  # the network's output in float32 bytes
    kept: tuple[int, ...] = ()  # of `timeline`, the bytes bf16 autocast would leave as they are (the input's too)
    freed: tuple[int, ...] = ()  # of `timeline`, the bytes bf16 autocast would already have freed
    input_copies: tuple[int, ...] = ()  # beside `timeline`, autocast's bf16 copies of the float32 input it holds

    @classmethod
    def from_trace(cls, result: TraceResult) -> _Step:
        state = result.optimizer_state_bytes
        return cls(
            result.batch_size,
            tuple(live - state for live in result.live_timeline),
            result.step_start_bytes - state,
            result.saved_bytes,
            tuple(result.autocast_copy_timeline),
            result.loss_op_index,
            result.output_values * 4,
            tuple(result.autocast_kept_timeline),
            tuple(result.autocast_freed_timeline),
            tuple(result.autocast_input_copy_timeline),
        )

    def peak(self, optimizer: OptimizerStepBytes) -> int:
        """The peak of the whole step with `optimizer`: exactly what `trace` reports for it."""
        backward_peak = max(max(self.timeline), self.step_start + optimizer.step_transient_bytes)
        return backward_peak + optimizer.state_bytes


@dataclass(frozen=True)
class _Line:
    fixed: int
    per_sample: int

    def at(self, batch: int) -> int:
        return self.fixed + self.per_sample * batch


@dataclass(frozen=True)
class _Lines:
    """Every value of a `_Step` as a line in the batch size, fitted through two traces."""

    timeline: tuple[_Line, ...]
    step_start: _Line
    saved: _Line
    batches: tuple[int, int]  # the two traced batch sizes
    copies: tuple[int, ...]  # `_Step.copies`, the same at every batch
    loss_index: int = -1  # `_Step.loss_index`, the same at every batch
    output: _Line = _Line(0, 0)  # `_Step.output`
    kept: tuple[_Line, ...] = ()  # `_Step.kept`
    freed: tuple[_Line, ...] = ()  # `_Step.freed`
    input_copies: tuple[_Line, ...] = ()  # `_Step.input_copies`

    @classmethod
    def through(cls, first: _Step, second: _Step) -> _Lines | None:
        """The lines through two traces; None when they are not lines (other ops, or fractions of a byte per sample)."""
        same_ops = len(first.timeline) == len(second.timeline) and first.loss_index == second.loss_index
        same_ops = same_ops and len(first.kept) == len(second.kept) and len(first.freed) == len(second.freed)
        same_ops = same_ops and len(first.input_copies) == len(second.input_copies)
        if not same_ops or first.copies != second.copies:
            return None
        span = second.batch - first.batch

        def line(low: int, high: int) -> _Line | None:
            per_sample, remainder = divmod(high - low, span)
            return None if remainder else _Line(low - per_sample * first.batch, per_sample)

        timeline = [line(a, b) for a, b in zip(first.timeline, second.timeline, strict=True)]
        kept = [line(a, b) for a, b in zip(first.kept, second.kept, strict=True)]
        freed = [line(a, b) for a, b in zip(first.freed, second.freed, strict=True)]
        input_copies = [line(a, b) for a, b in zip(first.input_copies, second.input_copies, strict=True)]
        step_start, saved = line(first.step_start, second.step_start), line(first.saved, second.saved)
        output = line(first.output, second.output)
        if step_start is None or saved is None or output is None or None in [*timeline, *kept, *freed, *input_copies]:
            return None
        batches = (first.batch, second.batch)
        copies, loss = first.copies, first.loss_index
        shares = (tuple(kept), tuple(freed), tuple(input_copies))
        return cls(tuple(timeline), step_start, saved, batches, copies, loss, output, *shares)  # type: ignore[arg-type]

    def at(self, batch: int) -> _Step:
        """The step these lines predict at `batch`."""
        timeline = tuple(line.at(batch) for line in self.timeline)
        return _Step(
            batch,
            timeline,
            self.step_start.at(batch),
            self.saved.at(batch),
            self.copies,
            self.loss_index,
            self.output.at(batch),
            tuple(line.at(batch) for line in self.kept),
            tuple(line.at(batch) for line in self.freed),
            tuple(line.at(batch) for line in self.input_copies),
        )

    def peak_lines(self, optimizer: OptimizerStepBytes) -> list[_Line]:
        """Lines whose highest value at a batch is `_Step.peak` there: one per distinct per-sample slope is enough."""
        highest: dict[int, int] = {}
        start = self.step_start
        for line in (*self.timeline, _Line(start.fixed + optimizer.step_transient_bytes, start.per_sample)):
            highest[line.per_sample] = max(highest.get(line.per_sample, line.fixed), line.fixed)
        return [_Line(fixed + optimizer.state_bytes, per_sample) for per_sample, fixed in highest.items()]


def _largest_under_lines(lines: Iterable[_Line], limit_bytes: int) -> int:
    """Largest batch b (up to the cap) with every line at or under the limit; 0 when batch 1 does not fit.

    The highest of several lines is convex in b, so the batches that fit are 1..b: b is where the first rising line
    crosses the limit.
    """
    lines = list(lines)
    if max(line.at(1) for line in lines) > limit_bytes:
        return 0
    crossings = [(limit_bytes - line.fixed) // line.per_sample for line in lines if line.per_sample > 0]
    return min([LARGEST_PLANNED_BATCH, *crossings])


def _search_from(guess: int, fits: Callable[[int], bool]) -> int:
    """Largest batch b (up to the cap) with fits(b), for a `fits` true up to some batch and false after it.

    Steps up (or down) from `guess` by doubling strides until the answer is bracketed, then bisects: when the guess is
    close, a few traces.
    """
    guess = min(max(guess, 1), LARGEST_PLANNED_BATCH)
    stride = 1
    if fits(guess):
        low = guess
        while True:
            high = min(low + stride, LARGEST_PLANNED_BATCH)
            if high == low:
                return LARGEST_PLANNED_BATCH
            if not fits(high):
                break
            low, stride = high, stride * 2
    else:
        high = guess
        while True:
            low = max(high - stride, 1)
            if fits(low):
                break
            if low == 1:
                return 0
            high, stride = low, stride * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _reusable(reference: TraceResult, dtype: torch.dtype, optimizer: str, for_device: str) -> bool:
    """Whether a caller's trace is a training step traced as the planner's are (meta device, dtype, optimizer, the
    device its optimizer steps as)."""
    traced = (reference.device, reference.dtype, reference.optimizer, reference.optimizer_device)
    same = traced == ("meta", dtype, optimizer, optimizer_device("meta", for_device))
    return same and bool(reference.live_timeline)


@dataclass(frozen=True)
class _Remedy:
    name: str
    checkpointed: bool
    optimizer: str
    bf16: bool


class _Planner:
    """Traces on demand (each variant and batch once) and answers each remedy from lines, verified by one trace."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        dtype: torch.dtype,
        optimizer: str,
        reference: TraceResult | None,
        for_device: str = "cpu",
        param_groups: ParamGroupBuilder | None = None,
    ) -> None:
        from cnnlab.train.activation_checkpointing import checkpoint_stages

        plain = meta_copy_keeping_ties(model)  # copied once here, not by every trace
        checkpointed = copy_network(plain)
        checkpoint_stages(checkpointed)
        self.variants = {False: plain, True: checkpointed}
        self.input_shape, self.dtype, self.for_device = input_shape, dtype, for_device
        self.param_groups = param_groups
        self.steps: dict[tuple[bool, int], _Step] = {}
        self.optimizers: dict[str, OptimizerStepBytes] = {}
        if reference is not None and param_groups is None and _reusable(reference, dtype, optimizer, for_device):
            self.steps[(False, reference.batch_size)] = _Step.from_trace(reference)
            self.optimizers[optimizer] = OptimizerStepBytes(
                reference.optimizer_state_bytes, reference.step_peak_bytes - reference.step_start_bytes
            )
        self.lines: dict[bool, _Lines | None] = {}
        self.input_bytes = math.prod(input_shape) * dtype.itemsize  # one sample's
        self.mixed = dtype.itemsize > 2  # bf16 autocast only changes anything for a float32 model

    def step(self, checkpointed: bool, batch: int) -> _Step:
        key = (checkpointed, batch)
        if key not in self.steps:
            model = self.variants[checkpointed]
            result = trace(model, self.input_shape, batch, self.dtype, "meta", "none", inference=False)
            self.steps[key] = _Step.from_trace(result)
        return self.steps[key]

    def optimizer(self, name: str) -> OptimizerStepBytes:
        if name not in self.optimizers:
            plain = self.variants[False]
            self.optimizers[name] = optimizer_step_bytes(plain, self.dtype, name, self.for_device, self.param_groups)
        return self.optimizers[name]

    def fitted(self, checkpointed: bool) -> _Lines | None:
        """The lines of a variant through two traced batch sizes (the reference's, when there is one, and batch 1)."""
        if checkpointed not in self.lines:
            known = sorted(batch for variant, batch in self.steps if variant == checkpointed)
            first = known[0] if known else 1
            second = known[1] if len(known) > 1 else (2 if first == 1 else 1)
            self.lines[checkpointed] = _Lines.through(
                *sorted((self.step(checkpointed, first), self.step(checkpointed, second)), key=lambda s: s.batch)
            )
        return self.lines[checkpointed]

    def bf16_per_sample(
        self, per_sample: int, kept: int = 0, output: int = 0, freed: int = 0, input_copy: int | None = None
    ) -> int:
        """Bytes per sample under bf16 autocast of an op that holds `per_sample` bytes per sample in float32, `kept` of
        them in tensors that autocast leaves as they are (`TraceResult.autocast_kept_timeline`).

        Autocast keeps integer and boolean tensors (max pooling's int64 indices, dropout's masks), the float32 input
        and what is computed from it before a convolution or matrix product (a normalisation of the input), and the
        first layer that takes it keeps a bf16 copy of it for backward. Every other floating-point tensor an op holds
        per sample, activations saved or recomputed (gradient checkpointing) and their gradients (autograd keeps a
        gradient in its forward's dtype), is halved. Shrinking every op by one share, the saved activations' (0.36
        for mnist_baseline, whose pooling saves int64 indices twice the size of its float32 output), took 36% off
        gradients that halve: mnist_baseline was 1.11x the real CPU step at batch 16, 1.14x at 64. The weights' bf16
        copies are not per sample: `remedy_lines` adds them to each op.

        `output` is the float32 bytes per sample of the network's output, given at the op where the loss is taken:
        there autocast holds the output twice, in bf16 (a convolution's or a matmul's output, and what follows them)
        and as the float32 copy the loss makes of it. Without it a network whose output is large (a single
        convolution, a segmenter's logits) was planned with its output shrunk by nothing and no copy: a conv 32 k3
        on 3x64x64 was 0.70x the real CPU step (0.57 MB per sample against 0.81 MB, float32 0.54 MB).

        `freed` of them autocast would not hold at all (`TraceResult.autocast_freed_timeline`): in backward, a float32
        normalisation of the input that the first convolution saved in float32, where under autocast it saves the
        bf16 copy. Kept as it is, it made mnist_net 1.024x the real CPU step at batch 16.

        `input_copy` is what autocast's bf16 copies of the float32 input (or its normalisation) hold per sample at
        that op (`TraceResult.autocast_input_copy_timeline`); None: one copy of the input, at every op. That was high
        where no copy lives: before the first convolution, after its backward, under a frozen first layer (which
        saves none: 1.001x / 1.004x the real CPU step) and with gradient checkpointing, where only the first
        segment's forward and recomputation hold one (lenet5, all three remedies: 1.004x / 1.011x at batch 1 / 3).
        """
        halved = max(0, per_sample - kept - output - freed)
        halved -= halved // 2  # rounded up: the estimate is never below the bytes it stands for
        copy = self.input_bytes // 2 if input_copy is None else input_copy
        return kept + halved + copy + output // 2 + output

    def remedy_lines(self, remedy: _Remedy) -> list[_Line] | None:
        """Lines whose highest value at a batch is the remedy's peak there; None when the variant's traces gave no
        lines. bf16 autocast shrinks each op's bytes per sample (`bf16_per_sample`) and adds the bf16 copies of the
        weights it holds at that op to its fixed bytes."""
        lines = self.fitted(remedy.checkpointed)
        if lines is not None and remedy.bf16 and self.mixed:

            def bf16(line: _Line, kept: _Line, copies: int, output: int, freed: _Line, inputs: _Line | None) -> _Line:
                copy = None if inputs is None else inputs.per_sample
                per_sample = self.bf16_per_sample(line.per_sample, kept.per_sample, output, freed.per_sample, copy)
                return _Line(line.fixed + copies - freed.fixed + (inputs.fixed if inputs else 0), per_sample)

            outputs = [lines.output.per_sample if op == lines.loss_index else 0 for op in range(len(lines.timeline))]
            freed = lines.freed or (_Line(0, 0),) * len(lines.timeline)
            inputs = lines.input_copies or (None,) * len(lines.timeline)
            timeline = tuple(map(bf16, lines.timeline, lines.kept, lines.copies, outputs, freed, inputs))
            # When backward ends, autocast's copies and the bf16 activations are freed: what the optimizer step starts
            # from is what a float32 step holds (parameters, gradients, state, the float32 input). Shrunk like an op
            # of backward, it gained the input's bf16 copy: a classifier trained on cached features, whose step peaks
            # in the optimizer step, was 13% high (efficientnet_lite0's head, batch 8).
            lines = dataclasses.replace(lines, timeline=timeline)
        return None if lines is None else lines.peak_lines(self.optimizer(remedy.optimizer))

    def peak(self, remedy: _Remedy, batch: int) -> int:
        """The remedy's peak at `batch`: from the variant's lines while they hold, else from an exact trace, with
        bf16's reduction of each op taken from its growth between batch 1 and 2 (when their ops differ, from the
        bytes saved per sample, as if every op grew by all of them, what autocast keeps of it all per sample)."""
        lines = self.remedy_lines(remedy)
        if lines is not None:
            return max(line.at(batch) for line in lines)
        step = self.step(remedy.checkpointed, batch)
        if remedy.bf16 and self.mixed:
            one, two = self.step(remedy.checkpointed, 1), self.step(remedy.checkpointed, 2)
            if len(one.timeline) == len(two.timeline) == len(step.timeline):
                growths = [b - a for a, b in zip(one.timeline, two.timeline, strict=True)]
                kept = [b - a for a, b in zip(one.kept, two.kept, strict=True)]
                freed = [b - a for a, b in zip(one.freed, two.freed, strict=True)]
                copies_of_input = zip(one.input_copies, two.input_copies, strict=True)
                inputs = [b - a for a, b in copies_of_input] or [None] * len(growths)
            else:
                growths = [two.saved - one.saved] * len(step.timeline)
                kept = [min(growth, held // batch) for growth, held in zip(growths, step.kept, strict=True)]
                ops = zip(growths, kept, step.freed, strict=True)
                freed = [min(growth - kept_now, held // batch) for growth, kept_now, held in ops]
                inputs = [None] * len(step.timeline)  # a copy of the input at every op

            def bf16(live: int, growth: int, kept: int, copies: int, output: int, freed: int, input_copy: Any) -> int:
                return live - (growth - self.bf16_per_sample(growth, kept, output, freed, input_copy)) * batch + copies

            output = step.output // batch
            outputs = [output if op == step.loss_index else 0 for op in range(len(step.timeline))]
            timeline = tuple(map(bf16, step.timeline, growths, kept, step.copies, outputs, freed, inputs))
            step = dataclasses.replace(step, timeline=timeline)  # the optimizer step as in float32: `remedy_lines`
        return step.peak(self.optimizer(remedy.optimizer))

    def answer_from_lines(self, remedy: _Remedy, limit_bytes: int) -> int | None:
        """Where the highest of the remedy's lines meets the limit; None when the variant's traces gave no lines."""
        lines = self.remedy_lines(remedy)
        return None if lines is None else _largest_under_lines(lines, limit_bytes)

    def verify(self, checkpointed: bool, largest_answer: int) -> None:
        """Trace the variant once more; if any op's bytes differ from its line, drop the lines (exact traces only).

        The trace is at the largest answer, or the batch after it when the answer is one of the two fitted batch sizes
        (a third batch size is what verifies); none is needed when the answers are 0 or 1 and batch 1 and 2 were traced.
        """
        lines = self.fitted(checkpointed)
        if lines is None:
            return
        batch = largest_answer if largest_answer not in lines.batches else largest_answer + 1
        if batch not in lines.batches and self.step(checkpointed, batch) != lines.at(batch):
            self.lines[checkpointed] = None

    def plan(self, remedies: list[_Remedy], limit_bytes: int) -> list[dict[str, Any]]:
        """Each remedy's answer from the lines, verified by one trace per variant at its largest answer.

        Why one trace per variant is enough: an op's live bytes are a sum of tensor sizes, each a line (or at least a
        convex function) of the batch, so they are convex in the batch; when they match the line at the two fitted
        batch sizes and at a third, they equal the line between the smallest and the largest of the three and are not
        below it beyond. Every answer, the batch after it, and the half batch behind the fixed/per-sample columns then
        lie where the peaks are exactly the lines' (or, past the largest answer, at least as high).
        """
        answers = {remedy: self.answer_from_lines(remedy, limit_bytes) for remedy in remedies}
        for checkpointed in (False, True):
            mine = [answer for remedy, answer in answers.items() if remedy.checkpointed == checkpointed]
            if mine and None not in mine:
                self.verify(checkpointed, max(1, *mine))  # type: ignore[type-var]
        rows = []
        for remedy in remedies:
            best = answers[remedy]
            if self.fitted(remedy.checkpointed) is None:  # no lines, or they failed: search with exact traces
                guess = best if best is not None else self._secant_guess(remedy, limit_bytes)
                best = _search_from(guess, lambda batch, remedy=remedy: self.peak(remedy, batch) <= limit_bytes)
            reference = max(best, 2)  # type: ignore[type-var]
            high, low = self.peak(remedy, reference), self.peak(remedy, reference // 2)
            per_sample = (high - low) / (reference - reference // 2)
            rows.append(
                {
                    "remedy": remedy.name,
                    "fixed_bytes": int(high - per_sample * reference),
                    "per_sample_bytes": int(per_sample),
                    "max_batch": best,
                    # the search stops at the cap: a larger batch fits too (a bare 1,048,576 read as the answer)
                    "max_batch_capped": best >= LARGEST_PLANNED_BATCH,
                }
            )
        return rows

    def _secant_guess(self, remedy: _Remedy, limit_bytes: int) -> int:
        low, high = self.peak(remedy, 1), self.peak(remedy, 2)
        return 1 + int((limit_bytes - low) / max(high - low, 1))


def plan_batch(
    model: nn.Module,
    input_shape: tuple[int, ...],
    dtype: torch.dtype,
    optimizer: str,
    limit_bytes: int,
    reference: TraceResult | None = None,
    for_device: str = "cpu",
    param_groups: ParamGroupBuilder | None = None,
) -> dict[str, Any]:
    """The largest batch that fits `limit_bytes`, and what each remedy allows.

    Args:
        model: the model (any device; the planner works on a meta copy).
        input_shape: one sample's shape.
        dtype: parameter and activation dtype.
        optimizer: sgd, momentum, adam or adamw.
        limit_bytes: the memory to fit.
        reference: a training `trace` of `model` on the meta device with this dtype and optimizer (`budget()`'s own),
            reused as one of the two traced batch sizes; ignored when traced otherwise.
        for_device: the device the plan is for: the optimizer steps as torch steps parameters there (CUDA's
            multi-tensor kernels hold more temporaries than the CPU's loop).
        param_groups: the optimizer's groups of `model` (default `default_param_groups`); a caller's trace with
            other groups is not reused.

    Returns:
        ``{"limit_bytes", "optimizer", "search_cap", "remedies": [{"remedy", "fixed_bytes", "per_sample_bytes",
        "max_batch", "max_batch_capped"}]}``; fixed and per-sample bytes are the straight line through the peaks at
        the answer and half of it; ``max_batch_capped`` is true where the search stopped at ``search_cap``
        (`LARGEST_PLANNED_BATCH`): the largest batch is at least that.
    """
    planner = _Planner(model, input_shape, dtype, optimizer, reference, for_device, param_groups)
    remedies = [_Remedy("as configured", checkpointed=False, optimizer=optimizer, bf16=False)]
    # With nothing to train there is no backward for a remedy to spare: bf16 even planned a smaller batch than plain
    # (an input copy counted for a backward that does not run), and checkpointing and SGD repeated the plain answer.
    if any(parameter.requires_grad for parameter in model.parameters()):
        remedies += [
            _Remedy("bf16 mixed precision", checkpointed=False, optimizer=optimizer, bf16=True),
            _Remedy("gradient checkpointing", checkpointed=True, optimizer=optimizer, bf16=False),
            _Remedy("SGD (no optimizer state)", checkpointed=False, optimizer="sgd", bf16=False),
            _Remedy("all three", checkpointed=True, optimizer="sgd", bf16=True),
        ]
    rows = planner.plan(remedies, limit_bytes)
    return {"limit_bytes": limit_bytes, "optimizer": optimizer, "search_cap": LARGEST_PLANNED_BATCH, "remedies": rows}


def mixed_precision_step(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int,
    optimizer: str,
    for_device: str = "cpu",
    param_groups: ParamGroupBuilder | None = None,
    limit_bytes: int | None = None,
) -> tuple[int, int | None]:
    """The peak of one training step of a float32 `model` at `batch` with its forward under bf16 autocast, and the
    largest batch within `limit_bytes` (None without one), as the plan's bf16 remedy works them out from meta-device
    traces (autocast does not run on the meta device). fp16 autocast holds the same sizes: the same ops are cast, to
    a dtype of the same size (its GradScaler adds scalars).
    """
    planner = _Planner(model, input_shape, torch.float32, optimizer, None, for_device, param_groups)
    remedy = _Remedy("bf16 mixed precision", checkpointed=False, optimizer=optimizer, bf16=True)
    peak = planner.peak(remedy, batch)
    return peak, None if limit_bytes is None else planner.plan([remedy], limit_bytes)[0]["max_batch"]
