"""Run a model once and count what it really holds: shapes, MACs, bytes saved for backward, peak live tensors.

The same code runs on the meta device (no memory is allocated, so any batch size costs nothing: this is the
"realistic estimate") and on a real device (the "measurement" that validates it). Counting works at the level of
storages, so a tensor saved by two ops, or a view such as a flattened activation, is counted once.

- Saved for backward: `torch.autograd.graph.saved_tensors_hooks` sees every tensor autograd keeps; parameters and
  buffers are excluded (they are counted as model state), the input batch is reported separately.
- Peak live: a `TorchDispatchMode` registers every storage an op creates and a finalizer that subtracts it when
  freed; tensors alive before the step (parameters, buffers, the input) are counted from the start.
- MACs: `torch.utils.flop_counter.FlopCounterMode` counts at the aten level (convolutions, matmuls, attention, ...),
  so no layer type is silently zero; MACs = FLOPs / 2 for those ops. A row's MACs are the count's growth between
  its module's forward hooks, not the counter's own module names: those follow the calls, so the layers of a slice
  made in forward (``self.classifier[:-1](x)``) were named after the slice and their rows showed 0. A module never
  called itself (fcn8s calls its backbone's stages one by one) has the MACs of its parts that ran.
- Timeline: the live bytes after every op of forward and backward, and the optimizer step's own peak, kept apart so
  that `cnnlab.budget.planner` can fit each op's bytes as a line in the batch size from two traces, instead of
  tracing every batch size it considers; beside it, what bf16 autocast's copies of the weights would hold at each
  op (autocast does not run on the meta device, so the planner adds them to a float32 trace).
- Speed: many meta kernels are Python decompositions (batch norm's forward and backward take about 2 ms a call,
  most of a resnet152 trace), and a network calls them again and again with the same shapes. On the meta device an
  op's outputs depend only on its inputs' shapes, strides and dtypes, so `_MetaKernelCache` runs each distinct call
  once per trace and replays its outputs' layout for the repeats: a resnet152 training step traces 2-3x faster,
  with the same bytes counted (tests/budget/test_trace_cache.py compares the two).
"""

from __future__ import annotations

import copy
import inspect
import math
import types
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map_only
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.errors import CnnlabError
from cnnlab.train.config import TrainConfig
from cnnlab.train.live_memory import LiveTensorTracker
from cnnlab.train.optim import ParamGroupBuilder, build_optimizer, default_foreach, default_param_groups

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
OPTIMIZER_STATE_COPIES = {"sgd": 0, "momentum": 1, "sgd-momentum": 1, "adam": 2, "adamw": 2, "nadam": 2, "none": 0}
# The engine's `TrainConfig` options for each optimizer name here: its SGD is Nesterov's whenever it has momentum.
_ENGINE_OPTIMIZERS = {
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
    "momentum": {"optimizer": "sgd"},
    "sgd-momentum": {"optimizer": "sgd"},
    "adam": {"optimizer": "adam"},
    "adamw": {"optimizer": "adamw"},
    "nadam": {"optimizer": "nadam"},
}

# the innermost saved-tensor hooks, as torch.utils.checkpoint reads them (private: a torch without it, newer or older
# than 2.14, gets None, and the trace counts autocast's copy of the input as saved at every op, as before it was told)
_TOP_SAVED_HOOKS = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``"float32"``, ``"bf16"``, ... to a torch dtype, with a one-line error for anything else."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise CnnlabError(f"unknown dtype {name!r}; use one of float32, float16, bfloat16")
    return DTYPES[key]


def optimizer_copies(optimizer: str) -> int:
    """How many parameter-sized state tensors an optimizer keeps (SGD 0, momentum 1, Adam/AdamW 2)."""
    key = optimizer.lower()
    if key not in OPTIMIZER_STATE_COPIES:
        # nadam and none were taken but not named (the --help lists them)
        raise CnnlabError(f"unknown optimizer {optimizer!r}; use one of sgd, momentum, adam, adamw, nadam or none")
    return OPTIMIZER_STATE_COPIES[key]


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    """Identities of the storages behind some tensors (used to exclude parameters and buffers)."""
    return {_storage_key(t) for t in tensors}


class SavedTensorCounter:
    """Counts the distinct storages autograd saves for backward while the context is active.

    Args:
        exclude: tensors whose storages are not counted (parameters, buffers).
        inputs: tensors whose storages are counted, but reported apart as ``input_bytes``.
        attribute_to: named callables giving the module running now (e.g. ``{"row": ..., "segment": ...}``);
            the bytes each one saved (the input excluded) are summed in ``attributed[name][module]``.
        saved_as: what autograd keeps of a saved activation (not of `exclude` or `inputs`): by default itself.
    """

    def __init__(
        self,
        exclude: Iterable[torch.Tensor] = (),
        inputs: Iterable[torch.Tensor] = (),
        attribute_to: dict[str, Any] | None = None,
        saved_as: Any = None,
    ) -> None:
        self._saved_as = saved_as or (lambda tensor: tensor)
        self._exclude = storage_keys(exclude)
        self._inputs = storage_keys(inputs)
        self._seen: dict[int, int] = {}
        self.saved_state: set[int] = set()  # storages of `exclude` that autograd saved
        self._attribute_to = attribute_to or {}
        self.attributed: dict[str, dict[str, int]] = {kind: {} for kind in self._attribute_to}
        self.input_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key in self._exclude:
            self.saved_state.add(key)
            return tensor
        if key in self._seen:
            return tensor if key in self._inputs else self._saved_as(tensor)
        nbytes = tensor.untyped_storage().nbytes()
        self._seen[key] = nbytes
        if key in self._inputs:
            self.input_bytes += nbytes
            return tensor
        for kind, current in self._attribute_to.items():
            owner = current() or "(outside modules)"
            self.attributed[kind][owner] = self.attributed[kind].get(owner, 0) + nbytes
        return self._saved_as(tensor)

    @property
    def pack_hook(self) -> Any:
        """The hook autograd calls with each tensor it saves while the context is active, the innermost one."""
        return self._pack

    @property
    def saved_keys(self) -> set[int]:
        """The storages autograd saved (`storage_keys`), parameters and buffers excluded."""
        return set(self._seen)

    @property
    def total_bytes(self) -> int:
        """All distinct saved bytes, the input batch included."""
        return sum(self._seen.values())

    def __enter__(self) -> SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


# The aten ops (as a dispatch mode sees them) whose outputs the CPU's bf16 autocast makes bf16: convolutions, matrix
# products (linear is addmm or mm) and their backward passes, prelu, attention.
_AUTOCAST_BF16_OPS = frozenset(
    {
        "convolution",
        "convolution_backward",
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "addbmm",
        "_prelu_kernel",
        "_prelu_kernel_backward",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
    }
)


# Normalisations whose CPU kernels take a bf16 input with float32 weights and statistics and give bf16: they do not
# promote as elementwise arithmetic with a float32 tensor does
_MIXED_DTYPE_OPS = frozenset(
    {
        "native_batch_norm",
        "native_batch_norm_backward",
        "_native_batch_norm_legit",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit_functional",
        "batch_norm_backward",
        "native_layer_norm",
        "native_layer_norm_backward",
        "native_group_norm",
        "native_group_norm_backward",
    }
)


class _TimelineTracker(LiveTensorTracker):
    """A `LiveTensorTracker` that, while ``recording``, also keeps the live bytes after every op in ``timeline``, of
    them in ``kept_timeline`` those that bf16 autocast would leave as they are, and in ``copy_timeline`` the bytes that
    its copies of the weights would hold at that op.

    Autocast runs convolutions and matrix products in bf16, and what follows them takes their dtype; it leaves integer
    and boolean tensors (max pooling's indices, dropout's masks) as they are, and float32 the input (`keep`) and what
    is computed from it before a convolution or matrix product takes it (a network's own normalisation of its input:
    any other op with a float32 operand gives float32, as type promotion does).

    The copies follow what autocast does on a float32 model: a weight (a trainable float parameter of two or more
    dimensions: convolution kernels, linear matrices; not normalisation's vectors, which stay float32) is cast when an
    op first takes it in forward, and the cast is cached until forward ends; the op saves that copy for backward,
    where it is freed when the backward of every op that took the weight has run (`_backward_ran`), else when the
    weight's gradient is made; the gradients of a weight two ops took are added up in bf16 too. A weight whose op
    saved nothing to this trace (inside a gradient-checkpointed segment) loses its copy when forward ends, and gets a
    new one when backward recomputes the segment (its first op on the weight since). `end_forward` marks where forward
    ends. A trainable vector (`vectors`: a bias) is cast and cached too, by the convolutions and matrix products that
    take it (a batch norm's stays float32); none saves it, so its copy goes when forward ends, or when a recomputation
    does (backward's next op).

    A float32 tensor that only convolutions or matrix products take in forward, made from operands that need no
    gradient (a normalisation of the input), is saved for backward by those ops in float32; autocast casts it for them
    and they save the bf16 copy (the planner's copy of the input), so it is freed once forward no longer refers to it.
    From when forward drops its last reference to it (`saved_as`), else from `end_forward` on, ``freed_timeline``
    holds its bytes: live in this trace, not under autocast.

    A frozen weight (`frozen`: two or more dimensions, no gradient) is cast anew by every op that takes it, autocast
    caches only the casts of weights that train: the copy lives while its op runs, or, when the op saves it for
    backward (its input needs a gradient), until the backward op that takes it. In a gradient checkpoint the copy is
    not held past forward; backward's recomputation casts it again for the backward op that takes it, but this trace
    (no autocast: the op saves the weight itself, nothing to recompute) may stop the recomputation early, before that
    op runs: the copy is then counted at the backward op.

    A float32 parameter or buffer with a dimension (`float32_state`: a per-channel scale) makes any other op than a
    convolution, a matrix product or a normalisation give float32, as type promotion does: its output is kept. In
    backward the gradient a matrix product makes of its float32 input is float32 (autocast's cast of that input makes
    it so), and autograd casts the float32 gradient of a promoted bf16 activation to bf16 (`_cast_gradients`).

    ``input_copy_timeline`` holds the bf16 copies autocast makes of the float32 tensors it leaves as they are (the
    input, its normalisation) for the convolutions and matrix products that take them; such a tensor is no leaf that
    trains, so its cast is never cached. A copy lives while its op runs, or, when the op saves it for backward (a
    weight the op takes trains, and the op runs outside a gradient checkpoint's forward, `saving_hook`, or in its
    recomputation), until the backward op that takes it. A frozen first layer saves none; in a gradient checkpoint
    forward saves none and backward's recomputation casts it again. It also holds autograd's bf16 cast of the
    gradient of a bf16 output (`cast_output_gradients`), which the loss's float32 copy of the output makes in backward.
    """

    def __init__(
        self,
        weights: Iterable[torch.Tensor] = (),
        frozen: Iterable[torch.Tensor] = (),
        vectors: Iterable[torch.Tensor] = (),
        float32_state: Iterable[torch.Tensor] = (),
    ) -> None:
        super().__init__()
        # parameters and buffers autocast leaves float32 that have a dimension: any other op than a convolution, a
        # matrix product or a normalisation promotes its bf16 operands to float32 with them (a scale buffer, a
        # layer-scale gain), where a 0-dimensional one (a normalisation's mean) does not
        self._float32_state = {_storage_key(t) for t in float32_state if t.dtype == torch.float32 and t.dim() >= 1}
        # weights whose convolution or matrix product took a float32 activation that needs a gradient in forward:
        # in backward the gradient of that activation comes out of autocast's cast in float32
        self._weights_of_float32_inputs: set[int] = set()
        # outputs of ops that promoted a bf16 activation to float32 -> (where it is among the op's tensors, how many);
        # autograd casts the float32 gradient it computes for it to bf16, both alive for a moment (`_cast_gradients`)
        self._promoting: dict[int, tuple[list[int], int]] = {}
        self._promoting_now: tuple[list[int], int] | None = None
        self._passed_copies: dict[int, int] = {}  # float32 gradients passed on -> the bytes of their bf16 copies
        self.recording = False
        self.timeline: list[int] = []
        self.kept_timeline: list[int] = []
        self.copy_timeline: list[int] = []
        self.kept_bytes = 0
        self._kept: set[int] = set()  # live storages autocast would leave as they are
        self._float32: set[int] = set()  # of them, the float32 ones
        self._op_keeps_float32 = False  # the op running now would give float32 under autocast
        vectors = list(vectors)
        self._copy_size = {_storage_key(w): w.numel() * 2 for w in [*weights, *vectors]}
        self._vectors = {_storage_key(v) for v in vectors}  # of them, those only a cast casts (biases)
        self._recast_vectors: set[int] = set()  # vectors a checkpoint's recomputation cast: its autocast's cache
        self._copied: set[int] = set()  # weights with a live bf16 copy
        self._finished: set[int] = set()  # weights whose gradient is made
        # weights -> the forward ops that took them with a gradient to make, whose backward has not run yet: autograd
        # frees the copy an op saved when its backward node has run (`_backward_ran`), once no other node saves it
        self._nodes_to_run: dict[int, int] = {}
        self._awaiting_node: dict[int, tuple[Any, list[int]]] = {}  # such an op's output -> (it, the weights)
        self._released: set[int] = set()  # weights whose copy every node that saved it has freed
        self.copy_bytes = 0
        self.freed_timeline: list[int] = []
        self.freed_bytes = 0
        self._freed: set[int] = set()  # live storages that autocast would have freed when forward ended
        self._forward = True  # until `end_forward`
        self._op_needs_grad = False  # the op running now takes a tensor that requires a gradient
        self._float32_size: dict[int, int] = {}
        self._without_grad: set[int] = set()  # float32 kept storages made by ops whose operands need no gradient
        self._cast_for: dict[int, set[int]] = {}  # float32 storages a convolution or matrix product took in forward,
        # with the weights those ops took
        self._taken_otherwise: set[int] = set()  # float32 storages any other op took in forward
        self._frozen_size = {_storage_key(w): w.numel() * 2 for w in frozen}
        self._frozen_held: set[int] = set()  # frozen weights whose bf16 copy an op saved for backward
        self._cast_now = 0  # bytes of the frozen weights' copies the op running now takes
        self._op_casts = False  # the op running now is one autocast runs in bf16
        self._made_in_bf16: dict[int, int] = {}  # storages such an op made while recording -> index of its record
        self._op_sums_bf16 = False  # the op running now is a sum in backward of what autocast holds in bf16
        # in backward, the addition running now of gradients made in bf16 (a weight two ops took): its operands' spans
        # (first point, end point, half their bytes), the end left to fill; `_bf16_spans` keeps them by its result
        self._adding_bf16: list[list[int | None]] | None = None
        self._bf16_spans: dict[int, list[list[int | None]]] = {}
        self._summed_in_bf16: dict[int, int] = {}  # storages such a sum made -> index of its record
        self._cast_vectors: set[int] = set()  # vectors a convolution or matrix product took (and autocast cast)
        self._pending_copies: dict[int, int] = {}  # vectors whose bf16 gradient awaits its float32 copy -> half bytes
        self.input_copy_timeline: list[int] = []
        self.input_copy_bytes = 0
        self._input_copies: dict[int, int] = {}  # float32 kept storages -> how many bf16 copies of it ops saved
        self._input_cast_size: dict[int, int] = {}  # float32 kept storages a cast took -> one bf16 copy's bytes
        self._input_cast_now = 0  # bytes of the copies the op running now makes and does not save
        self.saving_hook: Any = None  # the pack hook of forward's `SavedTensorCounter`: outside any gradient checkpoint
        # while it is the innermost
        self._python_holders: dict[int, int] = {}  # float32 kept storages autograd saved -> the network's references
        self._just_saved: set[int] = set()  # of them, those saved since the last op (autograd saves an op's inputs
        # before it runs)
        self._cast_saved: set[int] = set()  # of them, those a convolution or matrix product saved

    def keep(self, tensors: Iterable[torch.Tensor]) -> None:
        """Tracked tensors that stay float32 under autocast (the input)."""
        for tensor in tensors:
            key = _storage_key(tensor)
            if key in self._keys and key not in self._kept:
                self._kept.add(key)
                self._float32.add(key)
                self._float32_size[key] = tensor.untyped_storage().nbytes()
                self.kept_bytes += tensor.untyped_storage().nbytes()

    def _track(self, tensor: torch.Tensor) -> None:
        key = _storage_key(tensor)
        floating = tensor.is_floating_point() or tensor.is_complex()
        if self._op_casts and floating and key not in self._keys:
            self._made_in_bf16[key] = len(self.timeline)
        if self._adding_bf16 is not None and floating and key not in self._keys:
            self._made_in_bf16[key] = len(self.timeline)
            now = len(self.timeline)
            spans = self._adding_bf16
            self._bf16_spans[key] = [[start, now if end is None else end, half] for start, end, half in spans]
        if self._op_sums_bf16 and floating and key not in self._keys:
            self._summed_in_bf16[key] = len(self.timeline)
        if key not in self._keys and (self._op_keeps_float32 or not floating):
            self._kept.add(key)
            if floating:
                self._float32.add(key)
                self._float32_size[key] = tensor.untyped_storage().nbytes()
                if self._forward and not self._op_needs_grad:
                    self._without_grad.add(key)
            self.kept_bytes += tensor.untyped_storage().nbytes()
        super()._track(tensor)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._kept:
            self._kept.discard(key)
            self._float32.discard(key)
            self.kept_bytes -= nbytes
        if key in self._freed:
            self._freed.discard(key)
            self.freed_bytes -= nbytes
        for keys in (self._without_grad, self._taken_otherwise):
            keys.discard(key)  # a storage made later may reuse the key
        self._cast_for.pop(key, None)
        self._float32_size.pop(key, None)
        self._made_in_bf16.pop(key, None)
        self._bf16_spans.pop(key, None)
        self._summed_in_bf16.pop(key, None)
        self._python_holders.pop(key, None)
        self._promoting.pop(key, None)
        self._awaiting_node.pop(key, None)
        self.input_copy_bytes -= self._passed_copies.pop(key, 0)
        self._cast_saved.discard(key)
        self._input_cast_size.pop(key, None)
        copies = self._input_copies.pop(key, 0)
        if copies:  # the saved float32 tensor goes with the op's saved variables, as its saved copy would
            self.input_copy_bytes -= copies * (nbytes // 2)
        super()._release(key, nbytes)

    def _record(self) -> None:
        self.timeline.append(self.live_bytes)
        self.kept_timeline.append(self.kept_bytes)
        self.copy_timeline.append(self.copy_bytes + self._cast_now)
        self.freed_timeline.append(self.freed_bytes)
        self.input_copy_timeline.append(self.input_copy_bytes + self._input_cast_now)

    def start_recording(self) -> None:
        self.recording = True
        self._record()

    def end_forward(self, saved: set[int], saved_activations: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Forward (and the loss) ended: autocast's cache is cleared, so only the copies saved for backward stay
        (`saved`: the weights saved), and a float32 tensor that autograd saved (`saved_activations`) only because a
        convolution or matrix product took it is freed (under autocast they save its bf16 copy). One that a gradient
        checkpoint holds as its segment's input, not autograd, stays."""
        for key in self._copied - saved:
            self._drop_copy(key)
        for key in self._frozen_held - saved:  # saved by a gradient checkpoint, which keeps no copy
            self._frozen_held.discard(key)
            self.copy_bytes -= self._frozen_size[key]
        self._forward = False
        for key in (self._without_grad & saved_activations) - self._taken_otherwise:
            weights = self._cast_for.get(key)
            # Only casts took it, and the ops that did saved for backward here (their weights): not the ops inside a
            # gradient checkpoint, where what holds it is the checkpoint, as its segment's input, under autocast too.
            if key in self._float32 and weights and weights <= saved:
                self._kept.discard(key)
                self._float32.discard(key)
                self.kept_bytes -= self._float32_size[key]
                self._freed.add(key)
                self.freed_bytes += self._float32_size[key]

    def saved_as(self, tensor: torch.Tensor) -> torch.Tensor:
        """What autograd keeps of a tensor saved for backward (`SavedTensorCounter`'s ``saved_as``).

        A float32 tensor made without a gradient (a normalisation or padding of the input) that a convolution or
        matrix product saves is saved by autocast as its bf16 copy: the float32 one is freed as soon as the network
        drops its last reference to it, in forward, where this trace, whose op saves the float32 tensor itself, held
        it to the end of forward (unet's padded input: bf16 planned 0.17% / 0.32% high at batch 1 / 3). Autograd keeps
        an alias of the storage here (the same bytes, live as before), so that the network's own tensor object dies
        when the network drops it, and that is when its bytes move from kept to freed (`_dropped_by_python`)."""
        key = _storage_key(tensor)
        if not (self.recording and self._forward and key in self._without_grad and key in self._float32):
            return tensor
        if key in self._taken_otherwise:
            return tensor
        with _disable_current_modes():  # not an op of the network's: no point of the timeline
            alias = tensor.detach()
        self._python_holders[key] = self._python_holders.get(key, 0) + 1
        self._just_saved.add(key)
        weakref.finalize(tensor, self._dropped_by_python, key)
        return alias

    def _dropped_by_python(self, key: int) -> None:
        holders = self._python_holders.pop(key, 0) - 1
        if holders > 0:
            self._python_holders[key] = holders
            return
        # saved by a cast, taken by no other op since, and still kept (not freed at the end of forward already)
        if key not in self._cast_saved or not self._forward:
            return
        if key in self._float32 and key in self._without_grad and key not in self._taken_otherwise:
            self._kept.discard(key)
            self._float32.discard(key)
            self.kept_bytes -= self._float32_size[key]
            self._freed.add(key)
            self.freed_bytes += self._float32_size[key]

    def gradient_made(self, weight: torch.Tensor) -> None:
        """A post-accumulate-grad hook: the op that saved the weight's copy has run its backward, freeing it.

        The op made the weight's gradient in bf16 under autocast, half the float32 one this trace holds from that op
        on; once the op's own inputs are freed (here), the float32 gradient is made from it, both alive at once: a
        point of its own in the timeline. So is a convolution's bias's, which its backward makes in bf16 too.

        A linear layer's bias, which autocast cast for its matrix product, gets its gradient from a sum of the bf16
        gradient of the output: bf16 too. Its float32 copy is made by the cast's backward, which autograd runs after
        the weight's (autocast cast the bias first), where this trace accumulates the bias's gradient before the
        weight's: it counts at half until the next gradient's point, the next op that allocates, or the end of
        backward (`make_pending_copies`)."""
        key = _storage_key(weight)
        first = key not in self._finished
        self._finished.add(key)
        if key in self._copied:
            self._drop_copy(key)
        grad = weight.grad
        grad_key = _storage_key(grad) if first and grad is not None and self.recording else None
        made = self._made_in_bf16.get(grad_key) if grad_key is not None else None
        summed = self._summed_in_bf16.get(grad_key) if grad_key is not None and key in self._cast_vectors else None
        if made is not None:
            half = grad.untyped_storage().nbytes() // 2  # type: ignore[union-attr]
            for index in range(made, len(self.copy_timeline)):
                self.copy_timeline[index] -= half
            for start, end, part in self._bf16_spans.get(grad_key, []):  # type: ignore[arg-type]
                for index in range(start, end):  # type: ignore[arg-type]
                    self.copy_timeline[index] -= part  # type: ignore[operator]
            self.copy_bytes += half
            self._record()
            self.copy_bytes -= half
        self.make_pending_copies()
        if summed is not None:
            half = grad.untyped_storage().nbytes() // 2  # type: ignore[union-attr]
            for index in range(summed, len(self.copy_timeline)):
                self.copy_timeline[index] -= half
            self.copy_bytes -= half
            self._pending_copies[key] = half

    def make_pending_copies(self) -> None:
        """The float32 copies autocast makes now of the biases' bf16 gradients (`gradient_made`): a point where both
        live, after which the float32 gradient alone counts."""
        if self._pending_copies and self.recording:
            pending = sum(self._pending_copies.values())
            self._pending_copies.clear()
            self.copy_bytes += 2 * pending
            self._record()
            self.copy_bytes -= pending

    def _cast_inputs(self, keys: list[int], tensors: list[torch.Tensor]) -> list[int]:
        """At a convolution or matrix product, autocast's bf16 copies of the float32 kept tensors it takes
        (``input_copy_timeline``); returns the storages whose saved copy this op, a backward one, frees."""
        released = []
        if torch.is_grad_enabled():  # forward, or a checkpoint's recomputation
            weights = {_storage_key(t) for t in tensors if t.requires_grad and t.dim() >= 2}
            for key in dict.fromkeys(keys):
                if key not in self._float32:
                    continue
                size = self._input_cast_size[key] = self._float32_size[key] // 2
                # saved only when a weight it multiplies trains (a convolution's input serves its weight's gradient)
                if weights - {key} and (not self._forward or self._saving_outside_checkpoints()):
                    self._input_copies[key] = self._input_copies.get(key, 0) + 1
                    self.input_copy_bytes += size
                else:
                    self._input_cast_now += size
        else:
            for key in dict.fromkeys(keys):
                if self._input_copies.get(key):
                    released.append(key)
                elif key in self._input_cast_size:  # a recomputation this trace stopped before the op that casts it
                    self._input_cast_now += self._input_cast_size[key]
        return released

    def _hook_promoting_nodes(self, args: tuple, kwargs: dict | None) -> None:
        """Hook the autograd node of each promoting op's output that this op takes (`_cast_gradients`)."""
        for tensor in tree_flatten((args, kwargs))[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            promoted = self._promoting.pop(_storage_key(tensor), None)
            if promoted is not None and tensor.grad_fn is not None:
                positions, count = promoted
                tensor.grad_fn.register_hook(
                    lambda grad_inputs, grad_outputs, positions=positions, count=count: self._cast_gradients(
                        grad_inputs, grad_outputs, positions, count
                    )
                )

    def _cast_gradients(self, gradients: tuple, received: tuple, positions: list[int], count: int) -> None:
        """A promoting op's backward has made, in float32, the gradients of the activations it took in bf16: autograd
        casts each to bf16, a point where both live, after which the bf16 copy alone counts (halved, not kept). A
        gradient passed on as it came (an addition's) stays float32 for the op's other operands: its bf16 copy counts
        beside it until it is freed."""
        if not self.recording or len(gradients) != count:  # its node's inputs are not the op's tensors one to one
            return
        made = [gradients[index] for index in positions if gradients[index] is not None]
        keys = {_storage_key(gradient): gradient.untyped_storage().nbytes() for gradient in made}
        passed = {_storage_key(gradient) for gradient in received if isinstance(gradient, torch.Tensor)}
        if not keys:
            return
        self._input_cast_now += sum(nbytes // 2 for nbytes in keys.values())
        self._record()
        self._input_cast_now = 0
        for key, nbytes in keys.items():
            if key in passed:
                self._passed_copies[key] = self._passed_copies.get(key, 0) + nbytes // 2
                self.input_copy_bytes += nbytes // 2
            elif key in self._kept and key in self._float32:
                self._kept.discard(key)
                self._float32.discard(key)
                self.kept_bytes -= nbytes

    def cast_output_gradients(self, outputs: Iterable[torch.Tensor]) -> None:
        """Before backward: autograd's bf16 casts of the gradients of the outputs that autocast holds in bf16.

        The loss takes a float32 copy of a bf16 output (`.float()`), so backward casts the output's float32 gradient
        (here a view of the loss's one-value gradient, no bytes of its own) to bf16 before the output's own backward
        node runs; the copy goes when that node has run, or, passed on as a view (a flattened output), when the node
        that takes the view has. A network with a large output (a convolution's map) held it at its last
        convolution's backward, where this trace held nothing: bf16 was planned 564 bytes low there."""
        for tensor in outputs:
            if tensor.grad_fn is None or not tensor.is_floating_point() or _storage_key(tensor) in self._float32:
                continue  # a float32 output (promoted): `.float()` copies nothing, and backward casts nothing
            nbytes = tensor.numel() * 2
            tensor.grad_fn.register_prehook(lambda gradients, nbytes=nbytes: self._cast_output_gradient(nbytes))
            self._free_output_gradient_after(tensor.grad_fn, nbytes)

    def _cast_output_gradient(self, nbytes: int) -> None:
        if self.recording:
            self.input_copy_bytes += nbytes
            self._record()  # the cast: a point of its own, as autograd's copy is an op of its own

    def _free_output_gradient_after(self, node: Any, nbytes: int) -> None:
        """When `node` has run, free the output gradient's bf16 copy, or wait for the node it passed a view of it to."""

        def ran(gradients: tuple, received: tuple) -> None:
            if not self.recording:
                return
            keys = {_storage_key(gradient) for gradient in received if isinstance(gradient, torch.Tensor)}
            for gradient, (following, _) in zip(gradients, node.next_functions, strict=False):
                if isinstance(gradient, torch.Tensor) and _storage_key(gradient) in keys and following is not None:
                    self._free_output_gradient_after(following, nbytes)
                    return
            self.input_copy_bytes -= nbytes

        node.register_hook(ran)

    def _hook_weight_nodes(self, args: tuple, kwargs: dict | None) -> None:
        """Hook the backward node of each op that took a weight (`_nodes_to_run`) whose output this op takes."""
        for tensor in tree_flatten((args, kwargs))[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            awaiting = self._awaiting_node.get(_storage_key(tensor))
            if awaiting is None or awaiting[0]() is not tensor or tensor.grad_fn is None:
                continue
            del self._awaiting_node[_storage_key(tensor)]
            weights = awaiting[1]
            tensor.grad_fn.register_hook(lambda grad_inputs, grad_outputs, weights=weights: self._backward_ran(weights))

    def _backward_ran(self, weights: list[int]) -> None:
        """The backward node of an op that took `weights` has run: autograd has freed what it saved, their copies
        among it, and a copy no other node saves is gone, before the weight's gradient is stored (an in-place ReLU and
        addition after a convolution: held to the gradient, it made bf16 1.0176x the real CPU step, one copy high)."""
        for key in weights:
            self._nodes_to_run[key] -= 1
            if not self._nodes_to_run[key] and key in self._copied and self.recording:
                self._drop_copy(key)
                self._released.add(key)

    def _saving_outside_checkpoints(self) -> bool:
        """Whether what forward's op saves is saved, not dropped by a gradient checkpoint (its hooks the innermost)."""
        if _TOP_SAVED_HOOKS is None:  # a torch without it: every copy counted as saved, high, never low
            return True
        hooks = _TOP_SAVED_HOOKS(False)
        return hooks is not None and hooks[0] == self.saving_hook

    def _drop_copy(self, key: int) -> None:
        self._copied.discard(key)
        self.copy_bytes -= self._copy_size[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self.recording:
            keys = [_storage_key(item) for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
            name = getattr(getattr(func, "overloadpacket", None), "__name__", "")
            if not torch.is_grad_enabled():  # backward: a recomputation's autocast ended, clearing its cache
                for key in self._recast_vectors & self._copied:
                    self._drop_copy(key)
                self._recast_vectors.clear()
            for key in keys:
                if key in self._copy_size and key not in self._copied | self._finished | self._released:
                    if key in self._vectors and name not in _AUTOCAST_BF16_OPS:
                        continue  # a batch norm's weight: autocast leaves it float32
                    self._copied.add(key)
                    self.copy_bytes += self._copy_size[key]
                    if key in self._vectors:
                        self._cast_vectors.add(key)
                    if key in self._vectors and not self._forward:  # no op saves it: cached until the
                        self._recast_vectors.add(key)  # recomputation's autocast ends
            self._op_keeps_float32 = name not in _AUTOCAST_BF16_OPS and (
                any(key in self._float32 for key in keys)
                or (name not in _MIXED_DTYPE_OPS and any(key in self._float32_state for key in keys))
            )
            if self._forward and self._promoting:  # the op's node exists once an op takes its output
                self._hook_promoting_nodes(args, kwargs)
            if self._op_keeps_float32 and self._forward:
                operands = [item for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
                bf16 = [
                    index
                    for index, tensor in enumerate(operands)
                    if tensor.is_floating_point()
                    and tensor.requires_grad
                    and _storage_key(tensor) not in self._kept
                    and _storage_key(tensor) not in self._float32_state
                    and _storage_key(tensor) not in self._copy_size
                ]
                self._promoting_now = (bf16, len(operands)) if bf16 else None
            if name in _AUTOCAST_BF16_OPS and self._forward:
                if any(key in self._float32 and key not in self._without_grad for key in keys):
                    self._weights_of_float32_inputs.update(key for key in keys if key in self._copy_size)
            elif name in ("mm", "bmm") and not self._forward and not any(key in self._float32 for key in keys):
                # a matrix product's gradient of its input, not of its weight (which takes the saved input)
                self._op_keeps_float32 = any(key in self._weights_of_float32_inputs for key in keys)
            if self._forward:
                float32 = [key for key in keys if key in self._float32]
                if name in _AUTOCAST_BF16_OPS:
                    weights = {key for key in keys if key in self._copy_size and key not in self._vectors}
                    for key in float32:
                        self._cast_for.setdefault(key, set()).update(weights)
                else:
                    self._taken_otherwise.update(float32)
                tensors = [item for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
                self._op_needs_grad = any(tensor.requires_grad for tensor in tensors)
            self._op_casts = name in _AUTOCAST_BF16_OPS
            if self._forward and self._awaiting_node:  # the node of an op that saved a weight's copy exists now
                self._hook_weight_nodes(args, kwargs)
            node_weights = []
            if self._op_casts and self._forward and torch.is_grad_enabled():
                node_weights = [k for k in dict.fromkeys(keys) if k in self._copy_size and k not in self._vectors]
                for key in node_weights:
                    self._nodes_to_run[key] = self._nodes_to_run.get(key, 0) + 1
            if self._just_saved:  # saved for this op, or by one that saves its inputs after they ran (a Function's:
                # a gradient checkpoint's, its segment's input, which it holds under autocast too)
                if (
                    self._op_casts
                    and self._forward
                    and _TOP_SAVED_HOOKS is not None
                    and self._saving_outside_checkpoints()
                ):
                    self._cast_saved.update(self._just_saved.intersection(keys))
                self._just_saved.clear()
            # a bias's gradient (`gradient_made`): a sum of a gradient that autocast holds in bf16
            self._op_sums_bf16 = name == "sum" and not self._forward and not any(k in self._float32 for k in keys)
            if name == "add" and not self._forward and len(keys) > 1 and all(k in self._made_in_bf16 for k in keys):
                # autograd adds up the gradients of a weight that two ops took, made in bf16: in bf16 too
                self._adding_bf16 = []
                for item in tree_flatten((args, kwargs))[0]:
                    if isinstance(item, torch.Tensor):
                        operand = _storage_key(item)
                        half = item.untyped_storage().nbytes() // 2
                        self._adding_bf16.append([self._made_in_bf16[operand], None, half])
                        self._adding_bf16 += self._bf16_spans.get(operand, [])
            if self._pending_copies and not func.is_view:
                self.make_pending_copies()
            tensors = [item for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
            released_inputs = self._cast_inputs(keys, tensors) if self._op_casts else []
            frozen = {key for key in keys if key in self._frozen_size} if name in _AUTOCAST_BF16_OPS else set()
            released = frozen & self._frozen_held if not torch.is_grad_enabled() else set()  # in backward
            if frozen and torch.is_grad_enabled():  # forward, or a checkpoint's recomputation: cast anew
                tensors = [item for item in tree_flatten((args, kwargs))[0] if isinstance(item, torch.Tensor)]
                cast = frozen - self._frozen_held
                # its backward needs the copies for the gradient of an operand that is not a bias (a bias's is a sum)
                if any(tensor.requires_grad and _storage_key(tensor) not in self._vectors for tensor in tensors):
                    self._frozen_held |= cast
                    self.copy_bytes += sum(self._frozen_size[key] for key in cast)
                else:
                    self._cast_now = sum(self._frozen_size[key] for key in cast)
            elif frozen:  # a backward op whose copy no one held: a checkpoint's recomputation cast it for this op
                self._cast_now = sum(self._frozen_size[key] for key in frozen - self._frozen_held)
        try:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        finally:
            self._op_keeps_float32 = self._op_needs_grad = self._op_casts = self._op_sums_bf16 = False
            self._adding_bf16 = None
        if self.recording and node_weights:
            first = _first_tensor(out)
            if first is not None:
                self._awaiting_node[_storage_key(first)] = (weakref.ref(first), node_weights)
        if self._promoting_now is not None:
            for item in tree_flatten(out)[0]:
                if isinstance(item, torch.Tensor):
                    self._promoting[_storage_key(item)] = self._promoting_now
            self._promoting_now = None
        if self.recording:
            self._record()
            self._cast_now = self._input_cast_now = 0
            for key in released:  # the backward op that used the saved copy has run
                self._frozen_held.discard(key)
                self.copy_bytes -= self._frozen_size[key]
            for key in released_inputs:
                if self._input_copies.get(key):  # not freed with its float32 tensor during the op (`_release`)
                    self._input_copies[key] -= 1
                    self.input_copy_bytes -= self._input_cast_size[key]
        return out


def _distinct_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum({_storage_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


_REPLAY_INPUT = "input"  # an output that is one of the op's inputs (an in-place op returns its `self`)


class _MetaKernelCache(TorchDispatchMode):
    """Replays the outputs of meta-device ops already run with the same input layouts (see the module docstring).

    Enter it before any counting mode, so that it sits below them: the tracker and the FLOP counter still see every
    op and its outputs. A call is replayed only when its first run showed outputs that are new tensors (a storage of
    their own, exactly the size `torch.empty_strided` gives) or inputs returned with their layout unchanged (in-place
    ops); a call whose outputs are views of its inputs (``view``, ``detach``), that resized an input, or with any
    input off the meta device (Adam's step counter lives on the CPU and must really count) always runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[Any, Any] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs: list[torch.Tensor] = []
        try:
            key = (func, _layout_key(args, inputs), _layout_key(kwargs, inputs))
            entry = self._entries.get(key, False)
        except TypeError:  # an argument that cannot be a dictionary key
            return func(*args, **kwargs)
        if entry is None or any(tensor.device.type != "meta" for tensor in inputs):
            return func(*args, **kwargs)
        if entry is not False:
            return _replay(entry, inputs)
        before = [_resizable_layout(tensor) for tensor in inputs]
        out = func(*args, **kwargs)
        if any(_resizable_layout(tensor) != layout for tensor, layout in zip(inputs, before, strict=True)):
            self._entries[key] = None  # it resized an input (``out=``, ``resize_``): a replay would not
        else:
            self._entries[key] = _outputs_recipe(out, inputs, {_storage_key(tensor) for tensor in inputs})
        return out


def _layout_key(value: Any, tensors: list[torch.Tensor]) -> Any:
    """What determines a meta op's outputs: each tensor's layout, every other argument's value."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return (value.dtype, value.device.type, tuple(value.shape), value.stride(), value.storage_offset())
    if isinstance(value, (tuple, list)):
        return (type(value), *(_layout_key(item, tensors) for item in value))
    if isinstance(value, dict):
        return (dict, *((name, _layout_key(item, tensors)) for name, item in value.items()))
    return value


def _resizable_layout(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.stride(), tensor.storage_offset(), tensor.untyped_storage().nbytes()


def _outputs_recipe(value: Any, inputs: list[torch.Tensor], taken: set[int]) -> Any:
    """How to rebuild an op's output `value` from new tensors and the inputs; None when it cannot be done faithfully.

    A plain recursive function on purpose: a closure that calls itself is a reference cycle, and the cycle would keep
    the op's inputs alive until the garbage collector runs, which the live-bytes count would see.

    Args:
        value: the output (a tensor, None, or a tuple or list of them).
        inputs: the op's tensor arguments.
        taken: storages of the inputs and of the outputs seen so far (an output that shares one is a view).
    """
    if value is None:
        return ("none",)
    if type(value) in (tuple, list):  # a named tuple would need its fields: not replayed
        parts = [_outputs_recipe(item, inputs, taken) for item in value]
        return None if None in parts else (type(value), parts)
    if not isinstance(value, torch.Tensor) or value.device.type != "meta" or value.layout != torch.strided:
        return None
    for index, tensor in enumerate(inputs):
        if tensor is value:
            return (_REPLAY_INPUT, index)
    key = _storage_key(value)
    if key in taken or value.storage_offset() != 0:
        return None
    taken.add(key)
    layout = (tuple(value.shape), value.stride(), value.dtype)
    fresh = torch.empty_strided(layout[0], layout[1], dtype=layout[2], device="meta")
    return ("new", layout) if fresh.untyped_storage().nbytes() == value.untyped_storage().nbytes() else None


def _replay(recipe: Any, inputs: list[torch.Tensor]) -> Any:
    kind = recipe[0]
    if kind == "none":
        return None
    if kind == _REPLAY_INPUT:
        return inputs[recipe[1]]
    if kind == "new":
        shape, stride, dtype = recipe[1]
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return kind(_replay(part, inputs) for part in recipe[1])


@dataclass
class Row:
    """One row of the per-layer table."""

    name: str
    type: str
    output_shape: tuple[int, ...] = ()  # without the batch dimension
    params: int = 0
    trainable_params: int = 0
    buffers: int = 0
    macs: int = 0  # per sample
    activation_bytes: int = 0  # output size per sample, in the traced dtype, summed over the module's calls
    saved_bytes: int = 0  # bytes this row saved for backward, at the traced batch size
    # parameters this module holds that an earlier row already counts (tied weights): left out of `params`, so the
    # column adds up to the network's parameters, each counted once
    shared_params: int = 0


@dataclass
class TraceResult:
    """What one traced training (or inference) step held."""

    batch_size: int
    dtype: torch.dtype
    device: str
    rows: list[Row] = field(default_factory=list)
    macs: int = 0  # per sample
    output_shape: tuple[int, ...] = ()
    saved_bytes: int = 0  # distinct saved storages, input included, parameters and buffers excluded
    saved_input_bytes: int = 0
    saved_by_segment: dict[str, int] = field(default_factory=dict)  # per top-level child
    segment_input_bytes: dict[str, int] = field(default_factory=dict)  # input bytes of each top-level child
    peak_live_bytes: int = 0  # parameters, input and all created tensors, at their peak
    inference_peak_bytes: int = 0  # peak of live tensors in a no-grad forward, parameters excluded, input included
    cuda_max_allocated_bytes: int | None = None
    optimizer: str = "none"
    optimizer_device: str = "cpu"  # the device type whose optimizer step was traced (`make_optimizer`)
    optimizer_state_bytes: int = 0  # live during the whole step, so included in every timeline value
    live_timeline: list[int] = field(default_factory=list, repr=False)  # live bytes at the start and after each op of
    # forward and backward; its maximum is the peak before the optimizer step
    autocast_kept_timeline: list[int] = field(default_factory=list, repr=False)  # at the same points, the live bytes
    # bf16 autocast would leave as they are (`_TimelineTracker`: integer tensors, the input and what is computed from
    # it before a convolution or matrix product); empty for a trace run under autocast
    autocast_copy_timeline: list[int] = field(default_factory=list, repr=False)  # at the same points, the bytes bf16
    # autocast's copies of the weights would hold, and its weight gradients made in bf16 less the float32 ones this
    # trace holds (`_TimelineTracker`); empty for a trace run under autocast
    autocast_freed_timeline: list[int] = field(default_factory=list, repr=False)  # at the same points, the live bytes
    # bf16 autocast would have freed (a float32 normalisation of the input that only its casts took); empty for a
    # trace run under autocast
    autocast_input_copy_timeline: list[int] = field(default_factory=list, repr=False)  # at the same points, the bytes
    # of autocast's bf16 copies of the float32 input (or its normalisation) that the first convolutions or matrix
    # products take (`_TimelineTracker`); empty for a trace run under autocast
    loss_op_index: int = -1  # the index in live_timeline of the loss's last op, where the output is still alive
    output_values: int = 0  # values in the network's outputs the loss is taken on (`_output_tensors`), at the batch
    step_start_bytes: int = 0  # live bytes when the optimizer step begins (after backward)
    step_peak_bytes: int = 0  # peak during the optimizer step (step_start_bytes when there is none)
    # outermost modules with parameters (name -> parameters) that ran in the training step but not in the eval-mode
    # forward (auxiliary heads), and those whose trainable parameters got no gradient in the training step
    training_only: dict[str, int] = field(default_factory=dict)
    no_gradient: dict[str, int] = field(default_factory=dict)
    # batch norms that saw one value per channel in training mode (a 1x1 map at batch 1), which PyTorch refuses:
    # traced with that check lifted (`_OneValueBatchNorm`)
    one_value_batch_norms: list[str] = field(default_factory=list)
    # parameters (qualified name -> values) that no row holds: registered on a module above the rows (a class token,
    # a gain on the model itself), in the total but in no row
    unlisted_params: dict[str, int] = field(default_factory=dict)


_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def select_rows(model: nn.Module, depth: int | None = None) -> list[tuple[str, nn.Module]]:
    """Modules shown as table rows: the leaves, or the modules at `depth` (leaves above it included).

    A ModuleList or ModuleDict is never called, only its members are: it is no row and no level of its own, so
    unet's ``encoders.0`` sits at depth 1 (the row 'encoders' showed no output, 0 MACs and 4 activation bytes).
    """
    modules = dict(model.named_modules())
    rows = []
    for name, module in modules.items():
        if not name or isinstance(module, _CONTAINERS):
            continue
        parts = name.split(".")
        level = sum(not isinstance(modules[".".join(parts[: i + 1])], _CONTAINERS) for i in range(len(parts)))
        is_leaf = next(module.children(), None) is None
        if (depth is None and is_leaf) or (depth is not None and (level == depth or (is_leaf and level < depth))):
            rows.append((name, module))
    if not rows:
        rows = [(type(model).__name__, model)]
    return rows


def _first_tensor(output: Any) -> torch.Tensor | None:
    for item in tree_flatten(output)[0]:
        if isinstance(item, torch.Tensor):
            return item
    return None


def _output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors a training step's loss is taken on: every floating-point tensor of the output (all its tensors
    when none is), so that in training mode an auxiliary head's logits are trained as GoogLeNet's and Inception-v3's
    auxiliary losses train them (torchvision's models return them in training mode only)."""
    tensors = [item for item in tree_flatten(output)[0] if isinstance(item, torch.Tensor)]
    return [tensor for tensor in tensors if tensor.is_floating_point()] or tensors


def _outermost(model: nn.Module, selected: set[nn.Module]) -> dict[str, int]:
    """The outermost of the `selected` modules that hold parameters, by name, with their parameter counts."""
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        if module in selected and not any(name.startswith(f"{outer}.") for outer in found):
            params = sum(p.numel() for p in module.parameters())
            if params and name:
                found[name] = params
    return found


@contextmanager
def _called_modules(model: nn.Module) -> Iterator[set[nn.Module]]:
    """The modules of `model` called while the block runs."""
    called: set[nn.Module] = set()
    handles = [module.register_forward_pre_hook(lambda module, args: called.add(module)) for module in model.modules()]
    try:
        yield called
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _row_hooks(rows: list[tuple[str, nn.Module]], model: nn.Module, result: TraceResult) -> Iterator[Any]:
    """Forward hooks that keep a stack of running rows and record their output shapes and input sizes."""
    stack: list[str] = []
    segment_stack: list[str] = []
    shapes: dict[str, list[tuple[int, ...]]] = {}  # per row, the output shape of each of its calls
    handles = []

    def push(name: str, target: list[str]) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            target.append(name)
            if target is segment_stack:
                first = _first_tensor(args)
                if first is not None:
                    result.segment_input_bytes[name] = first.untyped_storage().nbytes()

        return hook

    def pop(name: str, target: list[str]) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if target and target[-1] == name:
                target.pop()
            if target is stack:
                first = _first_tensor(output)
                if first is not None:
                    shapes.setdefault(name, []).append(tuple(first.shape[1:]))

        return hook

    for name, module in rows:
        handles.append(module.register_forward_pre_hook(push(name, stack)))
        handles.append(module.register_forward_hook(pop(name, stack)))
    for name, module in model.named_children():
        handles.append(module.register_forward_pre_hook(push(name, segment_stack)))
        handles.append(module.register_forward_hook(pop(name, segment_stack)))
    try:
        yield (lambda: stack[-1] if stack else None), (lambda: segment_stack[-1] if segment_stack else None), shapes
    finally:
        for handle in handles:
            handle.remove()


def _prepare(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    # The meta copy leaves the caller's weights in place; a real device uses (a copy made by the caller of) them.
    model = meta_copy_keeping_ties(model) if device == "meta" else model.to(device=device)
    if dtype != torch.float32 or any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype=dtype)
    return model


def copy_network(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, with the functions its modules hold as attributes made to call the copy.

    A forward may call a function stored on the module (``self.fwd = lambda x: self.head(self.body(x))``, or
    ``self.fwd = torch.compile(self._forward)``). deepcopy copies a bound method with its module but shares a
    function, whose closure still held the original network: the copy traced ran the original's layers, so its rows
    showed no output, none of its parameters got a gradient, and the budget said so (or, compiled, failed as if the
    forward read tensor values). Here such a closure's cells are copied with the network (the original module becomes
    the copy), and a torch.compile wrapper is replaced by a copy of what it compiled: the trace counts eager ops, as it
    does for a compiled module (`torch.compile(net)`), whose compiled code does not run under its counting modes.
    """
    memo: dict[int, Any] = {}
    copied = copy.deepcopy(model, memo)
    for module in copied.modules():
        for name, value in list(vars(module).items()):
            if not isinstance(value, types.FunctionType):
                continue
            original = getattr(value, "_torchdynamo_orig_callable", None)
            if original is not None:
                module.__dict__[name] = copy.deepcopy(original, memo)
            elif value.__closure__:
                cells = tuple(_copied_cell(cell, memo) for cell in value.__closure__)
                function = types.FunctionType(value.__code__, value.__globals__, name=value.__name__, closure=cells)
                function.__defaults__ = value.__defaults__
                function.__kwdefaults__ = copy.deepcopy(value.__kwdefaults__, memo)
                function.__dict__.update(value.__dict__)
                module.__dict__[name] = function
    return copied


def _copied_cell(cell: types.CellType, memo: dict[int, Any]) -> types.CellType:
    try:
        contents = cell.cell_contents
    except ValueError:  # a name not yet bound where the function was made
        return types.CellType()
    return types.CellType(copy.deepcopy(contents, memo))


def meta_copy_keeping_ties(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device, a tensor that several modules hold (a tied weight) still one tensor.

    ``Module.to("meta")`` makes a new parameter for each module that holds one, so a tied weight became two: the
    estimate's step had two gradients and two optimizer states of it (a head of 8,000 weights tied to another: peak
    estimate/measured 1.69).
    """
    model = copy_network(model)
    holders: dict[int, tuple[nn.Module, str, str]] = {}
    ties: list[tuple[nn.Module, str, str, tuple[nn.Module, str, str]]] = []
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                if tensor is None:
                    continue
                if id(tensor) in holders:
                    ties.append((module, kind, name, holders[id(tensor)]))
                else:
                    holders[id(tensor)] = (module, kind, name)
    model = model.to(device="meta")
    for module, kind, name, (first, first_kind, first_name) in ties:
        getattr(module, kind)[name] = getattr(first, first_kind)[first_name]
    return model


def optimizer_device(device: str, for_device: str | None) -> str:
    """The device type whose optimizer step a trace on `device` takes: the device itself, and for the meta device
    `for_device` (default the CPU)."""
    return torch.device((for_device or "cpu") if device == "meta" else device).type


def make_optimizer(
    model: nn.Module, optimizer: str, for_device: str = "cpu", param_groups: ParamGroupBuilder | None = None
) -> torch.optim.Optimizer | None:
    """The optimizer the engine would build for `model` (`build_optimizer` over `param_groups`, by default
    `default_param_groups`, with `TrainConfig`'s defaults), stepping as torch steps parameters on `for_device`; None
    with nothing to train.

    On a real device torch chooses its kernels from where the parameters are, as in the engine; on the meta device
    the choice is `for_device`'s: CUDA's multi-tensor kernels hold a whole group's temporaries at once, the CPU's
    loop one tensor's (a trace with Adam's loop on meta put a resnet50 step on a GPU 83 MB low). So the groups
    matter there too: a run that trained with layer-wise groups steps each block's parameters apart.
    """
    kind = optimizer.lower()
    optimizer_copies(kind)  # an unknown name: one line naming the ones known
    if kind == "none" or not any(p.requires_grad for p in model.parameters()):
        return None
    config = TrainConfig(**_ENGINE_OPTIMIZERS[kind])
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    foreach = default_foreach(for_device) if on_meta else None
    groups = param_groups(model) if param_groups is not None else default_param_groups(model, config.weight_decay)
    return build_optimizer(groups, config, foreach=foreach)


def _warm_up_optimizer(model: nn.Module, opt: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """Create the optimizer's state with one zero-gradient step, as it exists in every step after the first.

    Without this, the first step's peak (reached in backward, before the state exists) would miss the state.
    """
    if opt is None:
        return []
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.zeros_like(param)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return [value for state in opt.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    dtype: str | torch.dtype = "float32",
    device: str = "meta",
    optimizer: str = "adam",
    depth: int | None = None,
    training: bool = True,
    inference_batch_size: int = 1,
    inference: bool = True,
    autocast: torch.dtype | None = None,
    for_device: str | None = None,
    param_groups: ParamGroupBuilder | None = None,
) -> TraceResult:
    """Run one training step (forward, backward of the sum of every floating-point output, auxiliary heads'
    included, optimizer step) and one no-grad forward.

    A network without trainable parameters has no backward and no optimizer step: its training step is the forward.

    On ``device="meta"`` nothing is allocated and nothing is computed; the model is copied first. On a real device the
    model's own parameters are used (and updated by one optimizer step on a copy: the caller's weights stay intact).

    Args:
        model: any module taking one tensor of shape ``(batch_size, *input_shape)``.
        input_shape: one sample's shape, e.g. ``(3, 224, 224)``.
        batch_size: samples in the traced batch.
        dtype: parameter and input dtype.
        device: ``"meta"`` for the estimate, ``"cpu"`` or ``"cuda"`` to measure.
        optimizer: sgd, momentum, adam or adamw, built as the engine builds it (`make_optimizer`); ``"none"`` skips
            the step.
        depth: table rows are the modules at this depth (leaves when None).
        training: also trace the training step (False: only the forward pass for shapes, MACs and inference memory).
        inference_batch_size: samples in the no-grad forward pass that measures the inference working set.
        inference: run that no-grad forward pass (False: no shapes, MACs or inference memory; the planner needs only
            the training step, and its traces are the cheaper for it).
        autocast: run the training step's forward and loss under autocast to this dtype, backward and the optimizer
            step outside it, as the engine does (a real device only: autocast does not run on the meta device).
        for_device: on the meta device, the device the estimate is for (default the CPU): its optimizer steps as
            torch steps parameters there (CUDA: multi-tensor kernels). Ignored on a real device, which steps as itself.
        param_groups: the optimizer's groups of the model traced (default `default_param_groups`), as the
            engine's `Trainer` takes them.
    """
    torch_dtype = resolve_dtype(dtype)
    if batch_size < 1:
        raise CnnlabError(f"batch size {batch_size} must be at least 1")
    if autocast is not None and device == "meta":
        raise CnnlabError("autocast does not run on the meta device: trace on cpu or cuda to measure it")
    if device != "meta":
        model = copy_network(model)
    model = _prepare(model, device, torch_dtype)
    rows = select_rows(model, depth)
    result = TraceResult(
        batch_size=batch_size,
        dtype=torch_dtype,
        device=device,
        optimizer=optimizer,
        optimizer_device=optimizer_device(device, for_device),
    )
    _fill_static_row_info(model, rows, result)

    def make_input(batch: int) -> torch.Tensor:
        if device == "meta":
            return torch.empty((batch, *input_shape), dtype=torch_dtype, device="meta")
        return torch.randn((batch, *input_shape), dtype=torch_dtype, device=device)

    with (
        _CpuTensorsToMeta() if device == "meta" else nullcontext(),
        _MetaKernelCache() if device == "meta" else nullcontext(),
    ):
        with _called_modules(model) as in_inference:
            if inference:
                _trace_inference(model, rows, result, make_input(inference_batch_size), inference_batch_size)
        with _called_modules(model) as in_training:
            if training:
                _trace_training(model, rows, result, make_input(batch_size), optimizer, autocast, param_groups)
    if inference and training:
        result.training_only = _outermost(model, in_training - in_inference)
    return result


class _CpuTensorsToMeta(TorchFunctionMode):
    """On the meta device, a call that fails on CPU tensors made in forward, beside the meta ones, runs again with
    them on the meta device too.

    A forward may make tensors without a device: an LSTM's initial state (``h0 = torch.zeros(layers, n, hidden)``),
    ``torch.from_numpy(...)``, a mask kept as a plain attribute rather than a buffer. On the CPU, where the user runs
    it, that works; traced on the meta device it failed ("Input and hidden tensors are not at the same device, found
    input tensor at meta and hidden tensor at cpu"), and the network could not be sized. Only a call that fails is
    retried, so a CPU tensor whose value the forward reads (``if torch.rand(1) < p``) stays on the CPU and works.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            return func(*args, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            tensors = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
            devices = {tensor.device.type for tensor in tensors if tensor.dim() > 0}
            if "meta" not in devices or devices == {"meta"}:
                raise
        args, kwargs = tree_map_only(torch.Tensor, _to_meta, (args, kwargs))
        return func(*args, **kwargs)


def _to_meta(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.device.type == "meta" or tensor.dim() == 0 else tensor.to("meta")


class _OneValueBatchNorm(TorchFunctionMode):
    """Lets a batch norm in training mode normalise one value per channel (a 1x1 map at batch 1) instead of raising.

    `torch.nn.functional.batch_norm` refuses it ("Expected more than 1 value per channel when training") before it
    calls the kernel, which runs: each channel's one value becomes its bias, and the running variance NaN (an unbiased
    variance of one value). Inception-v3's auxiliary head has such a map, so a training step at batch 1 could not be
    sized at all; with the check lifted, its ops and their bytes are those of the step PyTorch's kernels would run
    (`--measure` runs it for real: tests/budget/test_measure.py). Any other call goes through as it is.
    """

    lifted = False

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not functional.batch_norm:
            return func(*args, **kwargs)
        call = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
        call.apply_defaults()
        arguments = call.arguments
        x = arguments["input"]
        if not arguments["training"] or x.dim() < 2 or x.numel() != x.shape[1]:  # more than one value per channel
            return func(*args, **kwargs)
        self.lifted = True
        # The meta kernel (a Python decomposition) updates the running variance with n / (n - 1), a division by zero
        # for one value; its running statistics hold no values anyway, and their in-place update allocates nothing
        # the trace counts (the op's outputs are the same three tensors), so there they are left out.
        real = x.device.type != "meta"
        return torch.batch_norm(
            x,
            arguments["weight"],
            arguments["bias"],
            arguments["running_mean"] if real else None,
            arguments["running_var"] if real else None,
            True,
            arguments["momentum"],
            arguments["eps"],
            torch.backends.cudnn.enabled,
        )


_BATCH_NORM_SIGNATURE = inspect.signature(functional.batch_norm)


@contextmanager
def _one_value_batch_norms(model: nn.Module) -> Iterator[list[str]]:
    """While the block runs, `model`'s batch norms take one value per channel (`_OneValueBatchNorm`); yields the names
    of those that did, in call order.

    The mode is entered by each batch norm's own forward, not around the step: autograd runs a checkpointed
    segment's forward again in backward with no function mode active (the planner's checkpointing remedy).
    """
    lifted: list[str] = []
    patched = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            patched.append((module, module.__dict__.get("forward")))
            module.forward = _lifting(module.forward, name, lifted)
    try:
        yield lifted
    finally:
        for module, own in patched:
            if own is None:
                del module.forward  # the class's forward again
            else:
                module.forward = own


def _lifting(forward: Any, name: str, lifted: list[str]) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        mode = _OneValueBatchNorm()
        with mode:
            output = forward(*args, **kwargs)
        if mode.lifted and name not in lifted:
            lifted.append(name)
        return output

    return run


@contextmanager
def _removed(handles: list[Any]) -> Iterator[None]:
    """Remove the hooks when the block ends (the planner traces the same meta model again and again)."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _trace_training(
    model: nn.Module,
    rows: list[tuple[str, nn.Module]],
    result: TraceResult,
    x: torch.Tensor,
    optimizer: str,
    autocast: torch.dtype | None = None,
    param_groups: ParamGroupBuilder | None = None,
) -> None:
    """One training step: saved bytes (per row and per top-level child), the live-bytes timeline and the peak."""
    device = result.device
    state = [*model.parameters(), *model.buffers()]
    model.train()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    opt = make_optimizer(model, optimizer, result.optimizer_device, param_groups)
    optimizer_state = _warm_up_optimizer(model, opt)
    result.optimizer_state_bytes = _distinct_bytes(optimizer_state)
    # under real autocast the copies are tensors the tracker counts; otherwise it works out what they would hold
    weights = [] if autocast is not None else [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    frozen = [] if autocast is not None else [p for p in model.parameters() if not p.requires_grad and p.dim() >= 2]
    # a trainable vector (a bias) is cast and cached as a weight is, by the convolutions and matrix products that take
    # it, and its gradient comes out of their backward in bf16; none of them saves it, so its copy goes with forward
    vectors = [] if autocast is not None else [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    tracker = _TimelineTracker(
        weights, [p for p in frozen if p.is_floating_point()], vectors, state if autocast is None else []
    )
    hooks = [w.register_post_accumulate_grad_hook(tracker.gradient_made) for w in [*weights, *vectors]]
    # at batch 1 a 1x1 map leaves batch norm one value per channel (more samples or pixels never do); through
    # backward too, where activation checkpointing runs the forward again
    one_value = _one_value_batch_norms(model) if x.shape[0] == 1 else nullcontext([])
    with (
        _row_hooks(rows, model, result) as (current_row, current_segment, _),
        tracker,
        _removed(hooks),
        one_value as lifted,
    ):
        tracker.add_existing([*state, *optimizer_state, x])
        tracker.keep([x])
        tracker.start_recording()
        owners = {"row": current_row, "segment": current_segment}
        counter = SavedTensorCounter(exclude=state, inputs=[x], attribute_to=owners, saved_as=tracker.saved_as)
        tracker.saving_hook = counter.pack_hook
        forward = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else nullcontext()
        with counter, forward:
            output = model(x)
            outputs = _output_tensors(output)
            if not outputs:
                raise CnnlabError(f"the network returned {type(output).__name__}, not a tensor: nothing to train on")
            # auxiliary heads' outputs are trained with the main output (a loop variable would keep one alive)
            loss = sum((extra.float().sum() for extra in outputs[1:]), outputs[0].float().sum())
        tracker.end_forward(counter.saved_state, counter.saved_keys)
        # Where the loss is taken the output is alive: under autocast a bf16 output and the float32 copy the loss
        # makes of it (here `.float()`; a real loss such as cross-entropy runs in float32 too), which the planner
        # adds to this op of a float32 trace (`.float()` of a float32 output copies nothing).
        result.loss_op_index = len(tracker.timeline) - 1
        result.output_values = sum(tensor.numel() for tensor in outputs)
        if autocast is None:
            tracker.cast_output_gradients(outputs)
        del output, outputs
        if loss.requires_grad:
            loss.backward()
            result.no_gradient = _outermost(model, _without_gradient(model))
        elif any(p.requires_grad for p in model.parameters()):
            raise CnnlabError(
                "the network's output does not depend on its trainable parameters (no gradient would reach them): "
                "does its forward detach the output or return something computed without them?"
            )
        # else nothing to train (pooling, dropout, a frozen network): the step is its forward pass, which kept nothing
        del loss
        tracker.make_pending_copies()
        tracker.recording = False
        backward_peak = tracker.peak_bytes
        # The step's own peak: it depends on the parameters only, so the planner can add it to any batch's timeline.
        tracker.peak_bytes = result.step_start_bytes = tracker.live_bytes
        if opt is not None:
            opt.step()
        result.step_peak_bytes = tracker.peak_bytes
    result.one_value_batch_norms = lifted
    result.live_timeline = tracker.timeline
    result.autocast_kept_timeline = tracker.kept_timeline if autocast is None else []
    result.autocast_copy_timeline = tracker.copy_timeline if autocast is None else []
    result.autocast_freed_timeline = tracker.freed_timeline if autocast is None else []
    result.autocast_input_copy_timeline = tracker.input_copy_timeline if autocast is None else []
    result.peak_live_bytes = max(backward_peak, result.step_peak_bytes)
    result.saved_bytes = counter.total_bytes
    result.saved_input_bytes = counter.input_bytes
    result.saved_by_segment = counter.attributed["segment"]
    for row in result.rows:
        row.saved_bytes = counter.attributed["row"].get(row.name, 0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        result.cuda_max_allocated_bytes = torch.cuda.max_memory_allocated()


def _without_gradient(model: nn.Module) -> set[nn.Module]:
    """Modules with trainable parameters of which none got a gradient (after backward, before the step)."""
    return {
        module
        for module in model.modules()
        if any(p.requires_grad for p in module.parameters())
        and all(p.grad is None for p in module.parameters() if p.requires_grad)
    }


def _trace_inference(
    model: nn.Module, rows: list[tuple[str, nn.Module]], result: TraceResult, x: torch.Tensor, batch: int
) -> None:
    """Eval mode, no grad: output shapes, MACs, and the working set (the peak of the input and the tensors created)."""
    model.eval()
    tracker = LiveTensorTracker()
    flops = FlopCounterMode(display=False)
    hooks = _row_hooks(rows, model, result), _flops_per_module(model, flops)
    with hooks[0] as (_, _, shapes), hooks[1] as spent, torch.no_grad(), flops, tracker:
        tracker.add_existing([x])
        output = model(x)
    result.inference_peak_bytes = tracker.peak_bytes
    first = _first_tensor(output)
    result.output_shape = tuple(first.shape[1:]) if first is not None else ()
    del output, first
    result.macs = flops.get_total_flops() // 2 // batch
    for (_, module), row in zip(rows, result.rows, strict=True):
        row.macs = _module_flops(module, spent) // 2 // batch
    for row in result.rows:
        calls = shapes.get(row.name, [])
        row.output_shape = calls[0] if calls else ()
        # every call's output: unet's one pooling runs after each encoder, and the textbook counted only the first;
        # a module never called (an auxiliary head in eval mode) has no output: 0 bytes, not one value's
        row.activation_bytes = sum(math.prod(shape) for shape in calls) * result.dtype.itemsize


def forward_saved_bytes(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, dtype: str | torch.dtype = "float32"
) -> int:
    """Bytes autograd saves in one training-mode forward on the meta device (input included), as `trace` counts them.

    Only the forward pass saves tensors, so this costs a third of a full trace (no backward, no optimizer step).
    """
    torch_dtype = resolve_dtype(dtype)
    model = _prepare(model, "meta", torch_dtype).train()
    state = [*model.parameters(), *model.buffers()]
    x = torch.empty((batch_size, *input_shape), dtype=torch_dtype, device="meta")
    one_value = _one_value_batch_norms(model) if batch_size == 1 else nullcontext()  # as `trace` runs batch 1
    with _CpuTensorsToMeta(), _MetaKernelCache(), SavedTensorCounter(exclude=state, inputs=[x]) as counter, one_value:
        model(x)
    return counter.total_bytes


@dataclass(frozen=True)
class OptimizerStepBytes:
    """What an optimizer adds to a training step: its state (live throughout), and the temporaries of its step."""

    state_bytes: int
    step_transient_bytes: int  # the step's peak above the live bytes at its start


def optimizer_step_bytes(
    model: nn.Module,
    dtype: str | torch.dtype,
    optimizer: str,
    for_device: str = "cpu",
    param_groups: ParamGroupBuilder | None = None,
) -> OptimizerStepBytes:
    """Trace one steady-state optimizer step alone on the meta device (gradients of zeros; their values never matter),
    stepping as on `for_device`.

    The step touches only parameters, gradients and state, none of which depend on the batch size, so its
    temporaries are the same at every batch: `trace`'s peak is ``max(peak of forward and backward, live at the step's
    start + step_transient_bytes)`` with the state counted throughout.
    """
    model = _prepare(model, "meta", resolve_dtype(dtype)).train()
    opt = make_optimizer(model, optimizer, for_device, param_groups)
    if opt is None:
        return OptimizerStepBytes(0, 0)
    with _MetaKernelCache():
        optimizer_state = _warm_up_optimizer(model, opt)
        grads = []
        for param in model.parameters():
            if param.requires_grad:
                param.grad = torch.zeros_like(param)
                grads.append(param.grad)
        tracker = LiveTensorTracker()
        with tracker:
            tracker.add_existing([*model.parameters(), *model.buffers(), *grads, *optimizer_state])
            start = tracker.live_bytes
            opt.step()
    return OptimizerStepBytes(_distinct_bytes(optimizer_state), tracker.peak_bytes - start)


def _fill_static_row_info(model: nn.Module, rows: list[tuple[str, nn.Module]], result: TraceResult) -> None:
    """Each row's parameters and buffers, and those no row holds. A parameter two modules hold (a tied weight) is
    counted in the first row only: counted in both, the column summed to more than the network has (a head tied to
    another: 11,088 rows under a total of 11,008)."""
    counted: set[int] = set()
    for name, module in rows:
        held = list(module.parameters())
        params = [p for p in held if id(p) not in counted]
        counted.update(id(p) for p in held)
        result.rows.append(
            Row(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in params),
                trainable_params=sum(p.numel() for p in params if p.requires_grad),
                buffers=sum(b.numel() for b in module.buffers() if b.is_floating_point()),
                shared_params=sum(p.numel() for p in held) - sum(p.numel() for p in params),
            )
        )
    result.unlisted_params = {name: p.numel() for name, p in model.named_parameters() if id(p) not in counted}


@contextmanager
def _flops_per_module(model: nn.Module, flops: FlopCounterMode) -> Iterator[dict[nn.Module, int]]:
    """Forward hooks on every module of `model` that add up, per module, the FLOPs `flops` counts during its calls
    (every call, nested ones within their parents)."""
    spent: dict[nn.Module, int] = {}
    started: dict[nn.Module, list[int]] = {}

    def start(module: nn.Module, args: tuple) -> None:
        started.setdefault(module, []).append(flops.get_total_flops())

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        if started.get(module):
            spent[module] = spent.get(module, 0) + flops.get_total_flops() - started[module].pop()

    handles = []
    for module in model.modules():
        handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def _module_flops(module: nn.Module, spent: dict[nn.Module, int]) -> int:
    """The FLOPs of `module`'s calls, or, for a module never called itself, of its children's (`_flops_per_module`)."""
    if module in spent:
        return spent[module]
    return sum(_module_flops(child, spent) for child in module.children())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass for one sample, counted at the aten level on the meta device."""
    return trace(model, tuple(input_shape), batch_size=1, training=False).macs
