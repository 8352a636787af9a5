"""The tile engine against a float64 brute force: every reduction, both score kinds, both pair modes, streamed or
resident columns, and identical results on 1, 2 and 8 devices."""

import jax
import numpy as np
import pytest

from synleak_jax.search.engine import Bins, Blocks, PassParams, PassSpec, make_mesh, tile_pass


def _scores64(a, b, score):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ip = a64 @ b64.T
    if score == "ip":
        return ip
    d2 = (a64 * a64).sum(1)[:, None] + (b64 * b64).sum(1)[None, :] - 2 * ip
    return -np.sqrt(np.maximum(d2, 0))


def _bin32(s, bins):
    """The engine's bin formula (float32 arithmetic), so scores on a bin edge land where the engine puts them."""
    v = (s.astype(np.float32) - np.float32(bins.lo)) * np.float32(bins.inv_width)
    return np.clip(np.floor(v), 0, bins.nbins - 1).astype(int)


def _topk_ok(scores, idx, ref, k):
    """Exact top-k per row of ref (tie-tolerant: the returned entries' true scores equal the true top-k)."""
    got = np.take_along_axis(ref, idx.astype(np.int64), 1)
    want = -np.sort(-ref, axis=1)[:, :k]
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(scores, got, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    eq = scores[:, 1:] == scores[:, :-1]
    assert (idx[:, 1:][eq] > idx[:, :-1][eq]).all()  # ties: lower index first


def _assert_hist_within_roundoff(got: np.ndarray, ref: np.ndarray, bins: Bins) -> None:
    """The engine's histogram of float32 scores against the float64 scores ``ref``: a pair within float32
    round-off (1e-5 relative, above the 12-D dot's error) of a bin edge may land on either side (edges placed
    blindly put a pair there in ~1 run of 4), every other pair in its float64 bin; the total is exact."""
    def bin_of(s):
        return np.clip(np.floor((s - bins.lo) / bins.width), 0, bins.nbins - 1).astype(int)

    eps = 1e-5 * (1 + np.abs(ref))
    low, high = bin_of(ref - eps), bin_of(ref + eps)
    certain = np.bincount(low[low == high], minlength=bins.nbins)
    reachable = np.array([((low <= b) & (b <= high)).sum() for b in range(bins.nbins)])
    assert got.sum() == ref.size
    assert (got >= certain).all() and (got <= reachable).all(), (got, certain, reachable)
    assert (low != high).sum() <= max(3, ref.size // 100)  # the escape hatch stays small (~0.1% measured)


@pytest.mark.parametrize("score", ["ip", "neg_euclidean"])
@pytest.mark.parametrize("chunk", [None, 64])
def test_fused_cross_pass_equals_brute_force(rng, score, chunk):
    a = rng.standard_normal((203, 12)).astype(np.float32)
    b = rng.standard_normal((150, 12)).astype(np.float32)
    b[40:50] = b[3]  # exact ties across tiles
    la, lb = rng.integers(0, 9, 203), rng.integers(0, 9, 150)
    ref = _scores64(a, b, score)
    srt = np.sort(ref.ravel())
    # thresholds in gaps between neighbouring scores wide enough that float32 round-off cannot cross them
    gaps = np.nonzero(np.diff(srt) > 1e-4 * (1 + np.abs(srt[:-1])))[0]
    js = [gaps[np.searchsorted(gaps, j)] for j in (1000, 20000, srt.size - 40)]
    taus = np.asarray([(srt[j] + srt[j + 1]) / 2 for j in js], np.float32)
    bins = Bins(float(srt[0]) - 1, float(srt[-1]) + 1, 37)
    spec = PassSpec(score=score, labels=True, row_k=5, col_k=4, n_taus=3, nbins=37, moments=True)
    blocks = Blocks(bq=16, bdb=32, rows_per_device=32, chunk=chunk, ct=3)
    res = tile_pass(a, b, spec, PassParams(taus=taus, bins=bins), row_labels=la, col_labels=lb, blocks=blocks,
                    mesh=make_mesh(jax.devices()[:1]))
    _topk_ok(res.row_scores, res.row_index, ref, 5)
    _topk_ok(res.col_scores, res.col_index, ref.T, 4)
    same = la[:, None] == lb[None, :]
    for t, tau in enumerate(taus):
        np.testing.assert_array_equal(res.counts[:, t, 0], ((ref > tau) & ~same).sum(1))
        np.testing.assert_array_equal(res.counts[:, t, 1], ((ref > tau) & same).sum(1))
    _assert_hist_within_roundoff(res.hist[0], ref[~same], bins)
    _assert_hist_within_roundoff(res.hist[1], ref[same], bins)
    for c, sel in ((0, ~same), (1, same)):  # float32 sums: error relative to the sum of magnitudes
        np.testing.assert_allclose(res.moments[c], [ref[sel].sum(), (ref[sel] ** 2).sum()], rtol=1e-5,
                                   atol=1e-6 * np.abs(ref[sel]).sum())
    assert res.max_col_norm == pytest.approx(np.linalg.norm(b, axis=1).max(), rel=1e-6)


def test_upper_pairs_collect_and_restrict(rng):
    x = (rng.integers(-4, 5, size=(130, 5)) / 8.0).astype(np.float32)  # exact scores
    lab = rng.integers(0, 7, 130)
    ref = _scores64(x, x, "ip")
    iu = np.triu_indices(130, 1)
    sc, same = ref[iu], (lab[:, None] == lab[None, :])[iu]
    coarse = Bins(-3.1, 3.3, 16)
    cidx = _bin32(sc, coarse)
    b = int(np.bincount(cidx).argmax())
    fine = coarse.sub(b, 16)
    fidx = _bin32(sc, fine)
    inside = cidx == b
    blocks = Blocks(bq=16, bdb=32, rows_per_device=16, chunk=32, ct=2)
    h = tile_pass(x, x, PassSpec(pairs="upper", labels=True, nbins=16, restrict=True),
                  PassParams(bins=fine, restrict=(coarse, b)), row_labels=lab, blocks=blocks)
    np.testing.assert_array_equal(h.hist[0], np.bincount(fidx[inside & ~same], minlength=16))
    np.testing.assert_array_equal(h.hist[1], np.bincount(fidx[inside & same], minlength=16))
    wanted = np.zeros(16, bool)
    wanted[[2, 9]] = True
    c = tile_pass(x, x, PassSpec(pairs="upper", labels=True, nbins=16, collect_cap=4096),
                  PassParams(bins=coarse, collect_bins=wanted), row_labels=lab, blocks=blocks)
    sel = wanted[cidx]
    got_s, got_r, got_c = c.collected
    assert got_s.size == sel.sum()
    want = sorted(zip(iu[0][sel].tolist(), sc[sel].tolist(), same[sel].tolist()))
    assert sorted(zip(got_r.tolist(), got_s.astype(np.float64).tolist(), got_c.astype(bool).tolist())) == want


@pytest.mark.parametrize("wide", [False, True])
def test_collect_sparse_and_dense_tiles(rng, wide):
    """Row blocks larger than COLLECT_ROWS: a narrow flagged bin takes the sparse path (few rows compacted), a wide
    one the dense path; both collect exactly the brute force's pairs."""
    from synleak_jax.search import engine

    x = (rng.integers(-4, 5, size=(400, 5)) / 8.0).astype(np.float32)
    lab = rng.integers(0, 20, 400)
    ref = _scores64(x, x, "ip")
    iu = np.triu_indices(400, 1)
    sc, same = ref[iu], (lab[:, None] == lab[None, :])[iu]
    bins = Bins(-3.1, 3.3, 8 if wide else 512)
    idx = _bin32(sc, bins)
    counts = np.bincount(idx, minlength=bins.nbins)
    b = int(counts.argmax()) if wide else int(np.nonzero(counts)[0][-1])  # most crowded, or the top bin
    flag = np.zeros(bins.nbins, bool)
    flag[b] = True
    rows_flagged = len(np.unique(iu[0][idx == b]))
    assert (rows_flagged > engine.COLLECT_ROWS) == wide
    res = tile_pass(x, x, PassSpec(pairs="upper", labels=True, nbins=bins.nbins, collect_cap=1 << 17),
                    PassParams(bins=bins, collect_bins=flag), row_labels=lab,
                    blocks=Blocks(bq=400, bdb=64, rows_per_device=400, chunk=None, ct=1))
    got_s, got_r, got_c = res.collected
    sel = idx == b
    assert sorted(zip(got_r.tolist(), got_s.astype(np.float64).tolist(), got_c.astype(bool).tolist())) == \
        sorted(zip(iu[0][sel].tolist(), sc[sel].tolist(), same[sel].tolist()))


@pytest.mark.parametrize("pair_mode", ["upper", "all"])
def test_counts_above_taus_in_any_order(rng, pair_mode):
    """Per-row counts above taus given in any order (duplicates, -inf, +inf, exact score values), split into
    impostor / genuine, equal the brute force on 1 and 8 devices, resident or streamed, with super-tiles skipped
    below the diagonal (upper)."""
    x = (rng.integers(-4, 5, size=(150, 5)) / 8.0).astype(np.float32)  # exact scores
    y = x if pair_mode == "upper" else (rng.integers(-4, 5, size=(90, 5)) / 8.0).astype(np.float32)
    lab = rng.integers(0, 9, 150)
    ylab = lab if pair_mode == "upper" else rng.integers(0, 9, 90)
    ref = _scores64(x, y, "ip")
    same = (lab[:, None] == ylab[None, :])
    if pair_mode == "upper":
        ref = np.where(np.triu(np.ones_like(ref, bool), 1), ref, -np.inf)  # pairs i < j only
    taus = np.asarray([0.5, -np.inf, 1.5, -1.0, np.inf, 0.0, 0.5, 0.515625], np.float32)
    want = np.stack([np.stack([((ref > t) & ~same).sum(1), ((ref > t) & same).sum(1)], 1)
                     for t in taus.astype(np.float64)], 1)  # [rows, T, 2]
    spec = PassSpec(pairs=pair_mode, labels=True, n_taus=len(taus))
    for ndev, chunk, bq in ((1, None, 16), (8, 32, 16), (1, 64, 32)):
        res = tile_pass(x, x if pair_mode == "upper" else y, spec, PassParams(taus=taus),
                        row_labels=lab, col_labels=None if pair_mode == "upper" else ylab,
                        blocks=Blocks(bq=bq, bdb=32, rows_per_device=32, chunk=chunk, ct=1),
                        mesh=make_mesh(jax.devices()[:ndev]))
        np.testing.assert_array_equal(res.counts, want)
    with pytest.raises(ValueError, match="NaN"):
        tile_pass(x, x if pair_mode == "upper" else y, spec, PassParams(taus=np.where(taus == 0.0, np.nan, taus)),
                  row_labels=lab, col_labels=None if pair_mode == "upper" else ylab)


@pytest.mark.parametrize("score", ["ip", "neg_euclidean"])
def test_identical_on_1_2_8_devices(rng, score):
    assert len(jax.devices()) == 8
    a = rng.standard_normal((301, 16)).astype(np.float32)
    b = rng.standard_normal((257, 16)).astype(np.float32)
    la, lb = rng.integers(0, 20, 301), rng.integers(0, 20, 257)
    spec = PassSpec(score=score, labels=True, row_k=6, col_k=6, n_taus=2, nbins=64, moments=True)
    params = PassParams(taus=np.asarray([0.5, 2.0], np.float32), bins=Bins(-30.0, 30.0, 64))
    out = []
    for ndev, chunk in ((1, None), (2, 64), (8, None), (8, 96)):
        blocks = Blocks(bq=16, bdb=32, rows_per_device=32, chunk=chunk, ct=2)
        out.append(tile_pass(a, b, spec, params, row_labels=la, col_labels=lb, blocks=blocks,
                             mesh=make_mesh(jax.devices()[:ndev])))
    for r in out[1:]:
        for key in ("row_scores", "row_index", "col_scores", "col_index", "counts", "hist", "moments"):
            np.testing.assert_array_equal(getattr(r, key), getattr(out[0], key), err_msg=key)


def test_bad_arguments(rng):
    a = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="top-k lists are not defined"):
        PassSpec(pairs="upper", row_k=2)
    with pytest.raises(ValueError, match="k=11 exceeds"):
        tile_pass(a, a, PassSpec(row_k=11))
    with pytest.raises(ValueError, match="dimension mismatch"):
        tile_pass(a, a[:, :3], PassSpec(row_k=1))
    with pytest.raises(ValueError, match="params.taus"):
        tile_pass(a, a, PassSpec(n_taus=2))
    bad = a.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="rows row 4 contains NaN"):
        tile_pass(bad, a, PassSpec(row_k=1))


def test_column_select_above_merges_like_column_select(rng):
    """Merged into running lists whose k-th score is thr, the pruned selection gives the same lists as the full
    one — on its fast path (few groups above thr) and its fallback (crowded), with ties on quantised scores."""
    import jax.numpy as jnp

    from synleak_jax.search import engine

    k, tile, b, n = 4, 8, 64, 48
    paths = set()
    for case in range(20):
        s = (rng.integers(-40, 41, (b, n)) / 8.0).astype(np.float32)
        low = 39 if case % 2 else -40  # full lists of high scores: few groups above their k-th (the fast path)
        run = -np.sort(-(rng.integers(low, 41, (n, k)) / 8.0).astype(np.float32), axis=1)
        if case % 2 == 0:
            run[:3] = -np.inf  # lists not yet full
        run_i = np.where(np.isfinite(run), np.arange(k)[None, :] - 100, -1).astype(np.int32)  # earlier rows
        thr = run[:, -1]
        gm = s.reshape(b // tile, tile, n).max(axis=1)
        paths.add(bool(((gm > thr[None, :]).sum(0) > engine.ABOVE_GROUPS).any()))
        outs = []
        for sel in (engine.column_select(jnp.asarray(s), k, "tiled", tile),
                    engine.column_select_above(jnp.asarray(s), jnp.asarray(thr), k, "tiled", tile)):
            ms, mi = engine.merge_topk(jnp.asarray(run), jnp.asarray(run_i), sel[0], sel[1], k)
            outs.append((np.asarray(ms), np.asarray(mi)))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        # and the full-path result is the brute-force merge (score desc, row asc; earlier rows first)
        allv = np.concatenate([run, s.T], axis=1)
        alli = np.concatenate([run_i, np.broadcast_to(np.arange(b, dtype=np.int32), (n, b))], axis=1)
        order = np.lexsort((alli, -allv), axis=1)[:, :k]
        np.testing.assert_array_equal(outs[0][0], np.take_along_axis(allv, order, 1))
    assert paths == {False, True}  # both paths ran


def _lex_topk(ref, k):
    """Brute-force top-k per row by (score desc, index asc)."""
    order = np.lexsort((np.broadcast_to(np.arange(ref.shape[1]), ref.shape), -ref), axis=1)[:, :k]
    return np.take_along_axis(ref, order, 1).astype(np.float32), order


@pytest.mark.parametrize("shape,chunk", [((3000, 200), None), ((200, 3000), None), ((300, 3000), 640)])
def test_topk_lists_exact_over_many_steps_and_super_tiles(rng, shape, chunk):
    """Passes long enough for the row lists (many super-tiles) or the column lists (many steps) to fill, so most
    tiles take the pruned paths: both top-k lists equal the brute force with heavy ties (ties -> lower index), on
    1 and 8 devices, resident or streamed columns."""
    a = (rng.integers(-3, 4, (shape[0], 6)) / 4.0).astype(np.float32)
    b = (rng.integers(-3, 4, (shape[1], 6)) / 4.0).astype(np.float32)
    a[::7] *= 0.5  # rows with smaller scores: their lists fill with lower values
    ref = _scores64(a, b, "ip")
    spec = PassSpec(row_k=3, col_k=4, tile=8)
    blocks = Blocks(bq=64, bdb=64, rows_per_device=256, chunk=chunk, ct=2)
    res1 = tile_pass(a, b, spec, blocks=blocks, mesh=make_mesh(jax.devices()[:1]))
    res8 = tile_pass(a, b, spec, blocks=blocks, mesh=make_mesh())
    row_s, row_i = _lex_topk(ref, 3)
    col_s, col_i = _lex_topk(ref.T, 4)
    for res in (res1, res8):
        np.testing.assert_array_equal(res.row_index, row_i)
        np.testing.assert_array_equal(res.row_scores, row_s)
        np.testing.assert_array_equal(res.col_index, col_i)
        np.testing.assert_array_equal(res.col_scores, col_s)


def test_block_select_above_merges_like_block_select(rng):
    import jax.numpy as jnp

    from synleak_jax.search import engine

    k, tile, b, n = 4, 8, 48, 64
    paths = set()
    for case in range(20):
        s = (rng.integers(-40, 41, (b, n)) / 8.0).astype(np.float32)
        low = 39 if case % 2 else -40
        run = -np.sort(-(rng.integers(low, 41, (b, k)) / 8.0).astype(np.float32), axis=1)
        if case % 2 == 0:
            run[:3] = -np.inf
        run_i = np.where(np.isfinite(run), np.arange(k)[None, :], -1).astype(np.int32)  # lower columns
        gm = s.reshape(b, n // tile, tile).max(axis=2)
        paths.add(bool(((gm > run[:, -1:]).sum(1) > engine.ABOVE_GROUPS).any()))
        outs = []
        for sel in (engine.block_select(jnp.asarray(s), k, "tiled", tile),
                    engine.block_select_above(jnp.asarray(s), jnp.asarray(run[:, -1]), k, "tiled", tile)):
            ms, mi = engine.merge_topk(jnp.asarray(run), jnp.asarray(run_i), sel[0], sel[1] + 100, k)
            outs.append((np.asarray(ms), np.asarray(mi)))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert paths == {False, True}
