"""latentworks.graph: the torch-free workflow engine.

Declare node types with :class:`NodeSpec` / :class:`InputSpec` / :class:`OutputSpec`, register them in a
:class:`NodeRegistry`, check API-format workflows with :func:`validate_prompt` and run them with an
:class:`Executor` (which owns the output cache) and one :class:`ExecutionContext` per job.
"""

from latentworks.graph.budgets import BudgetExceeded, JobBudgets
from latentworks.graph.cache import (
    DEFAULT_CACHE_BYTES,
    CacheEntry,
    OutputCache,
    SizedPayload,
    Sizer,
    default_sizer,
    node_cache_key,
    walk_nbytes,
)
from latentworks.graph.executor import ExecutionContext, ExecutionResult, Executor, Interrupted, JobTimedOut
from latentworks.graph.metadata import png_metadata
from latentworks.graph.registry import NodeRegistry, node_info
from latentworks.graph.types import InputSpec, NodeResult, NodeSpec, OutputSpec, Preview, types_compatible
from latentworks.graph.validate import ValidationResult, error_item, validate_prompt

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "BudgetExceeded",
    "CacheEntry",
    "ExecutionContext",
    "ExecutionResult",
    "Executor",
    "InputSpec",
    "Interrupted",
    "JobBudgets",
    "JobTimedOut",
    "NodeRegistry",
    "NodeResult",
    "NodeSpec",
    "OutputCache",
    "OutputSpec",
    "Preview",
    "SizedPayload",
    "Sizer",
    "ValidationResult",
    "default_sizer",
    "error_item",
    "node_cache_key",
    "node_info",
    "png_metadata",
    "types_compatible",
    "validate_prompt",
    "walk_nbytes",
]
