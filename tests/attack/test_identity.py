"""SFace identity relation and Tinsley distributions against brute force."""

import numpy as np
import pytest

from synleak_jax.attack import calibration
from synleak_jax.attack import distributions as Dd
from synleak_jax.attack import identity as identity_lib
from synleak_jax.attack import pairs
from synleak_jax.attack.neighbours import scan_real_vs_synthetic


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_identity_relation_brute_force(rng):
    d, nc = 16, 20
    centres = _unit(rng.normal(size=(nc, d)))
    rl = np.repeat(np.arange(nc), 6)
    real = _unit(centres[rl] + 0.6 * rng.normal(size=(rl.size, d)) / np.sqrt(d) * 3)
    sl = np.repeat(np.arange(nc), 4)
    syn = _unit(centres[sl] + 0.9 * rng.normal(size=(sl.size, d)) / np.sqrt(d) * 3)
    cal = calibration.calibrate_embeddings(real, rl, [1e-2], metric="cosine")
    rel = identity_lib.identity_relation(real, rl, syn, sl, cal, metric="cosine")
    full = pairs.pair_scores_np(real, syn, "cosine")
    same = rl[:, None] == sl[None, :]
    g, i = full[same], full[~same]
    out = rel.to_dict()
    assert out["n_genuine_pairs"] == g.size and out["n_impostor_pairs"] == i.size
    assert out["genuine_mean"] == pytest.approx(g.mean(), abs=1e-5)
    dp = abs(g.mean() - i.mean()) / np.sqrt((g.var() + i.var()) / 2)
    assert out["decidability"] == pytest.approx(dp, rel=1e-4)
    tau = cal.thresholds[0].tau
    assert out["at_thresholds"][0]["fnmr"] == pytest.approx((g <= tau).mean())
    assert out["at_thresholds"][0]["different_label_accepted"] == pytest.approx((i > tau).mean())
    # rank-1 with class means, brute force
    rt = np.stack([real[rl == c].mean(0) for c in range(nc)]); rt /= np.linalg.norm(rt, axis=1, keepdims=True)
    st = np.stack([syn[sl == c].mean(0) for c in range(nc)]); st /= np.linalg.norm(st, axis=1, keepdims=True)
    assert out["rank1_identification"]["rank1"] == pytest.approx((np.argmax(st @ rt.T, 1) == np.arange(nc)).mean())


def test_real_vs_generated_tails_and_agreement(rng):
    real = _unit(rng.normal(size=(90, 8)))
    syn = _unit(rng.normal(size=(70, 8)))
    cal = calibration.calibrate_embeddings(real, None, [1e-2], metric="cosine")
    scan = scan_real_vs_synthetic(real, syn, metric="cosine", k=3, taus=[t.tau for t in cal.thresholds])
    rg = Dd.real_vs_generated(scan, cal)
    full = pairs.pair_scores_np(real, syn, "cosine")
    assert rg["n_pairs"] == full.size and rg["hist_counts"].sum() == full.size
    t = rg["tails"][0]
    assert t["real_vs_generated_pairs_above"] == (full > cal.thresholds[0].tau).sum()
    rows = Dd.agreement({"a": {1, 2, 3}, "b": {2, 3, 4, 5}, "c": set()})
    ab = [r for r in rows if (r["matcher_a"], r["matcher_b"]) == ("a", "b")][0]
    assert ab["both"] == 2 and ab["jaccard"] == pytest.approx(2 / 5) and ab["only_b"] == 2
    assert Dd.flagged_by_all({"a": {1, 2}, "b": {2}}) == {2}
