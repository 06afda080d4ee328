"""Student architecture search: spaces, training-free proxies, and the Optuna study.

    result = run_search(teacher, data, latency_fn=predict_ms, budget=Budget(5.0, '5ms', 'host-cpu-1t'),
                        teacher_latency_ms=20.0, config=SearchConfig(), run_dir=run / "search")
    ta = build_arch(result.ta.arch, teacher)   # result.ta.arch["student_ratio"] nests the student

Extension points: `SPACES` (`register_space`) and `PROXIES` (`register_proxy`).
"""
from __future__ import annotations

from .assistant import Assistant, NotNestedError, nested_ratio, widen_to_assistant
from .blocks import ResidualBlock, drop_blocks, find_residual_blocks
from .context import Batch, DisWOTSignals, Reference, TeacherContext, labelled_batch
from .diswot import teacher_context
from .proxies import PROXIES, Proxy, ensemble, get_proxy, register_proxy
from .spaces import (
    SPACES,
    CNNSpace,
    SearchSpace,
    TeacherScaledSpace,
    TransformerSpace,
    build_arch,
    register_space,
)
from .study import SearchConfig, SearchError, open_storage, run_search

__all__ = [
    "Assistant", "Batch", "CNNSpace", "DisWOTSignals", "NotNestedError", "PROXIES", "Proxy", "Reference",
    "ResidualBlock", "SPACES", "SearchConfig", "SearchError", "SearchSpace", "TeacherContext",
    "TeacherScaledSpace", "TransformerSpace", "build_arch", "drop_blocks", "ensemble", "find_residual_blocks",
    "get_proxy", "labelled_batch", "nested_ratio", "open_storage", "register_proxy", "register_space", "run_search",
    "teacher_context", "widen_to_assistant",
]
