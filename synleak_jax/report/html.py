"""index.html: summary tables, plots and a gallery of the top pairs. Every piece of text is escaped.

The page is static (relative links to ``plots/`` and ``thumbs/`` next to it); a tiny inline script only records
how many gallery images finished loading (``<body data-images-loaded=...>``) so a headless browser test can
check that the gallery really renders.
"""

from __future__ import annotations

import html
import json
import math

_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}.demo{background:#fff3cd;border:1px solid #e0c060;padding:.6em;margin:.6em 0}
.note{color:#555;font-size:13px}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.pair{border:1px solid #ccc;margin:0;padding:6px;background:#fafafa;width:220px}
figure.pair img{width:100px;height:100px;image-rendering:pixelated;border:1px solid #999}
figcaption{font-size:11px;word-break:break-all}img.plot{max-width:100%;border:1px solid #ddd;margin:4px}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure.pair img');
  var ok = 0;
  imgs.forEach(function (im) { if (im.complete && im.naturalWidth > 0) ok++; });
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-pairs-rendered', String(document.querySelectorAll('figure.pair').length));
});
"""


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


def table(headers: list[str], rows: list[list], left: int = 1) -> str:
    """A table; the first ``left`` columns and every text cell are left-aligned, numbers right-aligned."""
    h = "".join(f'<th class="{"l" if i < left else ""}">{e(c)}</th>' for i, c in enumerate(headers))

    def cls(i, c):
        return "l" if i < left or (isinstance(c, str) and len(c) > 12) else ""

    body = "".join("<tr>" + "".join(f'<td class="{cls(i, c)}">{e(c)}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _thr_label(t: dict) -> str:
    return f"FMR {t['fmr']:g}" if t.get("source", "calibrated") == "calibrated" else str(t["source"])


def render(report: dict) -> str:
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(report['title'])}</title><style>{_CSS}</style></head><body>"]
    out.append(f"<h1>{e(report['title'])}</h1>")
    if report.get("demo"):
        out.append("<div class='demo'><b>This is the built-in DEMO</b>: a tiny generator trained on 50 small LFW "
                   "crops, audited with the real dlib matcher. It shows the method end to end; its numbers say "
                   "nothing about any published synthetic dataset.</div>")
    if report.get("notes"):
        out.append("<ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    ds = report["datasets"]
    rows = []
    for role in ("synthetic", "members", "nonmembers"):
        d = ds.get(role)
        if d is None:
            rows.append([role, "(none)", None, None, "no held-out real images: membership metrics not computed"])
        else:
            rows.append([role, d["name"], d["n_images"], d["labelled"], d.get("description", "")])
    out.append("<h2>Data</h2>" + table(["role", "name", "images", "labelled", "description"], rows, left=2))
    out.append(f"<p class='note'>Calibration: {e(ds['calibration'].get('description', ''))}</p>")

    out.append("<h2>Summary</h2>")
    srows = []
    for m in report["matchers"]:
        ctrl = m.get("leakage_control_nonmembers") or []
        for i, lk in enumerate(m["leakage"]):
            mem = m["membership"]["results"][0] if m["membership"]["results"] else None
            c = ctrl[i] if i < len(ctrl) else None
            srows.append([m["name"], _thr_label(lk), lk["tau_native"], lk["synthetic_matched"],
                          lk["synthetic_matched_fraction"],
                          f"{lk['real_images_matched']:,} / {lk['n_real']:,}",
                          f"{c['real_images_matched']:,} / {c['n_real']:,}" if c else None,
                          lk["real_identities_matched"], lk["n_pairs"], mem["auc"] if mem else None])
    out.append(table(["matcher", "threshold", "tau (native)", "synthetic matched", "share", "members matched",
                      "non-members matched (control)", "real identities matched", "pairs", "membership AUC"],
                     srows, left=2))

    for m in report["matchers"]:
        out.append(f"<h2>Matcher {e(m['name'])}</h2><p class='note'>Scores in {e(m['native_unit'])}. "
                   f"Weights: {e(json.dumps(m['weights'], sort_keys=True))}</p>")
        cal = m["calibration"]
        out.append(f"<h3>Thresholds</h3><p class='note'>{e(cal['method'])}. {e(cal.get('note', ''))} "
                   f"Impostor pairs: {e(cal['n_impostor_pairs'])}; genuine pairs: {e(cal['n_genuine_pairs'])}; "
                   f"EER: {e(cal['eer'])}; d': {e(cal.get('decidability'))}.</p>")
        out.append(table(["threshold", "tau (native)", "impostors allowed", "impostors above", "achieved FMR",
                          "FNMR"], [[_thr_label(t), t["tau_native"], t["impostors_allowed"], t["impostors_above"],
                                     t["achieved_fmr"], t["fnmr"]] for t in cal["thresholds"]]))
        out.append("<h3>Leakage (synthetic vs members)</h3>")
        out.append(table(["threshold", "synthetic matched", "of", "real images matched", "of",
                          "real identities matched", "of", "pairs", "possibly truncated queries (syn/real)"],
                         [[_thr_label(lk), lk["synthetic_matched"], lk["n_synthetic"], lk["real_images_matched"],
                           lk["n_real"], lk["real_identities_matched"], lk.get("real_identities_total"),
                           lk["n_pairs"], f"{lk['truncated_synthetic_queries']}/{lk['truncated_real_queries']}"]
                          for lk in m["leakage"]]))
        ctrl = m.get("leakage_control_nonmembers") or []
        if ctrl:
            out.append("<p class='note'>Control: the same counts against the held-out non-members (images the "
                       "generator never saw). Without leakage members and non-members are matched about equally "
                       "often.</p>")
            out.append(table(["threshold", "synthetic matching a non-member", "of", "non-members matched", "of",
                              "pairs"],
                             [[_thr_label(lk), lk["synthetic_matched"], lk["n_synthetic"], lk["real_images_matched"],
                               lk["n_real"], lk["n_pairs"]] for lk in ctrl]))
        for lk in m["leakage"][:1]:
            if lk.get("per_synthetic_class_top"):
                out.append("<p class='note'>Synthetic classes with most matched images "
                           f"({e(_thr_label(lk))}):</p>")
                pc = lk["per_synthetic_class_top"]
                out.append(table(list(pc[0].keys()), [list(r.values()) for r in pc]))
            if lk.get("per_real_identity_top"):
                out.append(f"<p class='note'>Real identities with most matched images ({e(_thr_label(lk))}):</p>")
                pr = lk["per_real_identity_top"]
                out.append(table(list(pr[0].keys()), [list(r.values()) for r in pr]))
        mem = m["membership"]
        out.append("<h3>Membership inference</h3>")
        if not mem["available"]:
            out.append(f"<p><b>Not computed:</b> {e(mem['reason'])}</p>")
        else:
            out.append(f"<p class='note'>{e(mem['reason'])}</p>")
            fprs = list(mem["results"][0]["tpr_at_fpr"].keys())
            out.append(table(["score", "members", "non-members", "AUC", "balanced accuracy"]
                             + [f"TPR @ FPR {f}" for f in fprs] + ["lowest resolvable FPR"],
                             [[r["score"], r["n_members"], r["n_nonmembers"], r["auc"], r["balanced_accuracy"]]
                              + [r["tpr_at_fpr"][f] for f in fprs] + [r.get("lowest_resolvable_fpr")]
                              for r in mem["results"]]))
        rel = m.get("identity_relation")
        if rel:
            out.append("<h3>Identity relation (same label: real class c vs synthetic class c)</h3>")
            out.append(table(["pairs", "genuine (same label)", "impostor (different label)", "EER", "d'",
                              "rank-1 identification"],
                             [["count", rel["n_genuine_pairs"], rel["n_impostor_pairs"], rel["eer"],
                               rel["decidability"], (rel.get("rank1_identification") or {}).get("rank1")],
                              ["mean (native)", rel["genuine_mean"], rel["impostor_mean"], None, None, None]]))
            out.append(table(["threshold", "same-label accepted", "different-label accepted",
                              "real-vs-real FNMR"],
                             [[_thr_label(r), r["same_label_accepted"], r["different_label_accepted"],
                               r["real_vs_real_fnmr"]] for r in rel["at_thresholds"]]))
        rg = m["distributions"]["real_vs_generated"]
        out.append("<h3>Score distributions: real vs generated</h3>")
        out.append(table(["threshold", "real-vs-real tail", "real-vs-generated tail", "R-G pairs above",
                          "excess ratio"],
                         [[_thr_label(t), t["real_vs_real_tail"], t["real_vs_generated_tail"],
                           t["real_vs_generated_pairs_above"], t["excess_ratio"]] for t in rg["tails"]]))
        for name, rel_path in m["plots"].items():
            out.append(f"<img class='plot' alt='{e(name)}' src='{e(rel_path)}'>")

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
        out.append(f"<h2>Filtered synthetic set</h2><p>Removing every synthetic image that matches a real one "
                   f"under {e(rem['matcher'])} at FMR {e(rem['fmr'])}: kept {e(rem['kept'])}, removed "
                   f"{e(rem['removed'])}. List: <code>{e(rem['list_file'])}</code>"
                   + (f"; export: <code>{e(rem.get('export'))}</code>" if rem.get("export") else "") + "</p>")

    gal = report.get("gallery", [])
    out.append(f"<h2>Top pairs ({e(len(gal))})</h2><p class='note'>Synthetic image (left) beside its real "
               "neighbour (right), ranked by similarity. Full list: <a href='pairs.csv'>pairs.csv</a>.</p>")
    out.append("<div class='gallery'>")
    for g in gal:
        out.append(
            f"<figure class='pair' data-rank='{e(g['rank'])}'>"
            f"<img alt='synthetic {e(g['syn_id'])}' src='{e(g['syn_thumb'])}'> "
            f"<img alt='real {e(g['real_id'])}' src='{e(g['real_thumb'])}'>"
            f"<figcaption>#{e(g['rank'])} {e(g['matcher'])} {e(g.get('unit', 'score'))} {e(g['score_native'])}"
            f"{' (match at ' + e(g['matched_at']) + ')' if g.get('matched_at') else ''}<br>"
            f"syn: {e(g['syn_id'])}<br>real: {e(g['real_id'])}</figcaption></figure>")
    out.append("</div>")
    out.append(f"<h2>Versions</h2>{table(['package', 'version'], [[k, v] for k, v in report['versions'].items()])}")
    out.append(f"<p class='note'>report schema {e(report['schema_version'])}; created {e(report['created_utc'])}; "
               "machine-readable: <a href='report.json'>report.json</a></p>")
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)
