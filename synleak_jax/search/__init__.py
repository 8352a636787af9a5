"""synleak_jax.search: the tile engine, exact top-k (float32 or certified bf16) on a mesh, range search, baselines."""

from synleak_jax.search.engine import Bins, PassParams, PassResult, PassSpec, Source, make_mesh, tile_pass
from synleak_jax.search.exact import SearchStats, exact_topk, fastest_exact_precision
from synleak_jax.search.range_search import RangeResult, range_search

__all__ = ["Bins", "PassParams", "PassResult", "PassSpec", "Source", "make_mesh", "tile_pass", "exact_topk",
           "fastest_exact_precision", "SearchStats", "range_search", "RangeResult"]
