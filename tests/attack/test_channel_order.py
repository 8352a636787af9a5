"""The channel-order check: its statistics against independent computations, and the real decision with the
dlib matcher on a labelled colour folder saved correctly and saved channel-swapped."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from synleak_jax.attack import channel_order
from tests.attack import colour_faces


def _eer_sklearn(scores, same):
    # Among (float-)ties of |FPR - FNR| the first in sklearn's order, the strictest threshold: the rule of
    # stats.exact_eer (tests/attack/test_stats.py). A plain argmin picked the other of two tied points in 1 of
    # 500 seeds (seed 3: 0.0236 vs 0.0264).
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    gap = np.abs(fpr - (1 - tpr))
    i = np.nonzero(gap <= gap.min() + 1e-12)[0][0]
    return (fpr[i] + 1 - tpr[i]) / 2


def test_statistics_equal_independent_computations(rng):
    labels = np.repeat(np.arange(30), 4)
    centres = rng.standard_normal((30, 16))
    good = centres[labels] + 0.6 * rng.standard_normal((120, 16))
    bad = centres[labels] + 1.5 * rng.standard_normal((120, 16))  # the "other order": worse separation
    for x in (good, bad):
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    res = channel_order.compare_channel_orders(bad, good, labels, metric="cosine", given_order="rgb")
    iu = np.triu_indices(120, 1)
    same = labels[iu[0]] == labels[iu[1]]
    for emb, dp, eer in ((bad, res.dprime_given, res.eer_given), (good, res.dprime_other, res.eer_other)):
        s = (emb @ emb.T)[iu]
        want = abs(s[same].mean() - s[~same].mean()) / np.sqrt((s[same].var() + s[~same].var()) / 2)
        assert dp == pytest.approx(want, rel=1e-9)
        assert eer == pytest.approx(_eer_sklearn(s, same), abs=1e-12)
    assert res.other_clearly_better and res.other_order == "bgr" and res.dprime_difference_ci_low > 0
    same_way = channel_order.compare_channel_orders(good, bad, labels, metric="cosine", given_order="bgr")
    assert not same_way.other_clearly_better and "not beaten" in same_way.reading


def test_sample_identities():
    labels = np.r_[np.repeat(np.arange(5), 6), np.full(2, 9), np.full(3, -1)]
    ids = channel_order.sample_identities(labels, 3, 4, seed=1)
    assert ids.size == 12 and len(np.unique(labels[ids])) == 3 and (labels[ids] >= 0).all()
    assert channel_order.sample_identities(np.zeros(5, int), 3, 2).size == 0  # one identity only


def test_dlib_tells_correct_from_swapped_colour_folders(tmp_path, caplog):
    """100 LFW identities x 5 views, coloured, saved correctly and saved channel-swapped (lossless PNG): with
    channel_order=auto the check keeps rgb for the correct folder and switches the swapped one to bgr, saying so in
    the terminal (log), the dataset's recorded reason and the report page; rerun from its stage with an explicit
    channel_order=rgb it only warns. Cost: 2 x 500 dlib embeddings per folder (about 20 s of CPU per folder,
    compile included; docs/audit.md)."""
    import logging

    from synleak_jax import audit
    from synleak_jax.config import base_config
    from synleak_jax.embed import door
    from synleak_jax.files import StageCache
    from synleak_jax.report import html

    class Cache(StageCache):
        hits = 0

        def load(self, name, key):
            hit = super().load(name, key)
            Cache.hits += hit is not None
            return hit

    def check(root, stages, order):
        cfg = base_config()
        cfg.matchers = "dlib_resnet_v1"
        cfg.data.synthetic.path = root
        cfg.data.synthetic.channel_order = order
        ds = {"synthetic": door.open_data(cfg.data.synthetic, "--config.data.synthetic")}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = audit._channel_checks(cfg, ds, audit._load_matchers(cfg, ds), Cache(stages))["synthetic"]
        page = html._colour_warnings({"datasets": {"synthetic": {"path": root, "channel_order_check": result}}})
        return result, ds["synthetic"], caplog.text, page

    decisions = {}
    for swap in (False, True):
        root = colour_faces.write_identity_folders(str(tmp_path / f"swap{swap}"), 100, 5, seed=3, swap=swap)
        result, ds, log, page = check(root, str(tmp_path / f"stages{swap}"), "auto")
        decisions[swap] = (result["applied"], ds.channel_order, result["other_clearly_better"])
        print(f"swap={swap}: {result['reading']} (d' CI low {result['dprime_difference_ci_low']:.3f})")
        if not swap:
            assert "COLOUR ORDER" not in log and page == "" and result["requested"] == "auto"
    assert decisions[False] == ("rgb", "rgb", False)
    assert decisions[True] == ("bgr", "bgr", True)
    # The swapped folder: said in the terminal, recorded as the dataset's reason, loud on the report page.
    assert "COLOUR ORDER" in log and "channel_order=auto: using bgr" in log
    assert ds.channel_order_reason.startswith("channel-order check:") and "auto switched" in ds.channel_order_reason
    assert "COLOUR ORDER" in page and "the audit used bgr" in page
    assert result["dprime_other"] > result["dprime_given"] and result["eer_other"] < result["eer_given"]
    # Same stage, explicit rgb: the cached check is reused, the request is this run's, the order is kept (warned).
    assert Cache.hits == 0
    result, ds, log, page = check(root, str(tmp_path / "stagesTrue"), "rgb")
    assert Cache.hits == 1
    assert (result["requested"], result["applied"], ds.channel_order) == ("rgb", "rgb", "rgb")
    assert "you set channel_order=rgb" in log and "the audit kept rgb" in page
