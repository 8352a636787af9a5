"""index.html: the leakage card of each matcher at the top, what was given, the detailed tables, plots, and the
galleries of the top pairs (against the members, and against the non-member control). Every piece of text is
escaped; every table column is defined (header tooltip and a legend under the table).

The page is static (relative links to ``plots/`` and ``thumbs/`` next to it); a tiny inline script only records
what rendered (``<body data-images-loaded=... data-cards-rendered=...>``) so a headless browser test can check
that the cards and both galleries really render. How to read the page: docs/report.md.
"""

from __future__ import annotations

import html
import json
import math

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1250px}
h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 .3em}
td,th{border:1px solid #bbb;padding:3px 7px;font-size:13px;text-align:right}
th{background:#eee;cursor:help}td.l,th.l{text-align:left}
.demo{background:#fff3cd;border:1px solid #e0c060;padding:.6em;margin:.6em 0}
.loud{background:#f8d7da;border:2px solid #c0392b;padding:.6em;margin:.6em 0;font-weight:bold}
tr.loud td{background:#f8d7da}
.note{color:#555;font-size:13px}.legend{color:#555;font-size:12px;margin:.1em 0 1.2em;max-width:1200px}
.legend b{color:#333}.warn{color:#c0392b}
.card{border:2px solid #888;border-radius:6px;padding:.4em 1em .8em;margin:1em 0}
.card h2{margin-top:.3em;border:none}
.card.detected{border-color:#c0392b;background:#fdf1f0}.card.not_significant{border-color:#4a7aa7;background:#f1f6fb}
.card.no_control{border-color:#c9a227;background:#fffaf0}
.verdict{font-size:20px;font-weight:bold}.card ul{margin:.2em 0;font-size:13px}.card p{font-size:14px}
.galleries{display:grid;grid-template-columns:1fr 1fr;gap:18px;align-items:start}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
figure.pair{border:1px solid #ccc;margin:0;padding:5px;background:#fafafa;width:200px}
figure.pair img{width:88px;height:88px;image-rendering:pixelated;border:1px solid #999}
figure.noimg{width:280px}
figcaption{font-size:11px;overflow-wrap:anywhere}figcaption span[title]{border-bottom:1px dotted #888}
.plots{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}img.plot{max-width:620px;border:1px solid #ddd}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  function loaded(sel) {
    var ok = 0;
    document.querySelectorAll(sel).forEach(function (im) { if (im.complete && im.naturalWidth > 0) ok++; });
    return String(ok);
  }
  var b = document.body;
  b.setAttribute('data-images-loaded', loaded('figure.pair img'));
  b.setAttribute('data-member-images-loaded', loaded('.gallery[data-role="members"] figure.pair img'));
  b.setAttribute('data-control-images-loaded', loaded('.gallery[data-role="nonmembers"] figure.pair img'));
  b.setAttribute('data-plots-loaded', loaded('img.plot'));
  b.setAttribute('data-pairs-rendered', String(document.querySelectorAll('figure.pair').length));
  b.setAttribute('data-cards-rendered', String(document.querySelectorAll('section.card').length));
});
"""

#: What every table column means (header tooltip and the legend under each table).
GLOSSARY = {
    "role": "synthetic: the images audited; members: the real images the generator was trained on; non-members: "
            "held-out real images it never saw (the control)",
    "given path": "the path exactly as given on the command line or in the config",
    "kind": "how the data was read (image_folder, flat_folder, recordio, tfds, store, embeddings, ...)",
    "records": "records listed in the dataset",
    "audited": "records embedded and audited (records minus rejects)",
    "rejected": "records that could not be decoded or embedded (listed in the embedding store)",
    "labelled": "whether identity labels were used, and how many identities they hold",
    "colour order": "the stored pixels' colour order as resolved, and why",
    "face check": "MTCNN on a seeded sample: the share of images that are one face near the matcher's alignment "
                  "template (warn/fail: the audit may not be measuring faces at all)",
    "name / expectation": "the config's short name; with a preset, its description is what THE PRESET EXPECTS, "
                          "not a statement about the data given",
    "threshold": "FMR x: tau calibrated so that a share x of real impostor pairs (different people) match; a named "
                 "threshold is a fixed published one",
    "tau": "the threshold in the matcher's unit: a pair matches when its similarity is above it (cosine) or its "
           "distance below it (distance)",
    "synthetic matched": "synthetic images whose nearest member matches at this threshold: count / total = share "
                         "[confidence interval]",
    "members matched": "member (training) images matched by at least one synthetic image: count / total = share "
                       "[interval]",
    "non-members matched (control)": "the same for held-out real images the generator never saw: without leakage "
                                     "about as many as the members",
    "identities matched": "member identities with at least one matched image (labelled sets)",
    "members - control": "difference of the members' and non-members' matched shares, with its Newcombe interval",
    "test p": "one-sided exact test (Boschloo or Fisher) that members are matched more often than non-members; "
              "significant when p <= alpha (Bonferroni over the thresholds)",
    "epsilon >=": "epsilon lower bound of matching at this threshold used as a membership test (docs/statistics.md)",
    "impostors allowed": "floor(target FMR x impostor pairs): impostor pairs allowed above tau",
    "impostors above": "calibration impostor pairs scoring above tau (exact)",
    "achieved FMR": "impostors above / impostor pairs: the false match rate tau really has on the calibration set",
    "FNMR": "genuine (same-person) calibration pairs that do NOT match at tau",
    "achieved FMR interval": "identity-bootstrap interval of the achieved FMR (impostor pairs share identities, so "
                             "no binomial interval applies); needs a labelled calibration set and report.bootstrap",
    "of": "the total the count before it is out of",
    "real set": "the real images compared with: members (leakage) or non-members (the control: images the generator "
                "never saw)",
    "share": "count / total",
    "real images matched": "images of this real set matched by at least one synthetic image",
    "real identities matched": "identities of this real set with a matched image (labelled sets)",
    "pairs": "matching (synthetic, real) pairs listed in pairs.csv",
    "possibly truncated (syn/real)": "queries whose k-th neighbour still matches, so more pairs may exist than "
                                     "listed (raise attack.k); synthetic / real queries",
    "score": "the membership attack score of a real image: its similarity to the synthetic set",
    "members": "member images scored",
    "non-members": "non-member images scored",
    "AUC": "area under the membership ROC: the probability that a member scores above a non-member (0.5 = chance)",
    "balanced accuracy": "best (TPR + TNR) / 2 over all thresholds (chosen on the same scores: optimistic)",
    "TPR @ FPR": "share of members found while calling the given share of non-members members; n/a when there are "
                 "too few non-members to resolve that FPR",
    "lowest resolvable FPR": "1 / non-members: no smaller FPR can be told from 0",
    "same-label accepted": "same-label (real class c vs synthetic class c) pairs matching at tau",
    "different-label accepted": "different-label pairs matching at tau",
    "real-vs-real FNMR": "the calibration's genuine FNMR at tau, for comparison",
    "real-vs-real tail": "share of real impostor pairs matching (the achieved FMR)",
    "real-vs-generated tail": "share of all member x synthetic pairs matching",
    "R-G pairs above": "member x synthetic pairs matching (exact)",
    "excess ratio": "real-vs-generated tail / real-vs-real tail: about 1 without leakage, far above 1 when generated "
                    "faces sit closer to members than unrelated real faces do",
    "class": "synthetic class label", "identity": "real identity label",
    "images": "images of this class / identity", "images matched": "of them, images with a match",
    "synthetic images matching": "distinct synthetic images matching this identity",
    "best score": "the most similar matching pair's score (matcher's unit)",
    "matcher A": "first matcher", "matcher B": "second matcher", "flagged by A": "items flagged by A",
    "flagged by B": "items flagged by B", "both": "items flagged by both",
    "Jaccard": "both / flagged by either (1 = the matchers agree exactly)",
    "package": "Python package", "version": "its version",
    "statistic": "a count of pairs or a mean", "genuine (same label)": "real class c vs synthetic class c",
    "impostor (different label)": "real vs synthetic of different labels", "EER": "equal error rate (exact)",
    "d'": "decidability: separation of the two distributions in pooled standard deviations",
    "rank-1 identification": "share of synthetic classes whose mean template is nearest to its own real class",
}


class Raw(str):
    """Markup built here from escaped parts: inserted into a cell as is."""


def e(x) -> str:
    """Escaped text of any value (numbers formatted compactly)."""
    return html.escape(fmt(x), quote=True)


def fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if x == 0:
            return "0"
        a = abs(x)
        return f"{x:.3e}" if (a < 1e-3 or a >= 1e6) else f"{x:.4f}"
    return str(x)


def pct(x: float | None) -> str:
    """A share as a percentage, with more digits when it is small."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0%"
    return f"{100 * x:.2g}%" if abs(x) < 0.001 else f"{100 * x:.1f}%"


def ci_text(ci) -> str:
    return f"[{pct(ci[0])}, {pct(ci[1])}]" if ci else ""


def rate_text(count, total, ci=None) -> str:
    """'86 / 200 = 43.0% [36.0%, 50.2%]' (or 'n/a')."""
    if count is None or total is None:
        return "n/a"
    if not total:
        return f"{count:,} / 0"
    return f"{count:,} / {total:,} = {pct(count / total)} {ci_text(ci)}".strip()


def _cell(c) -> str:
    return str(c) if isinstance(c, Raw) else e(c)


def table(headers: list[str], rows: list[list], left: int = 1, unit: str | None = None, cls: str = "",
          row_classes: list[str] | None = None) -> str:
    """A table with every column defined: a tooltip on each header and a legend under the table (GLOSSARY).

    The first ``left`` columns and every long text cell are left-aligned, numbers right-aligned. ``unit`` is
    appended to the definition of columns in the matcher's unit (tau, scores)."""
    def definition(h):
        key = h.split(" (")[0] if h not in GLOSSARY else h
        if key.startswith("TPR @ FPR"):
            key = "TPR @ FPR"
        d = GLOSSARY.get(key) or GLOSSARY.get(h)
        if d and unit and key in ("tau", "best score"):
            d = f"{d}; in {unit}"
        return d

    ths = []
    legend = []
    for i, h in enumerate(headers):
        d = definition(h)
        tip = f' title="{html.escape(d, quote=True)}"' if d else ""
        ths.append(f'<th class="{"l" if i < left else ""}"{tip}>{e(h)}</th>')
        if d and not any(d == x for _, x in legend):  # "TPR @ FPR 0.001", "TPR @ FPR 0.01": one entry
            legend.append((h if not h.startswith("TPR @ FPR") else "TPR @ FPR", d))

    def align(i, c):
        return "l" if i < left or isinstance(c, Raw) or (isinstance(c, str) and len(c) > 12) else ""

    body = []
    for j, r in enumerate(rows):
        rc = row_classes[j] if row_classes and row_classes[j] else ""
        body.append(f"<tr class='{rc}'>" + "".join(f'<td class="{align(i, c)}">{_cell(c)}</td>'
                                                  for i, c in enumerate(r)) + "</tr>")
    leg = ("<p class='legend'>" + "; ".join(f"<b>{e(h)}</b>: {e(d)}" for h, d in legend) + ".</p>") if legend \
        else ""
    return f"<table class='{cls}'><tr>{''.join(ths)}</tr>{''.join(body)}</table>{leg}"


def titled(short: str, full: str) -> Raw:
    """A name with its full path on hover."""
    if short == full:
        return Raw(e(short))
    return Raw(f"<span title=\"{e(full)}\">{e(short)}</span>")


# ---------------------------------------------------------------------------------------------------- the card

_VERDICT_CLASS = {"leakage detected": "detected", "no significant excess over the non-member control":
                  "not_significant"}


def _card(m: dict) -> str:
    c = m.get("card")
    if not c:
        return ""
    cls = _VERDICT_CLASS.get(c["verdict"], "no_control")
    unit = m["native_unit"]
    out = [f"<section class='card {cls}' data-matcher='{e(m['name'])}' data-verdict='{e(c['verdict'])}'>",
           f"<h2>{e(m['name'])}: <span class='verdict'>{e(c['verdict'])}</span></h2>",
           f"<p>{e(c['verdict_detail'])}</p>"]
    conf = f"{100 * c['confidence']:g}%"
    rows = []
    for t in c["thresholds"]:
        mvc = t.get("member_vs_control") or {}
        eps = (t.get("epsilon_lower_bound") or {}).get("epsilon_lower_bound")
        diff = "n/a"
        if mvc.get("rate_difference") is not None:
            lo, hi = mvc["rate_difference_ci"] or (None, None)
            diff = f"{100 * mvc['rate_difference']:+.1f}%" + (f" [{100 * lo:+.1f}%, {100 * hi:+.1f}%]"
                                                                if lo is not None else "")
        test = "n/a (no control)"
        if mvc.get("p_value") is not None:
            test = (f"{mvc['test']} p = {mvc['p_value']:.2g} " + ("<= " if mvc.get("rejected") else "> ")
                    + f"{mvc['alpha']:.3g}" + (" (significant)" if mvc.get("rejected") else ""))
        elif t.get("nonmembers_matched") is not None:
            test = f"n/a ({mvc.get('reason') or 'no test'})"
        rows.append([t["threshold"], t["tau_native"],
                     rate_text(t["synthetic_matched"], t["n_synthetic"], t["synthetic_matched_ci"]),
                     rate_text(t["real_images_matched"], t["n_real"], t["real_images_matched_ci"]),
                     rate_text(t["nonmembers_matched"], t["n_nonmembers"], t["nonmembers_matched_ci"])
                     if t.get("n_nonmembers") is not None else "n/a (no non-members given)",
                     rate_text(t["identities_matched"], t["n_identities"], t["identities_matched_ci"])
                     if t.get("n_identities") is not None else "n/a (unlabelled)",
                     diff, test, f"{eps:.3g}" if eps is not None else "none"])
    out.append(f"<p class='note'>Key figures with their {conf} intervals (Clopper-Pearson for shares; "
               f"docs/statistics.md). tau in {e(unit)}.</p>")
    out.append(table(["threshold", "tau", "synthetic matched", "members matched", "non-members matched (control)",
                      "identities matched", "members - control", "test p", "epsilon >="], rows, left=1, unit=unit,
                     cls="cardtable"))
    mem = c.get("membership")
    if mem:
        auc = f"{mem['auc']:.3f}" + (f" [{mem['auc_ci'][0]:.3f}, {mem['auc_ci'][1]:.3f}]" if mem.get("auc_ci")
                                     else f" (no interval: {mem.get('auc_ci_reason')})")
        tprs = []
        for p in mem["tpr_at_fpr"]:
            if p.get("tpr") is None:
                tprs.append(f"TPR at FPR {p['target_fpr']:g}: n/a ({p.get('reason')})")
            else:
                tprs.append(f"TPR at FPR {p['target_fpr']:g}: {pct(p['tpr'])} {ci_text(p.get('tpr_ci'))}")
        boot = mem.get("bootstrap")
        boot_txt = (f" Identity bootstrap ({boot['replicates']:,} replicates): AUC "
                    f"[{boot['auc_ci'][0]:.3f}, {boot['auc_ci'][1]:.3f}].") if boot and boot.get("auc_ci") else ""
        out.append(f"<p data-figure='membership'><b>Membership</b> (a real image's max similarity to any synthetic "
                   f"image; {mem['n_members']:,} members vs {mem['n_nonmembers']:,} non-members): AUC {e(auc)} "
                   f"({e(conf)}, {e(mem.get('auc_method') or '')}); " + e("; ".join(tprs)) + "." + e(boot_txt)
                   + "</p>")
    else:
        out.append("<p data-figure='membership'><b>Membership</b>: n/a (no non-members given).</p>")
    if c.get("epsilon_lower_bound") is not None:
        out.append(f"<p data-figure='epsilon'><b>Privacy</b>: epsilon &gt;= {c['epsilon_lower_bound']:.3g} "
                   f"(delta {c['delta']:g}, {e(conf)} confidence; {e(c.get('epsilon_at') or '')}). "
                   f"{e(c['epsilon_meaning'])}</p>")
    else:
        out.append(f"<p data-figure='epsilon'><b>Privacy</b>: no epsilon lower bound "
                   f"({e(c.get('epsilon_reason') or 'none')}). {e(c['epsilon_meaning'])}</p>")
    if c.get("cannot_say"):
        out.append("<p><b>What the numbers cannot say</b></p><ul class='cannot'>"
                   + "".join(f"<li>{e(x)}</li>" for x in c["cannot_say"]) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------- data


def _face_cell(fc: dict | None) -> tuple[str, bool]:
    """(the face check in one cell, whether it is loud)."""
    if not fc:
        return "not run", False
    if fc.get("not_run"):
        return f"not run: {fc['not_run']}", False
    parts, loud = [], False
    for t in fc["templates"]:
        if t.get("not_run"):
            parts.append(f"{t['template']}: not run ({t['not_run']})")
            continue
        v = t["verdict"]
        loud = loud or v in ("warn", "fail")
        parts.append(f"{v.upper() if v != 'ok' else v}: {t['near_template']}/{t['readable']} near the "
                     f"{t['template']} template ({pct(t['near_template_share'])}); faces in "
                     f"{pct(t['faces_found_share'])}")
    return "; ".join(parts), loud


def _data(report: dict) -> str:
    ds = report["datasets"]
    rows, classes = [], []
    for role in ("synthetic", "members", "nonmembers"):
        d = ds.get(role)
        if d is None:
            rows.append(["non-members" if role == "nonmembers" else role, "(none given)", "", None, None, None,
                         None, "", "", "no held-out real images: no control, no membership metrics"])
            classes.append("")
            continue
        face, loud = _face_cell(d.get("face_check"))
        lab = ("yes" + (f", {d['identities']:,} identities" if d.get("identities") is not None else "")) \
            if d["labelled"] else "no"
        colour = "–" if not d.get("channel_order") else (
            d["channel_order"] + (f" ({d['channel_order_reason']})" if d.get("channel_order_reason") else ""))
        if d.get("description"):
            src = d.get("description_from") or "config"
            expect = (f"{d['name']}; {src} expects: {d['description']}" if src.startswith("preset")
                      else f"{d['name']}; described as: {d['description']}")
        else:
            expect = d["name"]
        rows.append([role.replace("nonmembers", "non-members"), d["path"], d["kind"], d["records"], d["n_images"],
                     d["rejected"], lab, colour, face, expect])
        classes.append("loud" if loud else "")
    return table(["role", "given path", "kind", "records", "audited", "rejected", "labelled", "colour order",
                  "face check", "name / expectation"], rows, left=3, row_classes=classes)


def _face_warnings(report: dict) -> str:
    out = []
    for role in ("synthetic", "members", "nonmembers"):
        d = report["datasets"].get(role)
        for t in ((d or {}).get("face_check") or {}).get("templates", []):
            if t.get("verdict") in ("warn", "fail"):
                out.append(f"<div class='loud' data-face-check='{e(t['verdict'])}'>FACE CHECK "
                           f"{e(t['verdict'].upper())} for the {e(role)} images ({e(d['path'])}): "
                           f"{e(t.get('summary') or '')}. If these are not aligned face images, the audit below "
                           f"measures nothing about identity leakage.</div>")
    return "\n".join(out)


def _colour_warnings(report: dict) -> str:
    """A loud line per dataset whose colour-order check found the other order clearly better (switched by auto,
    or only warned about when the order was set explicitly)."""
    out = []
    for role in ("synthetic", "members", "nonmembers"):
        d = report["datasets"].get(role) or {}
        c = d.get("channel_order_check") or {}
        if not c.get("other_clearly_better"):
            continue
        if c.get("applied") == c.get("other_order"):
            act = f"channel_order=auto: the audit used {c['other_order']}"
        else:
            act = (f"you set channel_order={c.get('requested')}: the audit kept {c.get('applied')}; set "
                   f"channel_order={c['other_order']} if the release stores {c['other_order']}")
        out.append(f"<div class='loud' data-colour-order='{e(c['other_order'])}'>COLOUR ORDER of the {e(role)} "
                   f"images ({e(d.get('path'))}): {e(c.get('reading'))}; {e(act)}.</div>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ the details


def _matcher_details(m: dict) -> str:
    unit = m["native_unit"]
    out = [f"<h2 id='matcher-{e(m['name'])}'>Matcher {e(m['name'])}: details</h2>",
           (f"<p class='note'>Every score and threshold of this matcher is in <b>{e(unit)}</b>. "
            f"Weights: {e(json.dumps(m['weights'], sort_keys=True))}</p>")]
    cal = m["calibration"]
    out.append(f"<h3>Thresholds</h3><p class='note'>{e(cal['method'])}. {e(cal.get('note') or '')} "
               f"Impostor pairs: {e(cal['n_impostor_pairs'])}; genuine pairs: {e(cal['n_genuine_pairs'])}; "
               f"EER: {e(cal['eer'])}; d': {e(cal.get('decidability'))}.</p>")
    card_thresholds = (m.get("card") or {}).get("thresholds") or []

    def fmr_interval(i):
        ct = card_thresholds[i] if i < len(card_thresholds) else {}
        ci = ct.get("achieved_fmr_ci")
        return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "n/a (needs labels and --config.report.bootstrap)"
    out.append(table(["threshold", "tau", "impostors allowed", "impostors above", "achieved FMR",
                      "achieved FMR interval", "FNMR"],
                     [[t["threshold"], t["tau_native"], t["impostors_allowed"], t["impostors_above"],
                       t["achieved_fmr"], fmr_interval(i), t["fnmr"]] for i, t in enumerate(cal["thresholds"])],
                     unit=unit))
    out.append("<h3>Leakage: synthetic vs members, and the control</h3>")
    ctrl = m.get("leakage_control") or []
    headers = ["threshold", "real set", "synthetic matched", "of", "share", "real images matched", "of",
               "real identities matched", "of", "pairs", "possibly truncated (syn/real)"]
    rows = []
    for lk in m["leakage"] + ctrl:
        rows.append([lk["threshold"], "non-members (control)" if lk["real_set"] == "nonmembers" else "members",
                     lk["synthetic_matched"], lk["n_synthetic"], pct(lk["synthetic_matched_rate"]),
                     lk["real_images_matched"], lk["n_real"], lk["real_identities_matched"],
                     lk.get("n_real_identities"), lk["n_pairs"],
                     f"{lk['truncated_synthetic_queries']}/{lk['truncated_real_queries']}"])
    out.append(table(headers, rows, left=2, unit=unit))
    if not ctrl:
        out.append("<p class='note'>No control: without non-members nothing separates members matched because they "
                   "leaked from members matched by chance look-alikes.</p>")
    for lk in m["leakage"][:1]:
        for key, what in (("per_synthetic_class_top", "Synthetic classes with most matched images"),
                          ("per_real_identity_top", "Real identities with most matched images")):
            rows_g = lk.get(key)
            if rows_g:
                out.append(f"<p class='note'>{e(what)} ({e(lk['threshold'])}):</p>")
                cols = list(rows_g[0].keys())
                out.append(table([c.replace("_native", "").replace("_", " ") for c in cols],
                                 [[r.get(c) for c in cols] for r in rows_g], unit=unit))
    mem = m["membership"]
    out.append("<h3>Membership inference</h3>")
    if not mem["available"]:
        out.append(f"<p><b>Not computed:</b> {e(mem['reason'])}</p>")
    else:
        out.append(f"<p class='note'>{e(mem['reason'])} The card above gives the AUC's interval.</p>")
        fprs = [p["target_fpr"] for p in mem["results"][0]["tpr_at_fpr"]]

        def tpr_cell(p):
            return f"n/a ({p['reason']})" if p["tpr"] is None else p["tpr"]
        out.append(table(["score", "members", "non-members", "AUC", "balanced accuracy"]
                         + [f"TPR @ FPR {f:g}" for f in fprs] + ["lowest resolvable FPR"],
                         [[r["score"], r["n_members"], r["n_nonmembers"], r["auc"], r["balanced_accuracy"]]
                          + [tpr_cell(p) for p in r["tpr_at_fpr"]] + [r["lowest_resolvable_fpr"]]
                          for r in mem["results"]]))
    rel = m.get("identity_relation")
    if rel:
        out.append("<h3>Identity relation (same label: real class c vs synthetic class c)</h3>")
        out.append(table(["statistic", "genuine (same label)", "impostor (different label)", "EER", "d'",
                          "rank-1 identification"],
                         [["pairs", rel["n_genuine_pairs"], rel["n_impostor_pairs"], rel["eer"],
                           rel["decidability"], (rel.get("rank1_identification") or {}).get("rank1")],
                          [f"mean ({m['unit']})", rel.get("genuine_mean_native"), rel.get("impostor_mean_native"),
                           None, None, None]]))
        out.append(table(["threshold", "same-label accepted", "different-label accepted", "real-vs-real FNMR"],
                         [[r["threshold"], r["same_label_accepted"], r["different_label_accepted"],
                           r["real_vs_real_fnmr"]] for r in rel["at_thresholds"]]))
    rg = m["distributions"]["real_vs_generated"]
    out.append("<h3>Score distributions: real vs generated</h3>")
    out.append(table(["threshold", "real-vs-real tail", "real-vs-generated tail", "R-G pairs above", "excess ratio"],
                     [[t["threshold"], t["real_vs_real_tail"], t["real_vs_generated_tail"],
                       t["real_vs_generated_pairs_above"], t["excess_ratio"]] for t in rg["tails"]]))
    if m["plots"]:
        out.append("<div class='plots'>" + "".join(f"<img class='plot' alt='{e(name)}' src='{e(rel_path)}'>"
                                                   for name, rel_path in m["plots"].items()) + "</div>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- gallery


def _figure(g: dict) -> str:
    matched = g.get("matched_at") or []
    if isinstance(matched, str):
        matched = [matched] if matched else []
    match_txt = f" — matches at {', '.join(matched)}" if matched else " — no match at any threshold"
    syn_name, real_name = g.get("syn_name") or g["syn_id"], g.get("real_name") or g["real_id"]
    cap = (f"<figcaption>#{e(g['rank'])} {e(g.get('unit', 'score'))} {e(g['score_native'])}{e(match_txt)}<br>"
           f"syn: {titled(syn_name, g['syn_id'])}<br>real: {titled(real_name, g['real_id'])}"
           + "".join(f"<br><span class='warn'>{side} image unreadable now: {e(g[side + '_thumb_error'])}</span>"
                     for side in ("syn", "real") if g.get(side + "_thumb_error"))
           + "</figcaption>")
    if g.get("syn_thumb") and g.get("real_thumb"):
        imgs = (f"<img alt='synthetic {e(syn_name)}' title='{e(g['syn_id'])}' src='{e(g['syn_thumb'])}'> "
                f"<img alt='real {e(real_name)}' title='{e(g['real_id'])}' src='{e(g['real_thumb'])}'>")
        return f"<figure class='pair' data-rank='{e(g['rank'])}'>{imgs}{cap}</figure>"
    return f"<figure class='pair noimg' data-rank='{e(g['rank'])}'>{cap}</figure>"


def _galleries(report: dict) -> str:
    gal = report.get("gallery", [])
    out = [("<h2>Top pairs</h2><p class='note'>Per matcher: the synthetic images closest to a member (left: "
            "leakage) and, as the control, the synthetic images closest to a non-member (right: images the "
            "generator never saw). Near-copies on the left with nothing alike on the right are memorisation. "
            "Names are relative to each dataset's root (full path on hover). Every listed pair: "
            "<a href='pairs.csv'>pairs.csv</a>.</p>")]
    for m in report["matchers"]:
        mine = [g for g in gal if g["matcher"] == m["name"]]
        if not mine:
            continue
        no_images = not any(g.get("syn_thumb") for g in mine)
        out.append(f"<h3>{e(m['name'])}</h3>")
        if no_images:
            out.append("<p class='note'>No images: audited from embeddings (or the images are no longer where the "
                       "stores say), so the pairs are shown by name.</p>")
        out.append("<div class='galleries'>")
        for role, title in (("members", "against the members (leakage)"),
                            ("nonmembers", "against the non-members (control)")):
            items = [g for g in mine if g.get("role", "members") == role]
            out.append(f"<div><h4>{e(title)} ({len(items)})</h4>")
            if not items:
                out.append("<p class='note'>none: no non-members were given.</p>" if role == "nonmembers"
                           else "<p class='note'>none</p>")
            out.append(f"<div class='gallery' data-role='{role}'>" + "".join(_figure(g) for g in items)
                       + "</div></div>")
        out.append("</div>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------- page


def render(report: dict) -> str:
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(report['title'])}</title><style>{_CSS}</style></head><body>"]
    out.append(f"<h1>{e(report['title'])}</h1>")
    if report.get("demo"):
        out.append("<div class='demo'><b>This is the built-in DEMO</b>: a tiny generator trained on 50 small LFW "
                   "crops, audited with the real dlib matcher. It shows the method end to end; its numbers say "
                   "nothing about any published synthetic dataset.</div>")
    out.append(_face_warnings(report))
    out.append(_colour_warnings(report))
    if report.get("preset") and not report.get("demo"):
        out.append(f"<p class='note'>Config from preset <b>{e(report['preset'])}</b>: its dataset descriptions say "
                   "what that preset expects, not what the given paths hold (see the face check).</p>")
    if report.get("notes"):
        out.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    out.append("<h2>Leakage card</h2><p class='note'>How sure each finding is: the verdict, the key figures with "
               "intervals, the member-vs-control test, membership and the privacy bound, and what the numbers "
               "cannot say. Definitions: docs/statistics.md; reading this page: docs/report.md.</p>")
    for m in report["matchers"]:
        out.append(_card(m))
    out.append("<h2>Data as given</h2>")
    out.append(_data(report))
    cal = report["datasets"]["calibration"]
    out.append(f"<p class='note'>Calibration ({e(cal.get('source'))}): {e(cal.get('description', ''))}</p>")
    for m in report["matchers"]:
        out.append(_matcher_details(m))

    ag = report.get("agreement")
    if ag:
        out.append(f"<h2>Agreement between matchers (FMR {e(ag['fmr'])})</h2>")
        for key, title in (("synthetic_images", "flagged synthetic images"), ("pairs", "flagged pairs")):
            out.append(f"<p class='note'>{e(title)}</p>")
            out.append(table(["matcher A", "matcher B", "flagged by A", "flagged by B", "both", "Jaccard"],
                             [[r["matcher_a"], r["matcher_b"], r["flagged_a"], r["flagged_b"], r["both"],
                               r["jaccard"]] for r in ag[key]], left=2))
    rem = report.get("remedy")
    if rem:
        out.append(f"<h2>Filtered synthetic set</h2><p>Removing every synthetic image that matches a member "
                   f"under {e(rem['matcher'])} at FMR {e(rem['fmr'])}: kept {e(rem['kept'])}, removed "
                   f"{e(rem['removed'])}. List: <code>{e(rem['list_file'])}</code>"
                   + (f"; export: <code>{e(rem.get('export'))}</code> ({e(rem.get('exported', 0))} exported"
                      + (f", {e(rem['skipped'])} skipped: " + ", ".join(f"{e(k)} {e(v)}" for k, v in
                                                                     (rem.get("skip_reasons") or {}).items())
                         if rem.get("skipped") else "") + ")" if rem.get("export") else "") + "</p>")
    out.append(_galleries(report))
    out.append(f"<h2>Versions</h2>{table(['package', 'version'], [[k, v] for k, v in report['versions'].items()])}")
    out.append(f"<p class='note'>report schema {e(report['schema_version'])}; created {e(report['created_utc'])}; "
               "machine-readable: <a href='report.json'>report.json</a></p>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)
