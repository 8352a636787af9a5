"""synleak_jax.search: exact blockwise top-k, certified bf16, sharded search, range search, baselines."""

from synleak_jax.search.exact import SearchStats, exact_topk
from synleak_jax.search.range_search import RangeResult, range_search
from synleak_jax.search.sharded import make_search_mesh, sharded_exact_topk

__all__ = ["exact_topk", "range_search", "RangeResult", "SearchStats", "sharded_exact_topk", "make_search_mesh"]
