"""The report's content, assembled from the audit's results (``audit.MatcherResult``: duck-typed, report/ never
imports attack/ or the audit), and written with writer.py: report.json, pairs.csv, plots, thumbnails,
index.html.

Every number a person reads is in the matcher's *native* unit (``units.py``): cosine similarity, or Euclidean
distance (smaller = more similar) for Euclidean matchers. Names say what a number is: a threshold carries its
``target_fmr`` (None for a fixed, published threshold) and its ``achieved_fmr``; a score or threshold value is
``*_native``; the unit is named once per matcher (``matchers[i].unit``). How to read each field: docs/report.md.
"""

from __future__ import annotations

import math
import os
import textwrap
import time
from collections.abc import Iterator

import numpy as np

from synleak_jax import units
from synleak_jax.files import safe_name, versions
from synleak_jax.report import plots
from synleak_jax.report import writer as report_writer

ROLES = ("synthetic", "members", "nonmembers")
#: report role -> the real set a synthetic image is compared with (gallery and pairs.csv ``role``)
PAIR_ROLES = ("members", "nonmembers")
FACE_CHECK_LOUD = ("warn", "fail")
TERMINAL_WIDTH = 118  # the summary's lines are wrapped to this many columns


# ------------------------------------------------------------------------------------------------ thresholds


def threshold_label(source: str, target_fmr: float | None) -> str:
    """The name a reader sees for a threshold: "FMR 0.001" (calibrated) or the fixed threshold's name."""
    return f"FMR {target_fmr:g}" if source == "calibrated" and target_fmr is not None else str(source)


def _threshold_head(source: str, fmr: float, tau_native: float) -> dict:
    """The fields that name a threshold, first in every per-threshold row: label, source, target FMR, value."""
    target = float(fmr) if source == "calibrated" else None
    return {"threshold": threshold_label(source, target), "source": source, "target_fmr": target,
            "tau_native": float(tau_native)}


def _calibration_entry(cal) -> dict:
    """The calibration in native units; a published threshold has no target FMR (only the one it achieves)."""
    d = cal.to_dict()
    thresholds = []
    for t in cal.thresholds:
        row = _threshold_head(t.source, t.fmr, t.tau_native)
        row.update(impostors_allowed=int(t.impostors_allowed) if t.source == "calibrated" else None,
                   impostors_above=int(t.impostors_above), achieved_fmr=float(t.achieved_fmr),
                   fnmr=None if t.fnmr is None else float(t.fnmr))
        thresholds.append(row)
    return {"method": d["method"], "note": d["note"], "n_impostor_pairs": d["n_impostor_pairs"],
            "n_genuine_pairs": d["n_genuine_pairs"], "thresholds": thresholds, "eer": d["eer"],
            "decidability": d["decidability"], "impostor_mean_native": d["impostor_mean"],
            "impostor_std": d["impostor_std"], "genuine_mean_native": d["genuine_mean"],
            "genuine_std": d["genuine_std"]}


# --------------------------------------------------------------------------------------------------- leakage


def _native_group_row(r: dict, metric: str) -> dict:
    """A per-class / per-identity row with its best score in native units (``best_score_native``)."""
    out = {k: v for k, v in r.items() if k != "best_score"}
    best = r.get("best_score")
    out["best_score_native"] = None if best is None else float(units.to_native(metric, best))
    return out


def _leak_entry(lk, real_set: str, metric: str, top: int, interval=None) -> dict:
    """Exact counts at one threshold against one real set (members, or the non-member control).

    ``interval(count, total) -> [lo, hi] | None``: the card's interval (``LeakageCard.interval``, Clopper-Pearson
    at the report's confidence); each count over a total gets it as ``<count>_ci`` (None without a card)."""
    row = _threshold_head(lk.source, lk.fmr, lk.tau_native)
    row.update(
        real_set=real_set, n_synthetic=int(lk.n_synthetic), synthetic_matched=int(lk.synthetic_matched),
        synthetic_matched_rate=lk.synthetic_matched / lk.n_synthetic if lk.n_synthetic else None,
        n_real=int(lk.n_real), real_images_matched=int(lk.real_images_matched),
        real_images_matched_rate=lk.real_images_matched / lk.n_real if lk.n_real else None,
        real_identities_matched=lk.real_identities_matched, n_real_identities=lk.real_identities_total,
        n_pairs=int(lk.n_pairs), truncated_synthetic_queries=int(lk.truncated_synthetic_queries),
        truncated_real_queries=int(lk.truncated_real_queries))
    for name, total in (("synthetic_matched", "n_synthetic"), ("real_images_matched", "n_real"),
                        ("real_identities_matched", "n_real_identities")):
        row[name + "_ci"] = None if interval is None else interval(row[name], row[total])
    if lk.per_synthetic_class:
        row["per_synthetic_class_top"] = [_native_group_row(r, metric) for r in lk.per_synthetic_class[:top]]
    if lk.per_real_identity:
        row["per_real_identity_top"] = [_native_group_row(r, metric) for r in lk.per_real_identity[:top]]
    return row


# ------------------------------------------------------------------------------------------------ membership


def _needs(rate: float) -> int:
    """Non-members needed to resolve an FPR of ``rate`` (ceil(1 / rate), robust to float rounding)."""
    return math.ceil(1.0 / rate * (1.0 - 1e-12))


def _tpr_points(res_m) -> list[dict]:
    """TPR at each target FPR; None with the reason where fewer than 1/FPR non-members cannot resolve it (the
    ROC's value there is the TPR at FPR 0, not at the target)."""
    out = []
    n = int(res_m.n_nonmembers)
    for key, tpr in res_m.tpr_at_fpr.items():
        target = float(key)
        if n < _needs(target):
            out.append({"target_fpr": target, "tpr": None,
                        "reason": f"needs >= {_needs(target):,} non-members; have {n:,}"})
        else:
            out.append({"target_fpr": target, "tpr": float(tpr), "reason": None})
    return out


def _membership_result(r, metric: str) -> dict:
    return {"score": r.score_name, "n_members": int(r.n_members), "n_nonmembers": int(r.n_nonmembers),
            "auc": float(r.auc), "balanced_accuracy": float(r.balanced_accuracy),
            "balanced_accuracy_threshold_native": float(units.to_native(metric, r.balanced_accuracy_threshold)),
            "tpr_at_fpr": _tpr_points(r), "lowest_resolvable_fpr": 1.0 / r.n_nonmembers,
            "member_score_mean_native": float(units.to_native(metric, float(np.mean(r.member_scores)))),
            "nonmember_score_mean_native": float(units.to_native(metric, float(np.mean(r.nonmember_scores))))}


def _membership_entry(res, datasets: dict) -> dict:
    if not res.membership:
        return {"available": False, "results": [],
                "reason": "no held-out real images (non-members) were given: membership inference needs images the "
                          "generator never saw; only leakage is reported (set --config.data.nonmembers.path)."}
    n_mem, n_non = len(res.sets["members"]), len(res.sets["nonmembers"])
    return {"available": True, "results": [_membership_result(r, res.metric) for r in res.membership],
            "reason": f"members: {datasets['members'].path} ({n_mem:,} images the generator was trained on); "
                      f"non-members: {datasets['nonmembers'].path} ({n_non:,} held-out real images). A TPR at an "
                      f"FPR below 1/{n_non:,} cannot be resolved with this many non-members (shown as n/a)."}


# ------------------------------------------------------------------------------------- identity, distributions


def _identity_entry(rel: dict | None) -> dict | None:
    if not rel:
        return None
    out = {k: v for k, v in rel.items() if not k.startswith("hist_") and k not in ("genuine_mean", "impostor_mean",
                                                                                  "at_thresholds")}
    out["genuine_mean_native"] = rel.get("genuine_mean")  # identity.py writes these in native units already
    out["impostor_mean_native"] = rel.get("impostor_mean")
    rows = []
    for r in rel.get("at_thresholds") or []:
        row = _threshold_head(r["source"], r["fmr"], r["tau_native"])
        row.update({k: r.get(k) for k in ("same_label_accepted", "different_label_accepted", "fnmr",
                                          "real_vs_real_fnmr")})
        rows.append(row)
    out["at_thresholds"] = rows
    return out


def _distributions_entry(rg: dict) -> dict:
    tails = []
    for t in rg["tails"]:
        row = _threshold_head(t["source"], t["fmr"], t["tau_native"])
        row.update({k: t[k] for k in ("real_vs_real_tail", "real_vs_generated_tail", "real_vs_generated_pairs_above",
                                      "excess_ratio")})
        tails.append(row)
    return {"real_vs_generated": {"n_pairs": int(rg["n_pairs"]), "mean_native": rg["mean"], "std": rg["std"],
                                  "tails": tails}}


# ----------------------------------------------------------------------------------------------------- card


def _card_entry(card, metric: str) -> dict | None:
    """The card (attack/card.py's ``to_dict``) with the report's names: ``target_fmr`` (None for a published
    threshold) and a ``threshold`` label per threshold; membership thresholds in native units."""
    if card is None:
        return None
    d = card.to_dict()
    for t in d.get("thresholds") or []:
        target = t.pop("fmr") if "fmr" in t else t.get("target_fmr")
        t["target_fmr"] = target
        t["threshold"] = threshold_label(t.get("source", "calibrated"), target)
    mem = d.get("membership")
    if mem:
        for p in mem.get("tpr_at_fpr") or []:
            if "threshold" in p:  # the attack score's threshold, in score units (minus the distance for dlib)
                thr = p.pop("threshold")
                p["threshold_native"] = None if thr is None else float(units.to_native(metric, thr))
    return d


# ---------------------------------------------------------------------------------------- pairs and gallery


def image_name(es, row: int) -> tuple[str, str]:
    """(the image's name relative to its dataset root, its full path or name) of row ``row`` of a set."""
    full = es.describe(int(row))
    root = getattr(es, "root", None)
    if root:
        absolute = os.path.abspath(full)
        if absolute.startswith(root.rstrip(os.sep) + os.sep):
            return absolute[len(root.rstrip(os.sep)) + 1:], full
    return full, full


#: Rows per block handed to the pairs.csv writer.
PAIRS_BLOCK = 1 << 16


def _pairs_blocks(res) -> Iterator[dict]:
    """Every listed pair, members first, then the non-member control's (``role``), in blocks of columns
    (pairs.csv is streamed: at 200k x 100k with everything above FMR 1e-2 that is ~15M rows)."""
    syn = res.sets["synthetic"]
    unit = units.short_unit(res.metric)
    names: dict[str, dict[int, str]] = {}

    def described(role: str, es, idx: np.ndarray) -> list[str]:
        """Names of rows ``idx`` of a set, each row described once for the whole file (a pair list repeats a
        row up to 2k times over the thresholds; describing an image folder's row joins and escapes its path)."""
        cache = names.setdefault(role, {})
        for i in np.unique(idx).tolist():
            if i not in cache:
                cache[i] = es.describe(i)
        return [cache[i] for i in idx.tolist()]

    for real_set, leaks in (("members", res.leaks), ("nonmembers", res.leaks_control or [])):
        if not leaks:
            continue
        real = res.sets[real_set]
        for lk in leaks:
            head = {"matcher": res.name, "unit": unit, "role": real_set,
                    **_threshold_head(lk.source, lk.fmr, lk.tau_native)}
            n = len(lk.pairs["syn_idx"])
            for a in range(0, n, PAIRS_BLOCK):
                b = min(n, a + PAIRS_BLOCK)
                si, ri = lk.pairs["syn_idx"][a:b], lk.pairs["real_idx"][a:b]
                yield {**head, "rank": np.arange(a + 1, b + 1), "syn_idx": np.asarray(si),
                       "syn_id": described("synthetic", syn, si), "syn_label": syn.labels[si],
                       "real_idx": np.asarray(ri), "real_id": described(real_set, real, ri),
                       "real_label": real.labels[ri],
                       "score_native": units.to_native(res.metric, np.asarray(lk.pairs["score"][a:b], np.float64))}


def _gallery_items(res, real_set: str, n: int) -> list[dict]:
    """The ``n`` synthetic images closest to their nearest image of ``real_set`` (members: the scan; non-members:
    the control), ranked by that score; each with the thresholds at which the pair matches."""
    nb = res.scan.neighbours if real_set == "members" else res.control
    if nb is None or n <= 0 or nb.syn_to_real_scores.shape[1] == 0:
        return []
    leaks = res.leaks if real_set == "members" else (res.leaks_control or [])
    syn, real = res.sets["synthetic"], res.sets[real_set]
    top = np.argsort(-nb.syn_to_real_scores[:, 0], kind="stable")[:n]
    items = []
    for rank, si in enumerate(top.tolist(), 1):
        ri = int(nb.syn_to_real_idx[si, 0])
        sc = float(nb.syn_to_real_scores[si, 0])
        syn_name, syn_full = image_name(syn, si)
        real_name, real_full = image_name(real, ri)
        items.append({"matcher": res.name, "role": real_set, "rank": rank, "syn_idx": int(si), "real_idx": ri,
                      "score_native": float(units.to_native(res.metric, sc)), "unit": units.short_unit(res.metric),
                      "syn_id": syn_full, "real_id": real_full, "syn_name": syn_name, "real_name": real_name,
                      "matched_at": [threshold_label(lk.source, lk.fmr) for lk in leaks if sc > lk.tau],
                      "syn_thumb": None, "real_thumb": None})
    return items


# ----------------------------------------------------------------------------------------------------- plots


def _plots(out_dir: str, res) -> dict:
    cal, metric = res.calibration, res.metric
    safe = safe_name(res.name)
    out = {}
    series = [("real vs real impostors", cal.hist_edges, cal.hist_impostor)]
    if cal.n_genuine:
        series.append(("real vs real genuine", cal.hist_edges, cal.hist_genuine))
    rg = res.real_vs_generated
    if "hist_edges" in rg:
        series.append(("real (members) vs generated, all pairs", np.asarray(rg["hist_edges"]),
                       np.asarray(rg["hist_counts"])))
    if res.identity_relation:
        series.append(("real vs generated, same label", np.asarray(res.identity_relation["hist_edges"]),
                       np.asarray(res.identity_relation["hist_genuine"])))
    thr = [(threshold_label(t.source, t.fmr), t.tau_native) for t in cal.thresholds]
    out["score_histograms"] = os.path.relpath(
        plots.score_histograms(os.path.join(out_dir, "plots", f"{safe}_scores.png"), res.name, metric, series, thr),
        out_dir)
    out["tails"] = os.path.relpath(plots.tails(os.path.join(out_dir, "plots", f"{safe}_tails.png"), res.name,
                                               rg["tails"]), out_dir)
    if res.membership:
        curves = [(r.score_name, r.roc.fpr, r.roc.tpr, r.auc) for r in res.membership]
        out["membership_roc"] = os.path.relpath(
            plots.roc_loglog(os.path.join(out_dir, "plots", f"{safe}_roc.png"), res.name, curves,
                             n_nonmembers=len(res.sets["nonmembers"])), out_dir)
    return out


# ------------------------------------------------------------------------------------------------- sections


def _section(cfg, out_dir: str, res, datasets: dict, write: bool) -> dict:
    """The report's section for one matcher."""
    metric = res.metric
    top = int(cfg.report.per_group_top)
    interval = res.card.interval if res.card is not None else None
    return {
        "name": res.name, "metric": metric, "unit": units.short_unit(metric), "native_unit": units.native_unit(metric),
        "more_similar": units.more_similar_is(metric), "weights": res.weights, "input_spec": res.input_spec,
        "stores": {r: {"path": s.path, "manifest": _manifest_summary(s.manifest)} for r, s in res.sets.items()},
        "card": _card_entry(res.card, metric),
        "calibration": _calibration_entry(res.calibration),
        "leakage": [_leak_entry(lk, "members", metric, top, interval) for lk in res.leaks],
        "leakage_control": [_leak_entry(lk, "nonmembers", metric, top, interval) for lk in res.leaks_control or []],
        "membership": _membership_entry(res, datasets),
        "identity_relation": _identity_entry(res.identity_relation),
        "distributions": _distributions_entry(res.real_vs_generated),
        "plots": _plots(out_dir, res) if write else {}}


def _manifest_summary(m: dict) -> dict:
    keep = ("model", "weights", "dataset", "preprocessing", "flip", "flip_combine", "metric", "normalized",
            "embedding_dim", "compute_dtype", "storage_dtype", "versions", "created", "kind", "path", "shape")
    return {k: m.get(k) for k in keep if k in m}


def _identities(es) -> int | None:
    lab = np.asarray(es.labels)
    known = lab[lab >= 0]
    return int(np.unique(known).size) if known.size else None


def _face_check_entry(checks) -> dict | None:
    """role's face check as ``{"status", "not_run", "templates": [...]}`` (status: the worst verdict over the
    templates, or "not run"). The audit gives ``{template: result dict or {"not_run": why}}``, or
    ``{"not_run": why}`` for the whole dataset."""
    if checks is None:
        return None
    if "not_run" in checks and not isinstance(checks["not_run"], dict):
        return {"status": "not run", "not_run": str(checks["not_run"]), "templates": []}
    templates = []
    for template, c in checks.items():
        if "not_run" in c:
            templates.append({"template": template, "verdict": "not run", "not_run": str(c["not_run"])})
            continue
        entry = {"template": template, **{k: v for k, v in c.items() if k != "template"}, "not_run": None}
        entry["summary"] = face_check_sentence(entry)
        templates.append(entry)
    order = {"fail": 3, "warn": 2, "ok": 1, "not run": 0}
    status = max((t["verdict"] for t in templates), key=lambda v: order.get(v, 0), default="not run")
    return {"status": status, "not_run": None if templates else "no alignment template to check",
            "templates": templates}


def face_check_sentence(t: dict) -> str:
    """One line of a template's face check (its verdict is shown beside it): faces found, near the template."""
    if t.get("not_run"):
        return f"not run: {t['not_run']}"
    how = "aligned crops" if t.get("aligned") else "detect + align"
    return (f"faces in {t['faces_found']}/{t['readable']} sampled images "
            f"({t['faces_found_share']:.0%}), {t['near_template']}/{t['readable']} near the {t['template']} template "
            f"({t['near_template_share']:.0%}; {how})")


def _dataset_entry(cfg, role: str, ds, es, checks) -> dict | None:
    """What was actually given for ``role`` (path as the user wrote it, kind, counts, colour order, face check);
    a preset's description is kept apart as that preset's expectation."""
    if ds is None or es is None:
        return None
    records = int(ds.num_records)
    preset = str(cfg.get("preset") or "")
    desc = ds.description or ""
    return {"name": ds.name, "path": ds.path, "kind": ds.kind, "records": records, "n_images": len(es),
            "rejected": int(records - len(es)), "labelled": bool(ds.labelled),
            "identities": _identities(es) if ds.labelled else None,
            "images_available": bool(es.has_images), "root": es.root,
            "channel_order": ds.channel_order if ds.source is not None else None,
            "channel_order_reason": (ds.channel_order_reason or None) if ds.source is not None else None,
            "description": desc or None, "description_from": (f"preset {preset}" if preset else "config") if desc
            else None, "face_check": _face_check_entry(checks)}


def _summary_lines(results: dict, report: dict) -> list[str]:
    """The terminal's summary: the card of each matcher (control counts included), the agreement between
    matchers, and one line per dataset whose face check warned or failed."""
    lines = []
    cards = [res for res in results.values() if res.card is not None]
    if len(cards) > 1:
        lines.append(f"{len(cards)} matchers: " + "; ".join(f"{res.name}: {res.card.verdict}" for res in cards))
    for i, res in enumerate(cards):
        if i or len(cards) > 1:
            lines.append("")
        lines += res.card.terminal_lines()
    ag = report.get("agreement")
    if ag:
        lines.append("")
        lines.append(f"agreement at FMR {ag['fmr']:g}: {ag['flagged_by_all']:,} synthetic images flagged by every "
                     "matcher; " + "; ".join(f"{r['matcher_a']} & {r['matcher_b']}: {r['both']:,} both "
                                             f"(Jaccard {_fmt_rate(r['jaccard'])})" for r in ag["synthetic_images"]))
    warned = []
    for role in ROLES:
        d = report["datasets"].get(role)
        fc = (d or {}).get("face_check") or {}
        for t in fc.get("templates", []):
            if t.get("verdict") in FACE_CHECK_LOUD:
                warned.append(f"!! face check {t['verdict'].upper()} for {role} ({d['path']}): {t['summary']}")
    if warned:
        lines.append("")
        lines += warned
    return _wrap_lines(lines)


def _wrap_lines(lines: list[str], width: int = TERMINAL_WIDTH) -> list[str]:
    """Long lines broken at spaces, the continuation indented four more than the line (a terminal stays readable)."""
    out = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        out += textwrap.wrap(line, width=width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False) or [""]
    return out


def _fmt_rate(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def build_report(cfg, out_dir: str, results: dict, datasets: dict, agreement, remedy, notes, demo_info, t_start,
                 *, write: bool, face_checks: dict | None = None, channel_checks: dict | None = None) -> dict:
    """The report dict of an audit (written to ``out_dir`` when ``write``: process 0)."""
    sections = [_section(cfg, out_dir, res, datasets, write) for res in results.values()]
    gallery = []
    n_gallery = int(cfg.report.gallery_n)
    for res in results.values():
        for real_set in PAIR_ROLES:
            if real_set not in res.sets:
                continue
            items = _gallery_items(res, real_set, n_gallery)
            syn, real = res.sets["synthetic"], res.sets[real_set]
            if write and items and syn.has_images and real.has_images:
                items = report_writer.write_gallery(out_dir, items, syn.read_rgb, real.read_rgb)
            gallery += items
    if write:
        report_writer.write_pairs_csv(os.path.join(out_dir, "pairs.csv"),
                                      (block for res in results.values() for block in _pairs_blocks(res)))
    first = next(iter(results.values()))
    cal_desc = {"description": first.calibration.method, "source": cfg.calibration.source,
                "note": first.calibration.note or None}
    face_checks = face_checks or {}
    timings = {f"{name}/{k}": v for name, res in results.items() for k, v in res.timings.items()}
    report = {
        "schema_version": report_writer.SCHEMA_VERSION,
        "tool": {"name": "synleak_jax", "version": versions().get("synleak_jax", "0")},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "demo": bool(cfg.demo.enabled), "preset": str(cfg.get("preset") or "") or None,
        "title": cfg.title or _default_title(datasets, first.sets), "notes": list(notes),
        "config": cfg.to_dict(), "versions": versions(),
        "datasets": {**{role: _dataset_entry(cfg, role, datasets.get(role), first.sets.get(role),
                                             face_checks.get(role)) for role in ROLES},
                     "calibration": cal_desc},
        "matchers": sections, "agreement": agreement, "remedy": remedy,
        "files": {"report_json": "report.json", "pairs_csv": "pairs.csv", "html": "index.html",
                  "plots": sorted({p for s in sections for p in s["plots"].values()})},
        "gallery": gallery, "timings_s": {**timings, "total": time.time() - t_start},
    }
    for role, check in (channel_checks or {}).items():
        if report["datasets"].get(role) is not None:
            report["datasets"][role]["channel_order_check"] = check
    report["summary_lines"] = _summary_lines(results, report)
    if demo_info is not None:
        report["demo_info"] = {k: v for k, v in demo_info.items() if k != "synthetic_source_member"}
    if write:
        return report_writer.write_report(out_dir, report)
    return report


def _default_title(datasets: dict, sets: dict) -> str:
    """What was actually given: the paths as the user wrote them, their kind and size (never a preset's name)."""
    def one(role):
        ds = datasets[role]
        return f"{ds.path} ({ds.kind}, {len(sets[role]):,} images)"
    return f"synleak_jax audit: {one('synthetic')} vs {one('members')}"
