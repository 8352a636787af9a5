"""synleak_jax.search: exact blockwise top-k, certified bf16, sharded search, range search, baselines."""

from synleak_jax.search.exact import SearchStats, exact_topk
from synleak_jax.search.range_search import RangeResult, range_search

__all__ = ["exact_topk", "range_search", "RangeResult", "SearchStats"]
