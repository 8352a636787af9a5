"""report.json follows its schema, bad reports are refused, every text in index.html is escaped, plots render."""

import copy
import json
import os

import jsonschema
import numpy as np
import pytest
from PIL import Image

from synleak_jax.attack import calibration as C
from synleak_jax.attack import leakage as L
from synleak_jax.attack import membership as M
from synleak_jax.report import html as H
from synleak_jax.report import plots as P
from synleak_jax.report import writer as W

EVIL = "<script>alert('x')</script>&\"quote\""


def _report(rng, out_dir):
    real = rng.normal(size=(60, 8)).astype(np.float32)
    syn = np.concatenate([real[:5] + 0.01, rng.normal(size=(30, 8))]).astype(np.float32)
    cal = C.calibrate_embeddings(real, None, [1e-2], metric="euclidean", block=32)
    nb = L.compute_neighbours(syn, real, 3, "euclidean")
    lk = L.leakage_at(nb, cal.thresholds[0].tau, fmr=0.01)
    mem = M.membership_metrics(rng.normal(1, 1, 20), rng.normal(0, 1, 20))
    items = [{"matcher": "m", "rank": i + 1, "syn_idx": int(s), "real_idx": int(r), "score_native": float(-sc),
              "syn_id": EVIL, "real_id": f"real {i}"} for i, (s, r, sc) in
             enumerate(zip(lk.pairs["syn_idx"][:3], lk.pairs["real_idx"][:3], lk.pairs["score"][:3]))]
    img = (rng.random((25, 25, 3)) * 255).astype(np.uint8)
    gal = W.write_gallery(out_dir, items, lambda i: img, lambda i: img)
    ds = {"name": EVIL, "n_images": 35, "labelled": False}
    return {
        "schema_version": "1.0", "tool": {"name": "synleak_jax", "version": "0"}, "created_utc": "now",
        "demo": False, "title": EVIL, "notes": [EVIL], "config": {"x": EVIL}, "versions": {"numpy": np.__version__},
        "datasets": {"synthetic": ds, "members": {**ds, "n_images": 60}, "nonmembers": None,
                     "calibration": {"description": EVIL}},
        "matchers": [{"name": "m", "metric": "euclidean", "native_unit": "d", "weights": {"w": EVIL}, "stores": {},
                      "calibration": cal.to_dict(), "leakage": [lk.summary()],
                      "membership": {"available": True, "reason": EVIL, "results": [mem.summary()]},
                      "identity_relation": None, "distributions": {"real_vs_generated": {"tails": []}},
                      "plots": {}}],
        "agreement": None, "remedy": None,
        "files": {"report_json": "report.json", "pairs_csv": "pairs.csv", "html": "index.html", "plots": []},
        "gallery": gal,
    }


def test_report_validates_and_html_escapes(rng, tmp_path):
    rep = W.write_report(str(tmp_path), _report(rng, str(tmp_path)))
    jsonschema.validate(json.loads((tmp_path / "report.json").read_text()), W.load_schema())
    page = (tmp_path / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only our own load counter
    assert page.count("figure class='pair'") == len(rep["gallery"]) == 3
    for g in rep["gallery"]:
        assert os.path.exists(tmp_path / g["syn_thumb"]) and os.path.exists(tmp_path / g["real_thumb"])
        assert Image.open(tmp_path / g["syn_thumb"]).size == (100, 100)


@pytest.mark.parametrize("breakage", ["drop_matchers", "bad_fmr", "negative_count", "nan_auc"])
def test_schema_rejects_broken_reports(rng, tmp_path, breakage):
    rep = W.to_jsonable(_report(rng, str(tmp_path)))
    W.validate(rep)
    bad = copy.deepcopy(rep)
    if breakage == "drop_matchers":
        del bad["matchers"]
    elif breakage == "bad_fmr":
        bad["matchers"][0]["calibration"]["thresholds"][0]["fmr"] = 2.0
    elif breakage == "negative_count":
        bad["matchers"][0]["leakage"][0]["synthetic_matched"] = -1
    else:
        bad["matchers"][0]["membership"]["results"][0]["auc"] = None
    with pytest.raises(jsonschema.ValidationError):
        W.validate(bad)


def test_to_jsonable_and_pairs_csv(tmp_path):
    out = W.to_jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": np.bool_(True)})
    assert out == {"a": 1.5, "b": [1, 2], "c": None, "d": True}
    n = W.write_pairs_csv(str(tmp_path / "p.csv"), [{"matcher": "m", "rank": 1, "syn_id": "a,\"b\"",
                                                    "score_native": 0.3}])
    import csv
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert n == 1 and rows[0]["syn_id"] == "a,\"b\"" and rows[0]["score_native"] == "0.3"


def test_plots_render(rng, tmp_path):
    edges = np.linspace(-1, 0, 65)
    p1 = P.score_histograms(str(tmp_path / "h.png"), "m", "euclidean",
                            [("a", edges, rng.integers(0, 50, 64)), ("b", edges, rng.integers(0, 50, 64))],
                            [("FMR 0.01", 0.5)])
    mem = M.membership_metrics(rng.normal(1, 1, 50), rng.normal(0, 1, 50))
    p2 = P.roc_loglog(str(tmp_path / "r.png"), "m", [("max", mem.roc.fpr, mem.roc.tpr, mem.auc)])
    p3 = P.tails(str(tmp_path / "t.png"), "m", [{"source": "calibrated", "fmr": 0.01, "real_vs_real_tail": 0.01,
                                                "real_vs_generated_tail": 0.05}])
    for p in (p1, p2, p3):
        im = np.asarray(Image.open(p).convert("L"), np.float32)
        assert im.shape[0] > 100 and im.std() > 5  # not blank


def test_fmt():
    assert H.fmt(None) == "–" and H.fmt(1234) == "1,234" and H.fmt(0.5) == "0.5000" and H.fmt(1e-5) == "1.000e-05"
