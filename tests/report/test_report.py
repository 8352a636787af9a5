"""The files people read, from a real audit from embeddings (Euclidean matcher, names instead of images):
report.json follows its schema (every field described, native units, honest names), pairs.csv lists members and
control pairs with their unit, index.html shows the card, defines every column, escapes every text, and shows
names when there are no images; plots keep their legends off the data."""

import copy
import csv
import io
import json
import re
import types

import jsonschema
import numpy as np
import pytest
from PIL import Image

from synleak_jax.attack import card as card_lib
from synleak_jax.data import face_check
from synleak_jax.files import to_jsonable
from synleak_jax.report import assemble
from synleak_jax.report import html
from synleak_jax.report import plots as plots_lib
from synleak_jax.attack import calibration, membership
from synleak_jax.report import writer
from tests import audit_helpers

EVIL = "<script>alert('x')</script>&\"quote\""


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """One real audit from embeddings: dlib-like Euclidean metric, synthetic rows named (one name is hostile
    markup), members and non-members labelled (identity bootstraps on), non-members as the control; no images."""
    from synleak_jax.audit import run_audit

    tmp = tmp_path_factory.mktemp("emb")
    sets = audit_helpers.make_sets(np.random.default_rng(7))
    paths = audit_helpers.write_sets(tmp, sets)
    names = [f"gen/{i:04d}.png" for i in range(len(sets["synthetic"]))]
    names[sets["planted_syn"][0]] = EVIL
    (tmp / "syn_names.txt").write_text("".join(n + "\n" for n in names))
    np.save(tmp / "nonmember_labels.npy", np.arange(len(sets["nonmembers"])))  # each its own identity
    cfg = audit_helpers.embeddings_config(paths, tmp / "out")
    cfg.data.nonmembers.labels = str(tmp / "nonmember_labels.npy")
    cfg.report.bootstrap, cfg.report.bootstrap_replicates = True, 100  # the identity bootstraps' fields too
    cfg.embeddings.metric = "euclidean"
    cfg.title = EVIL
    cfg.notes = (EVIL,)
    cfg.data.synthetic.name = EVIL
    rep = run_audit(cfg)
    return types.SimpleNamespace(rep=rep, out=tmp / "out", sets=sets, names=names)


def _walk(schema, path="#"):
    """Yields (path, subschema) for every property and $def of a JSON schema."""
    if isinstance(schema, dict):
        for key in ("properties", "$defs"):
            for name, sub in (schema.get(key) or {}).items():
                yield f"{path}/{key}/{name}", sub
                yield from _walk(sub, f"{path}/{key}/{name}")
        for key, sub in schema.items():
            if key not in ("properties", "$defs"):
                yield from _walk(sub, f"{path}/{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            yield from _walk(sub, f"{path}/{i}")


def test_every_schema_field_has_a_description():
    schema = writer.load_schema()
    assert schema["properties"]["schema_version"]["const"] == writer.SCHEMA_VERSION == "2.0"
    fields = list(_walk(schema))
    assert len(fields) > 150  # the walk really reaches the nested definitions
    missing = [p for p, sub in fields if not (isinstance(sub, dict) and str(sub.get("description", "")).strip())]
    assert missing == []


def test_report_validates_and_is_in_native_units(audit):
    rep = json.loads((audit.out / "report.json").read_text())
    jsonschema.validate(rep, writer.load_schema())
    assert rep["schema_version"] == "2.0"
    (m,) = rep["matchers"]
    assert (m["metric"], m["unit"], m["more_similar"]) == ("euclidean", "distance", "lower")
    s = audit.sets
    # every threshold, score and mean a reader sees is a distance (positive), none a negated one
    d_mem = np.linalg.norm(s["members"][:, None].astype(np.float64) - s["members"][None].astype(np.float64), axis=2)
    lab = s["member_labels"]
    iu = np.triu_indices(len(lab), 1)
    impostor_d = d_mem[iu][lab[iu[0]] != lab[iu[1]]]
    cal = m["calibration"]
    for t in cal["thresholds"]:
        assert t["source"] == "calibrated" and t["threshold"] == f"FMR {t['target_fmr']:g}"
        assert t["tau_native"] > 0
        assert t["impostors_above"] == int((impostor_d < t["tau_native"] - 1e-6).sum())
        assert t["achieved_fmr"] == pytest.approx(t["impostors_above"] / cal["n_impostor_pairs"])
        assert "tau" not in t and "fmr" not in t
    assert cal["impostor_mean_native"] == pytest.approx(impostor_d.mean(), rel=1e-4)
    for r in m["membership"]["results"]:
        assert r["member_score_mean_native"] > 0 and r["nonmember_score_mean_native"] > 0
        assert r["balanced_accuracy_threshold_native"] > 0
    best = r = m["membership"]["results"][0]
    d_syn_mem = np.linalg.norm(s["members"][:, None].astype(np.float64) - s["synthetic"][None], axis=2)
    assert best["member_score_mean_native"] == pytest.approx(d_syn_mem.min(1).mean(), rel=1e-4)
    # TPR at an FPR the non-members cannot resolve is null with its reason, never the TPR at FPR 0
    pts = {p["target_fpr"]: p for p in best["tpr_at_fpr"]}
    assert pts[1e-3]["tpr"] is None and pts[1e-3]["reason"] == "needs >= 1,000 non-members; have 100"
    assert pts[1e-2]["tpr"] is not None and pts[1e-2]["reason"] is None
    # the card: target_fmr named, membership thresholds in distances
    card = m["card"]
    assert [t["target_fmr"] for t in card["thresholds"]] == [t["target_fmr"] for t in cal["thresholds"]]
    assert all("fmr" not in t for t in card["thresholds"])
    for p in card["membership"]["tpr_at_fpr"]:
        assert "threshold" not in p and (p["threshold_native"] is None or p["threshold_native"] > 0)
    assert card["verdict"] == "leakage detected"  # the planted near-copies of members
    boot = card["membership"]["bootstrap"]
    assert boot["replicates"] == 100 and boot["n_member_identities"] == 60 and boot["n_nonmember_identities"] == 100
    assert all(t["achieved_fmr_ci"] is not None for t in card["thresholds"])  # labelled calibration set
    lk, ctrl = m["leakage"], m["leakage_control"]
    assert [x["real_set"] for x in lk] == ["members"] * 2 and [x["real_set"] for x in ctrl] == ["nonmembers"] * 2
    for x in lk:
        assert x["real_images_matched"] == int((d_syn_mem.min(1) < x["tau_native"] - 1e-6).sum())


def test_every_count_has_its_interval_and_the_fmr_interval_its_identity_counts(audit):
    """Each count over a total in report.json carries its Clopper-Pearson interval (statsmodels' "beta" here),
    and the card's achieved-FMR interval is the identity bootstrap of per-identity impostor counts computed here
    from the members' distances (not from the audit's pair engine)."""
    from statsmodels.stats.proportion import proportion_confint

    from synleak_jax.attack import stats

    rep = json.loads((audit.out / "report.json").read_text())
    (m,) = rep["matchers"]
    card = m["card"]
    conf = card["confidence"]
    for row in m["leakage"] + m["leakage_control"]:
        for name, total in (("synthetic_matched", "n_synthetic"), ("real_images_matched", "n_real"),
                            ("real_identities_matched", "n_real_identities")):
            if row[total] is None or row[name] is None:
                assert row[name + "_ci"] is None, name
            else:
                ref = proportion_confint(row[name], row[total], alpha=1 - conf, method="beta")
                assert row[name + "_ci"] == pytest.approx(list(ref), rel=1e-10, abs=1e-15), name
    assert m["leakage"][0]["real_identities_matched_ci"] is not None  # members are labelled
    for row, ctrl, t in zip(m["leakage"], m["leakage_control"], card["thresholds"]):
        assert row["synthetic_matched_ci"] == t["synthetic_matched_ci"]
        assert row["real_images_matched_ci"] == t["real_images_matched_ci"]
        assert ctrl["real_images_matched_ci"] == t["nonmembers_matched_ci"]

    s = audit.sets
    x = s["members"].astype(np.float64)
    lab = s["member_labels"]
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    impostor = lab[:, None] != lab[None, :]
    ids = np.unique(lab)
    pairs_per_identity = np.array([impostor[lab == i].sum() for i in ids])  # ordered: each pair for both ids
    for t in card["thresholds"]:
        above = (d < t["tau_native"] - 1e-6) & impostor
        above_per_identity = np.array([above[lab == i].sum() for i in ids])
        ref = stats.identity_bootstrap_fmr(above_per_identity, pairs_per_identity,
                                           replicates=audit.rep["config"]["report"]["bootstrap_replicates"],
                                           confidence=conf)
        assert t["impostor_pairs"] == pairs_per_identity.sum() // 2 == ref.impostor_pairs
        assert t["achieved_fmr_ci"] == pytest.approx(ref.achieved_fmr_ci, rel=1e-12, abs=1e-15)


def test_html_and_terminal_say_leakage_detected_only_when_the_test_rejects():
    """12/50 members vs 10/50 non-members (Boschloo p ~ 0.4): the page's card and the terminal give the
    not-significant verdict with its reading, never "leakage detected"; 35/50 vs 10/50 gives it."""
    for members, verdict in ((12, "no significant excess over the non-member control"), (35, "leakage detected")):
        c = card_lib.leakage_card("m", [card_lib.ThresholdCounts(
            fmr=1e-3, tau_native=0.4, synthetic_matched=3, n_synthetic=100, real_images_matched=members, n_real=50,
            nonmembers_matched=10, n_nonmembers=50)])
        rejected = c.thresholds[0].member_vs_control.rejected
        assert rejected == (verdict == "leakage detected")
        section = html._card({"name": "m", "native_unit": "cosine similarity",
                              "card": assemble._card_entry(c, "cosine")})
        lines = assemble._summary_lines({"m": types.SimpleNamespace(name="m", card=c)}, {"datasets": {}})
        assert f"data-verdict='{verdict}'" in section and lines[0] == f"[m] verdict: {verdict}"
        if not rejected:
            assert "leakage detected" not in section and "leakage detected" not in " ".join(lines)
            assert "absence of evidence, not evidence of absence" in section


def test_published_threshold_has_no_target_fmr():
    """A fixed threshold's row says what it achieves, never a target it did not have."""

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    cal = calibration.calibrate_embeddings(x, None, [1e-2], metric="euclidean", fixed_thresholds={"m published 3.5": 3.5})
    rows = assemble._calibration_entry(cal)["thresholds"]
    fixed = next(t for t in rows if t["source"] != "calibrated")
    assert fixed["threshold"] == "m published 3.5" and fixed["target_fmr"] is None
    assert fixed["tau_native"] == 3.5 and fixed["impostors_allowed"] is None
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)[np.triu_indices(40, 1)]
    assert fixed["achieved_fmr"] == pytest.approx((d < 3.5).mean())


def test_pairs_csv_lists_members_and_control_pairs_with_their_unit(audit):
    text = (audit.out / "pairs.csv").read_text()
    assert text.splitlines()[0] == ",".join(writer.PAIRS_COLUMNS)  # the first row is the header, no comment lines
    rows = list(csv.DictReader(text.splitlines()))
    (m,) = audit.rep["matchers"]
    for role, key in (("members", "leakage"), ("nonmembers", "leakage_control")):
        mine = [r for r in rows if r["role"] == role]
        assert len(mine) == sum(x["n_pairs"] for x in m[key]) > 0
    assert {r["unit"] for r in rows} == {"distance"}
    s = audit.sets
    for r in rows:
        real = s["members"] if r["role"] == "members" else s["nonmembers"]
        d = np.linalg.norm(s["synthetic"][int(r["syn_idx"])].astype(np.float64) - real[int(r["real_idx"])])
        assert float(r["score_native"]) == pytest.approx(d, abs=1e-5)
        assert float(r["score_native"]) < float(r["tau_native"])  # a distance matches below tau
        assert r["syn_id"] == audit.names[int(r["syn_idx"])]
    assert EVIL in {r["syn_id"] for r in rows}  # the planted copy, listed by its (hostile) name, unchanged


def _ths(page: str) -> list[str]:
    return re.findall(r"<th[^>]*>", page)


def test_html_card_names_no_images_and_every_column_defined(audit):
    page = (audit.out / "index.html").read_text()
    # escaping: the hostile title, note, dataset name and image name never become markup
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only our own load counter
    # the card, at the top, before the data table and the details
    card_at = page.index("<section class='card detected'")
    assert card_at < page.index("Data as given") < page.index("details</h2>")
    card = page[card_at:page.index("</section>", card_at)]
    for text in ("leakage detected", ">members - control</th>", "boschloo p =",
                 "AUC 0.", "n/a (needs &gt;= 1,000 non-members; have 100)", "Privacy", "epsilon &gt;=",
                 "What the numbers cannot say", "Identity bootstrap (100 replicates): AUC ["):
        assert text in card, text
    # the identity-bootstrap interval of each achieved FMR (labelled calibration set, bootstrap on)
    thresholds = page[page.index("<h3>Thresholds</h3>"):page.index("Leakage: synthetic vs members")]
    assert "achieved FMR interval" in thresholds and "n/a (needs labels" not in thresholds
        # every column defined: each header has a tooltip, and the legends exist
    assert _ths(page) and all("title=" in th for th in _ths(page))
    assert "<b>excess ratio</b>" in page and "<b>share</b>" in page and "<b>possibly truncated (syn/real)</b>" in page
    # AUC: on the card and once per attack score in the membership table, never per threshold
    leak_table = page[page.index("Leakage: synthetic vs members"):page.index("Membership inference</h3>")]
    assert "AUC" not in leak_table
    # names instead of images, both galleries, relative names
    assert "<img alt='synthetic" not in page and "audited from embeddings" in page
    n = audit.rep["matchers"][0]
    gal = audit.rep["gallery"]
    assert {g["role"] for g in gal} == {"members", "nonmembers"} and len(gal) == 2 * 5
    assert page.count("class='pair noimg'") == len(gal)
    assert page.count("<div class='gallery' data-role='members'>") == 1
    assert page.count("<div class='gallery' data-role='nonmembers'>") == 1
    top = [g for g in gal if g["role"] == "members"]
    assert [g["score_native"] for g in top] == sorted(g["score_native"] for g in top)  # distances, ascending
    assert f"syn: {html.e(top[0]['syn_name'])}" in page
    assert n["name"] == "embeddings"


def test_html_face_check_warning_and_preset_expectation_are_loud(audit):
    rep = copy.deepcopy(audit.rep)
    outcomes = tuple(face_check.ImageOutcome(i, f"/data/cats/{i}.jpg", "no_face" if i % 4 else "ok", int(i % 4 == 0),
                                             None, None) for i in range(8))
    res = face_check.FaceCheckResult("arcface112", True, 100, outcomes, face_check.FaceCheckConfig(sample_size=8),
                                     1.0)
    assert res.verdict == "fail"
    rep["datasets"]["synthetic"]["face_check"] = assemble._face_check_entry({"arcface112": res.to_dict()})
    rep["datasets"]["synthetic"]["description"] = "DCFace 0.5M (expected)"
    rep["datasets"]["synthetic"]["description_from"] = "preset dcface_vs_casia"
    writer.validate(to_jsonable(rep))
    page = html.render(rep)
    assert "FACE CHECK FAIL for the synthetic images" in page and "<tr class='loud'>" in page
    assert "preset dcface_vs_casia expects: DCFace 0.5M (expected)" in page
    lines = assemble._summary_lines({}, rep)
    assert len([x for x in lines if x.startswith("!! face check FAIL for synthetic")]) == 1
    assert all(len(x) <= assemble.TERMINAL_WIDTH for x in lines)
    assert "2/8 near the arcface112 template (25%;" in " ".join(x.strip() for x in lines)


def test_html_colour_order_warning_is_loud(audit):
    """A colour-order check that found the other order clearly better: one loud line on the page, saying whether
    auto switched or the explicit order was kept (the record is the schema's channel_order_check)."""
    check = {"given_order": "rgb", "other_order": "bgr", "n_images": 500, "n_identities": 100, "dprime_given": 2.41,
             "dprime_other": 2.68, "eer_given": 0.113, "eer_other": 0.088, "dprime_difference_ci_low": 0.154,
             "confidence": 0.95, "other_clearly_better": True, "reading": "the other colour order (bgr) separates",
             "matcher": "dlib_resnet_v1"}
    for requested, applied, says in (("auto", "bgr", "channel_order=auto: the audit used bgr"),
                                     ("rgb", "rgb", "you set channel_order=rgb: the audit kept rgb")):
        rep = copy.deepcopy(audit.rep)
        rep["datasets"]["synthetic"]["channel_order_check"] = {**check, "requested": requested, "applied": applied}
        writer.validate(to_jsonable(rep))
        page = html.render(rep)
        assert page.count("COLOUR ORDER of the synthetic images") == 1 and says in page
    rep = copy.deepcopy(audit.rep)
    rep["datasets"]["synthetic"]["channel_order_check"] = {**check, "other_clearly_better": False,
                                                           "requested": "auto", "applied": "rgb"}
    assert "COLOUR ORDER" not in html.render(rep)


def test_summary_lines_for_several_matchers(audit):
    counts = [card_lib.ThresholdCounts(fmr=1e-3, tau_native=0.4, synthetic_matched=30, n_synthetic=100,
                                       real_images_matched=k, n_real=50, nonmembers_matched=5, n_nonmembers=50)
              for k in (30, 6)]
    results = {name: types.SimpleNamespace(name=name, card=card_lib.leakage_card(name, [c]))
               for name, c in zip(("a", "b"), counts)}
    rep = {"datasets": {}, "agreement": {"fmr": 1e-3, "flagged_by_all": 4, "synthetic_images": [
        {"matcher_a": "a", "matcher_b": "b", "both": 4, "jaccard": 0.25}]}}
    lines = assemble._summary_lines(results, rep)
    assert lines[0] == "2 matchers: a: leakage detected; b: no significant excess over the non-member control"
    assert "[a] verdict: leakage detected" in lines and "[b] verdict: no significant excess over the non-member " \
                                                        "control" in lines
    assert lines.index("[b] verdict: no significant excess over the non-member control") > lines.index("") > 0
    text = " ".join(x.strip() for x in lines)
    assert "non-members (control) 5/50" in text
    assert "agreement at FMR 0.001: 4 synthetic images flagged by every matcher; a & b: 4 both (Jaccard 0.25)" in text
    assert all(len(x) <= assemble.TERMINAL_WIDTH for x in lines)


@pytest.mark.parametrize("breakage", ["drop_matchers", "bad_fmr", "negative_count", "nan_auc", "unknown_field",
                                      "negated_unit"])
def test_schema_rejects_broken_reports(audit, breakage):
    rep = copy.deepcopy(audit.rep)
    writer.validate(rep)
    bad = copy.deepcopy(rep)
    m = bad["matchers"][0] if "matchers" in bad else None
    if breakage == "drop_matchers":
        del bad["matchers"]
    elif breakage == "bad_fmr":
        m["calibration"]["thresholds"][0]["target_fmr"] = 2.0
    elif breakage == "negative_count":
        m["leakage"][0]["synthetic_matched"] = -1
    elif breakage == "nan_auc":
        m["membership"]["results"][0]["auc"] = None
    elif breakage == "unknown_field":  # every field must be declared (and so described)
        m["leakage"][0]["tau"] = -0.5
    else:
        m["unit"] = "negated distance"
    with pytest.raises(jsonschema.ValidationError):
        writer.validate(bad)


def test_gallery_thumbnails_for_members_and_control_do_not_collide(tmp_path, rng):
    img = (rng.random((25, 25, 3)) * 255).astype(np.uint8)
    items = [{"matcher": "m", "role": role, "rank": 1, "syn_idx": 0, "real_idx": 0} for role in ("members",
                                                                                               "nonmembers")]
    out = writer.write_gallery(str(tmp_path), items, lambda i: img, lambda i: img)
    paths = {o["real_thumb"] for o in out} | {o["syn_thumb"] for o in out}
    assert len(paths) == 4
    for p in paths:
        assert Image.open(tmp_path / p).size == (100, 100)


def test_image_names_relative_to_the_dataset_root(tmp_path):
    root = tmp_path / "data"
    es = types.SimpleNamespace(root=str(root), describe=lambda row: str(root / "id7" / f"{row}.png"))
    assert assemble.image_name(es, 3) == ("id7/3.png", str(root / "id7" / "3.png"))
    outside = types.SimpleNamespace(root=str(root), describe=lambda row: str(tmp_path / "datafile.png"))
    assert assemble.image_name(outside, 0) == (str(tmp_path / "datafile.png"),) * 2  # not under the root: as is
    no_root = types.SimpleNamespace(root=None, describe=lambda row: "record 4")
    assert assemble.image_name(no_root, 4) == ("record 4", "record 4")
    assert html.titled("a.png", "/x/a.png") == '<span title="/x/a.png">a.png</span>'


def test_to_jsonable_and_pairs_csv(tmp_path):
    out = to_jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": np.bool_(True)})
    assert out == {"a": 1.5, "b": [1, 2], "c": None, "d": True}
    blocks = [{"matcher": "m", "role": "members", "unit": "cosine", "rank": [1, 2], "syn_id": ["a,\"b\"", "c"],
               "score_native": np.asarray([0.3, 0.25])},
              {"matcher": "m", "role": "nonmembers", "unit": "cosine", "rank": np.asarray([1]), "syn_id": ["d"],
               "score_native": [0.5]}]
    n = writer.write_pairs_csv(str(tmp_path / "p.csv"), blocks)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert n == 3 and rows[0]["syn_id"] == "a,\"b\"" and rows[0]["score_native"] == "0.3"
    assert rows[0]["role"] == "members" and rows[0]["unit"] == "cosine"
    assert [r["rank"] for r in rows] == ["1", "2", "1"] and rows[2]["role"] == "nonmembers"
    assert rows[1]["score_native"] == "0.25" and rows[1]["real_id"] == ""


def test_pairs_csv_parses_as_the_csv_module_writes(rng, tmp_path):
    """Against csv.writer (the independent reference) on random blocks with names holding commas, quotes, line
    breaks, non-ASCII and undecodable bytes: the same fields, and per-row scores equal as float32."""
    import itertools

    alphabet = list("ab,\"\n\r é/_ ") + ["\udcff"]
    names = ["".join(rng.choice(alphabet, int(rng.integers(0, 8)))) for _ in range(40)]
    blocks = []
    for b in range(3):
        n = int(rng.integers(0, 50))
        blocks.append({"matcher": "m,1", "unit": "cosine", "role": "members", "threshold": 'FMR "1e-3"',
                       "target_fmr": None if b == 1 else 1e-3, "tau_native": float(rng.random()),
                       "rank": np.arange(1, n + 1), "syn_idx": rng.integers(0, 99, n),
                       "syn_id": [names[i] for i in rng.integers(0, 40, n)], "syn_label": rng.integers(-1, 5, n),
                       "real_idx": rng.integers(0, 99, n), "real_id": [names[i] for i in rng.integers(0, 40, n)],
                       "real_label": rng.integers(0, 5, n),
                       "score_native": rng.normal(size=n).astype(np.float32).astype(np.float64)})
    n = writer.write_pairs_csv(str(tmp_path / "p.csv"), blocks)
    ref = io.StringIO(newline="")
    w = csv.writer(ref)
    w.writerow(writer.PAIRS_COLUMNS)
    for blk in blocks:
        rows = len(blk["rank"])
        cols = [v if isinstance(v, (list, np.ndarray)) else itertools.repeat(v, rows)
                for v in (blk[k] for k in writer.PAIRS_COLUMNS)]
        cols = [[writer.utf8_text(x) for x in c] if k in ("syn_id", "real_id") else
                (c.tolist() if isinstance(c, np.ndarray) else c) for k, c in zip(writer.PAIRS_COLUMNS, cols)]
        w.writerows(zip(*cols))
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        got = list(csv.reader(f))
    want = list(csv.reader(io.StringIO(ref.getvalue(), newline="")))
    assert n == sum(len(b["rank"]) for b in blocks) == len(got) - 1 and len(got) == len(want)
    score = writer.PAIRS_COLUMNS.index("score_native")
    for g, r in zip(got, want):
        assert g[:score] == r[:score] and len(g) == len(r)
        if g is not got[0]:
            assert np.float32(float(g[score])) == np.float32(float(r[score]))


def _overlaps(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_plots_render_with_legends_off_the_axes(rng, tmp_path, monkeypatch):
    figures = []
    save = plots_lib._save

    def keep(fig, path):
        fig.canvas.draw()
        ax = fig.axes[0]
        figures.append((ax.get_window_extent(), ax.get_legend().get_window_extent(),
                        ax.xaxis.label.get_window_extent()))
        return save(fig, path)

    monkeypatch.setattr(plots_lib, "_save", keep)
    edges = np.linspace(-1, 0, 65)
    p1 = plots_lib.score_histograms(str(tmp_path / "h.png"), "m", "euclidean",
                            [("a", edges, rng.integers(0, 50, 64)), ("b", edges, rng.integers(0, 50, 64))],
                            [("FMR 0.01", 0.5), ("m published 0.6", 0.6)])
    mem = membership.membership_metrics(rng.normal(1, 1, 50), rng.normal(0, 1, 50))
    p2 = plots_lib.roc_loglog(str(tmp_path / "r.png"), "m", [("max", mem.roc.fpr, mem.roc.tpr, mem.auc)], n_nonmembers=50)
    p3 = plots_lib.tails(str(tmp_path / "t.png"), "m", [{"source": "calibrated", "fmr": 0.01, "real_vs_real_tail": 0.01,
                                                "real_vs_generated_tail": 0.05},
                                               {"source": "m published 0.6", "fmr": 0.2, "real_vs_real_tail": 0.2,
                                                "real_vs_generated_tail": 0.3}])
    for p in (p1, p2, p3):
        im = np.asarray(Image.open(p).convert("L"), np.float32)
        assert im.shape[0] > 100 and im.std() > 5  # not blank
    assert len(figures) == 3
    for axes_box, legend_box, xlabel_box in figures:
        assert not _overlaps(axes_box, legend_box)  # the legend never covers the data (or the thresholds)
        assert not _overlaps(xlabel_box, legend_box)
        assert legend_box.y1 <= axes_box.y0  # it sits below the axes


def test_fmt():
    assert html.fmt(None) == "–" and html.fmt(1234) == "1,234" and html.fmt(0.5) == "0.5000" and html.fmt(1e-5) == "1.000e-05"
    assert html.pct(0.43) == "43.0%" and html.pct(0.0001) == "0.01%" and html.pct(None) == "n/a"
    assert html.rate_text(86, 200, [0.36, 0.502]) == "86 / 200 = 43.0% [36.0%, 50.2%]"
