"""Shapes, parameters, MACs/FLOPs and memory of any CNN, analytic and measured (`cnnlab budget`)."""

from cnnlab.budget.core import BudgetReport, budget, parse_memory
from cnnlab.budget.spec import build_module, infer_shapes, load_spec_file, parse_spec, spec_from_strings
from cnnlab.budget.trace import LiveTensorTracker, SavedTensorCounter, count_macs, resolve_dtype, trace

__all__ = [
    "BudgetReport",
    "LiveTensorTracker",
    "SavedTensorCounter",
    "budget",
    "build_module",
    "count_macs",
    "infer_shapes",
    "load_spec_file",
    "parse_memory",
    "parse_spec",
    "resolve_dtype",
    "spec_from_strings",
    "trace",
]
