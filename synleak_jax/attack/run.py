"""One audit end to end: data -> embedding stores -> analyses -> report (what ``synleak-audit`` runs).

Stages and resume: every embedding store is filled by ``embed.engine.embed_to_store`` (chunked, resumable,
reused only when its manifest matches); every analysis result is written atomically under
``<output_dir>/stages/<matcher>/`` with a key (hash of the store fingerprints and the analysis settings) and is
skipped on a rerun whose key matches; the report files are written last. An interrupted audit rerun with the same
command continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import time

import numpy as np
from absl import logging

from synleak_jax.attack import calibration as C
from synleak_jax.attack import distributions as D
from synleak_jax.attack import identity as I
from synleak_jax.attack import leakage as L
from synleak_jax.attack import membership as M
from synleak_jax.attack import scores as S
from synleak_jax.report import plots as P
from synleak_jax.report import writer as W

ROLES = ("synthetic", "members", "nonmembers")
DATA_KINDS = {"image_folder": "folder", "flat_folder": "flat", "recordio": "recordio", "tfds": "tfds",
              "verification_bin": "bin"}


class AuditError(ValueError):
    """A configuration or input problem, with a message that names the field/file to fix."""


@dataclasses.dataclass
class DataSet:
    role: str
    name: str
    source: object
    labelled: bool
    description: str
    align: str = "none"
    issame: object = None
    label_from: str = "index"  # verification pairs (calibration.source=verification_bin)


# ----------------------------------------------------------------------------------------------------- data

def open_dataset(role: str, dcfg) -> DataSet | None:
    """Opens the source of ``cfg.data.<role>``; None when its path is empty (non-members only)."""
    from synleak_jax.data.sources import open_source

    if not dcfg.path:
        if role == "nonmembers":
            return None
        raise AuditError(f"--config.data.{role}.path is required (the {role} images)")
    if dcfg.kind not in DATA_KINDS:
        raise AuditError(f"--config.data.{role}.kind={dcfg.kind!r}: choose one of {', '.join(DATA_KINDS)}")
    if dcfg.kind != "tfds" and not os.path.exists(dcfg.path) and not os.path.exists(dcfg.path + ".rec"):
        raise AuditError(f"--config.data.{role}.path={dcfg.path!r} does not exist")
    kwargs = {"data_dir": dcfg.tfds_data_dir} if dcfg.kind == "tfds" else {}
    try:
        src = open_source(f"{DATA_KINDS[dcfg.kind]}:{dcfg.path}", **kwargs)
    except Exception as e:  # the data layer's messages name the file; add the flag
        raise AuditError(f"--config.data.{role}: cannot open {dcfg.path!r}: {e}") from e
    if len(src) == 0:
        raise AuditError(f"--config.data.{role}.path={dcfg.path!r} holds no images")
    labelled = bool(dcfg.labelled) and dcfg.kind in ("image_folder", "recordio", "tfds")
    if dcfg.align not in ("none", "mtcnn"):
        raise AuditError(f"--config.data.{role}.align={dcfg.align!r}: use 'none' (aligned crops) or 'mtcnn'")
    if dcfg.label_from not in ("index", "name"):
        raise AuditError(f"--config.data.{role}.label_from={dcfg.label_from!r}: use 'index' or 'name'")
    return DataSet(role, dcfg.name or os.path.basename(os.path.normpath(dcfg.path)), src, labelled,
                   dcfg.description, dcfg.align, label_from=dcfg.label_from)


# -------------------------------------------------------------------------------------------------- weights

def load_matcher(name: str, weights_path: str):
    """(module, variables, spec, weights-manifest entry) for registry model ``name``."""
    import jax.numpy as jnp

    from synleak_jax.models import registry

    try:
        entry = registry.get_entry(name)
    except KeyError as e:
        raise AuditError(f"--config.matchers: {e.args[0]}") from None
    if weights_path:
        if not os.path.exists(weights_path):
            raise AuditError(f"--config.weights.{name}={weights_path!r} does not exist")
        from synleak_jax.weights import load_weights

        variables, info = load_weights(weights_path, name)
        winfo = {"sha256": info.sha256, "source": os.path.basename(str(info.source_file)), "format": info.format,
                 "model_name": info.model_name}
    elif name == "dlib_resnet_v1":
        from synleak_jax.weights import convert_dlib

        path = convert_dlib.default_dlib_weights_path()
        variables = convert_dlib.load_dlib_dat(path)
        winfo = {"sha256": convert_dlib.file_sha256(path), "source": os.path.basename(str(path)), "format": "dlib_dat",
                 "model_name": name, "shipped_in": "face-recognition-models (PyPI)"}
    else:
        raise AuditError(f"matcher {name!r} needs weights: --config.weights.{name}=PATH (see docs/audit.md for where "
                         "to get them)")
    compute = "float32"
    try:
        from synleak_jax.embed.engine import default_compute_dtype
        compute = default_compute_dtype()
    except ImportError:
        pass
    module = registry.get_model(name, dtype=jnp.dtype(compute))
    return module, variables, entry, winfo, compute


def ensure_store(path: str, ds: DataSet, name: str, module, variables, entry, winfo, compute: str, ecfg) -> object:
    """Fills or resumes the embedding store of ``ds`` under matcher ``name``; returns the opened store."""
    from synleak_jax.data import rejects
    from synleak_jax.embed import engine as eng
    from synleak_jax.embed import feed
    from synleak_jax.embed.store import ChunkPlan, EmbeddingStore

    spec = entry.spec
    plan = ChunkPlan(len(ds.source), ecfg.batch_size, ecfg.chunk_batches)
    engine = eng.EmbeddingEngine(module, variables, spec, flip=ecfg.flip, storage_dtype="float32")
    manifest = eng.build_manifest(
        model_name=name, model_family=entry.family, spec=spec, weights=winfo,
        dataset={"kind": type(ds.source).__name__, "fingerprint": ds.source.fingerprint(),
                 "num_records": len(ds.source), "num_classes": getattr(ds.source, "num_classes", None)},
        preprocessing={"alignment": ds.align, "template": spec.alignment, "resize": [spec.height, spec.width],
                       "channel_order": spec.channel_order, "decode": "PIL via synleak_jax.data.decode"},
        flip=ecfg.flip, flip_combine=engine.flip_combine, normalized=engine.normalize, compute_dtype=compute,
        storage_dtype="float32", plan=plan)
    t0 = time.time()
    kwargs = {}
    if ds.align == "mtcnn":  # detect + align full images (FFHQ) inside the pipeline; failures become rejects
        from synleak_jax.data.detect import DetectAlign
        kwargs["align_fn"] = DetectAlign(spec)
    summary = eng.embed_to_store(path, engine, manifest, feed.pipeline_batches(ds.source, spec, **kwargs),
                                 describe=ds.source.describe, reasons=rejects.REASONS)
    logging.info("store %s: %s (%.1f s)", path, {k: summary.get(k) for k in ("chunks_computed", "chunks_skipped")},
                 time.time() - t0)
    store = EmbeddingStore.open(path)
    if len(store.record_ids) == 0:
        raise AuditError(f"every image of {ds.role} ({ds.name}) was rejected; see the store's rejects")
    return store


# ----------------------------------------------------------------------------------------------- stage cache

def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(W.to_jsonable(parts), sort_keys=True, default=str).encode()).hexdigest()[:24]


class StageCache:
    """``<dir>/<name>.json`` (+ ``.npz``) written atomically, reused when the stored key matches."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def load(self, name: str, key: str):
        jp = os.path.join(self.root, name + ".json")
        if not os.path.exists(jp):
            return None
        with open(jp) as f:
            meta = json.load(f)
        if meta.get("key") != key:
            logging.info("stage %s: settings changed, recomputing", name)
            return None
        arrays = {}
        np_path = os.path.join(self.root, name + ".npz")
        if meta.get("has_arrays"):
            with np.load(np_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        logging.info("stage %s: reusing %s", name, jp)
        return meta["value"], arrays

    def save(self, name: str, key: str, value, arrays: dict | None = None) -> None:
        if arrays:
            tmp = os.path.join(self.root, f".{name}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, os.path.join(self.root, name + ".npz"))
        W.atomic_write(os.path.join(self.root, name + ".json"),
                       json.dumps({"key": key, "has_arrays": bool(arrays), "value": W.to_jsonable(value)}))


def _cal_to_cache(cal: C.Calibration):
    value = {k: getattr(cal, k) for k in ("metric", "n_impostor", "n_genuine", "eer", "impostor_mean", "impostor_std",
                                          "genuine_mean", "genuine_std", "method", "note")}
    value["thresholds"] = [t.to_dict() for t in cal.thresholds]
    return value, {"hist_edges": cal.hist_edges, "hist_impostor": cal.hist_impostor, "hist_genuine": cal.hist_genuine}


def _cal_from_cache(value, arrays) -> C.Calibration:
    v = dict(value)
    v["thresholds"] = [C.Threshold(**{**t, "fnmr": t["fnmr"]}) for t in v["thresholds"]]
    for k in ("impostor_mean", "impostor_std"):
        v[k] = float("nan") if v[k] is None else v[k]
    return C.Calibration(**v, **arrays)


# ------------------------------------------------------------------------------------------------ analyses

def _labels_or_none(store, ds: DataSet):
    """Identity labels of a store's rows, or None for unlabelled sets. With ``label_from="name"`` the class
    folder names are the identity ids (SFace/IDnet class folders named by CASIA label: "0", "1", ..., "10571",
    whose sorted order differs from their numeric order)."""
    if not ds.labelled:
        return None
    lab = np.asarray(store.labels, np.int64)
    if ds.label_from == "index":
        return lab
    names = getattr(ds.source, "class_names", None)
    if not names:
        raise AuditError(f"--config.data.{ds.role}.label_from=name needs an image folder with class folders")
    try:
        ids = np.asarray([int(n) for n in names], np.int64)
    except ValueError:
        bad = next(n for n in names if not n.strip().lstrip("-").isdigit())
        raise AuditError(f"--config.data.{ds.role}.label_from=name: class folder {bad!r} is not an integer id") from None
    return np.where(lab >= 0, ids[np.maximum(lab, 0)], -1)


def analyse_matcher(cfg, name: str, metric: str, stores: dict, datasets: dict, spec, cache: StageCache) -> dict:
    """Every analysis for one matcher. Returns a dict with the report section and raw results for the report."""
    acfg = cfg.attack
    fmrs = [float(f) for f in acfg.fmrs]
    emb = {r: np.asarray(s.embeddings[:], np.float32) for r, s in stores.items()}
    fps = {r: s.manifest.get("dataset", {}).get("fingerprint") for r, s in stores.items()}
    wfp = stores["synthetic"].manifest.get("weights", {}).get("sha256")
    timings = {}

    # --- calibration
    ccfg = cfg.calibration
    if ccfg.source == "members":
        cal_x, cal_lab = emb["members"], _labels_or_none(stores["members"], datasets["members"])
        cal_desc = f"all image pairs of the members set ({datasets['members'].name})"
    elif ccfg.source == "nonmembers":
        if "nonmembers" not in emb:
            raise AuditError("--config.calibration.source=nonmembers but no non-members are configured")
        cal_x, cal_lab = emb["nonmembers"], _labels_or_none(stores["nonmembers"], datasets["nonmembers"])
        cal_desc = f"all image pairs of the non-members set ({datasets['nonmembers'].name})"
    elif ccfg.source == "real_all":
        parts = [r for r in ("members", "nonmembers") if r in emb]
        cal_x = np.concatenate([emb[r] for r in parts])
        labs = [_labels_or_none(stores[r], datasets[r]) for r in parts]
        if all(lb is not None for lb in labs):
            off = 0
            shifted = []
            for lb in labs:  # labels of different sets are different identity spaces unless configured shared
                shifted.append(lb if ccfg.shared_label_space else np.where(lb >= 0, lb + off, lb))
                off += int(lb.max(initial=-1)) + 1
            cal_lab = np.concatenate(shifted)
        else:
            cal_lab = None
        cal_desc = "all image pairs of the real images (" + " + ".join(datasets[r].name for r in parts) + ")"
    elif ccfg.source == "verification_bin":
        cal_x, cal_lab = None, None
        cal_desc = f"the pairs of the verification bin {os.path.basename(ccfg.path)}"
    else:
        raise AuditError(f"--config.calibration.source={ccfg.source!r}: use members, nonmembers, real_all or "
                         "verification_bin")
    if cal_x is not None and ccfg.max_images and cal_x.shape[0] > ccfg.max_images:
        sel = np.sort(np.random.default_rng(ccfg.seed).choice(cal_x.shape[0], ccfg.max_images, replace=False))
        cal_x = cal_x[sel]
        cal_lab = None if cal_lab is None else cal_lab[sel]
        cal_desc += f", a seeded random subset of {ccfg.max_images:,} images"
    note = ccfg.note
    if cal_lab is None and cal_x is not None:
        cal_desc += "; no identity labels: every image counted as its own identity"
        note = (note + " " if note else "") + (
            "Without identity labels every pair counts as an impostor pair; pairs of the same person then inflate "
            "tau, which makes the match counts conservative (fewer matches).")
    fixed = {}
    if acfg.published_threshold and spec.threshold is not None:
        fixed[f"{name} published {spec.threshold:g}"] = float(spec.threshold)
    key = _key("cal", fps, wfp, fmrs, ccfg.to_dict(), acfg.nbins, sorted(fixed.items()),
               None if cal_x is None else cal_x.shape)
    hit = cache.load("calibration", key)
    t0 = time.time()
    if hit:
        cal = _cal_from_cache(*hit)
    elif cal_x is None:  # verification pairs: records 2i and 2i+1 form pair i
        imp, gen = _verification_scores(stores["calibration"], datasets["calibration"].issame, metric)
        try:
            cal = C.calibrate_scores(imp, gen, fmrs, metric=metric, fixed_thresholds=fixed, note=note,
                                     method=f"{imp.size:,} impostor and {gen.size:,} genuine pairs of a verification "
                                            "bin (exact order statistic)")
        except ValueError as e:
            raise AuditError(f"{e} (calibration set: {cal_desc})") from None
        cache.save("calibration", key, *_cal_to_cache(cal))
    else:
        try:
            C.check_fmrs(fmrs, _n_impostor_upper_bound(cal_lab, cal_x.shape[0]))
            cal = C.calibrate_embeddings(cal_x, cal_lab, fmrs, metric=metric, nbins=acfg.nbins, block=acfg.block,
                                         fixed_thresholds=fixed, note=note)
        except ValueError as e:  # impossible FMR for this calibration set: a config problem
            raise AuditError(f"{e} (calibration set: {cal_desc})") from None
        cache.save("calibration", key, *_cal_to_cache(cal))
    cal.method = cal.method + " — " + cal_desc if cal_desc not in cal.method else cal.method
    timings["calibration"] = time.time() - t0

    # --- neighbours both ways (synthetic vs members)
    k = int(max(acfg.k, acfg.membership_topk))
    key = _key("nb", fps, wfp, k, metric)
    t0 = time.time()
    nb_mem = _neighbours(cache, "neighbours", key, emb["synthetic"], emb["members"], k, metric)
    nb_non = None
    if "nonmembers" in emb:
        nb_non = _neighbours(cache, "neighbours_nonmembers", _key("nbn", fps, wfp, k, metric), emb["synthetic"],
                             emb["nonmembers"], k, metric)
    timings["neighbours"] = time.time() - t0

    syn_labels = _labels_or_none(stores["synthetic"], datasets["synthetic"])
    mem_labels = _labels_or_none(stores["members"], datasets["members"])

    leaks = []
    for t in cal.thresholds:
        lk = L.leakage_at(nb_mem, t.tau, fmr=t.fmr, source=t.source, real_labels=mem_labels, syn_labels=syn_labels)
        leaks.append(lk)

    # Control: the same counts against the held-out non-members. A generator that only produces plausible faces
    # matches members and non-members alike; leakage shows as members matched far more often.
    leaks_control = []
    if nb_non is not None:
        non_labels = _labels_or_none(stores["nonmembers"], datasets["nonmembers"])
        for t in cal.thresholds:
            leaks_control.append(L.leakage_at(nb_non, t.tau, fmr=t.fmr, source=t.source, real_labels=non_labels))

    # --- membership
    membership = {"available": False, "results": [],
                  "reason": "no held-out real images (non-members) were given: membership inference needs images the "
                            "generator never saw; only leakage is reported (set --config.data.nonmembers.path)."}
    mem_results = []
    if nb_non is not None:
        for how in ("max", "topk_mean"):
            kk = int(acfg.membership_topk)
            ms = M.attack_scores(nb_mem.real_to_syn_scores, how, kk)
            ns = M.attack_scores(nb_non.real_to_syn_scores, how, kk)
            label = "max similarity to any synthetic image" if how == "max" else f"mean of top-{kk} similarities"
            res = M.membership_metrics(ms, ns, score_name=label, fprs=tuple(acfg.membership_fprs))
            mem_results.append(res)
        membership = {"available": True, "results": [r.summary(metric) for r in mem_results],
                      "reason": f"members: {datasets['members'].name} ({len(emb['members'])} images the generator "
                                f"was trained on); non-members: {datasets['nonmembers'].name} "
                                f"({len(emb['nonmembers'])} held-out real images). TPR at an FPR below "
                                f"1/{len(emb['nonmembers'])} cannot be resolved with this many non-members."}

    # --- identity relation
    rel = None
    mode = str(acfg.identity_relation).lower()
    if mode not in ("auto", "on", "off"):
        raise AuditError(f"--config.attack.identity_relation={acfg.identity_relation!r}: use auto, on or off")
    want_rel = (syn_labels is not None and mem_labels is not None) if mode == "auto" else mode == "on"
    if want_rel:
        if syn_labels is None or mem_labels is None:
            raise AuditError("--config.attack.identity_relation=on needs labelled synthetic and member sets "
                             "(image folders <class>/<image> or RecordIO, data.*.labelled=True) whose class ids "
                             "name the same identities")
        t0 = time.time()
        key = _key("rel", fps, wfp, [t.tau for t in cal.thresholds], acfg.nbins)
        hit = cache.load("identity_relation", key)
        if hit:
            rel = hit[0]
        else:
            r = I.identity_relation(emb["members"], mem_labels, emb["synthetic"], syn_labels, cal, metric=metric,
                                    nbins=acfg.nbins, block=acfg.block)
            rel = r.to_dict()
            rel["hist_edges"] = r.hist.bins.edges()
            rel["hist_genuine"] = r.hist.genuine
            rel["hist_impostor"] = r.hist.impostor
            rel = W.to_jsonable(rel)
            cache.save("identity_relation", key, rel)
        timings["identity_relation"] = time.time() - t0

    # --- real vs generated distributions
    t0 = time.time()
    key = _key("rg", fps, wfp, [t.tau for t in cal.thresholds], acfg.nbins)
    hit = cache.load("real_vs_generated", key)
    if hit:
        rg = hit[0]
    else:
        rg = W.to_jsonable(D.real_vs_generated(emb["members"], emb["synthetic"], cal, metric=metric, nbins=acfg.nbins,
                                               block=acfg.block))
        cache.save("real_vs_generated", key, rg)
    timings["real_vs_generated"] = time.time() - t0

    return {"cal": cal, "nb": nb_mem, "nb_non": nb_non, "leaks": leaks, "leaks_control": leaks_control,
            "membership": membership,
            "mem_results": mem_results, "rel": rel, "rg": rg, "timings": timings,
            "syn_labels": syn_labels, "mem_labels": mem_labels}


def _verification_scores(store, issame: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores of the verification pairs whose two images were both embedded (rejects drop the pair)."""
    rows = {int(r): i for i, r in enumerate(store.record_ids)}
    emb = np.asarray(store.embeddings[:], np.float64)
    ia, ib, same = [], [], []
    for p in range(len(issame)):
        a, b = rows.get(2 * p), rows.get(2 * p + 1)
        if a is not None and b is not None:
            ia.append(a)
            ib.append(b)
            same.append(bool(issame[p]))
    if not ia:
        raise AuditError("no verification pair has both images embedded (see the calibration store's rejects)")
    ea, eb = emb[ia], emb[ib]
    sc = (ea * eb).sum(1) if metric == "cosine" else -np.linalg.norm(ea - eb, axis=1)
    same = np.asarray(same)
    return sc[~same], sc[same]


def _n_impostor_upper_bound(labels, n: int) -> int:
    """Impostor pairs of a set (exact), computed from the labels before any heavy work."""
    total = n * (n - 1) // 2
    if labels is None:
        return total
    lab = np.asarray(labels)
    known = lab[lab >= 0]
    _, counts = np.unique(known, return_counts=True)
    return total - int((counts * (counts - 1) // 2).sum())


def _neighbours(cache: StageCache, name: str, key: str, syn, real, k: int, metric: str) -> L.Neighbours:
    hit = cache.load(name, key)
    if hit:
        a = hit[1]
        return L.Neighbours(metric, a["fs"], a["fi"], a["rs"], a["ri"])
    nb = L.compute_neighbours(syn, real, k, metric)
    cache.save(name, key, {"k": k}, {"fs": nb.syn_to_real_scores, "fi": nb.syn_to_real_idx,
                                    "rs": nb.real_to_syn_scores, "ri": nb.real_to_syn_idx})
    return nb


# -------------------------------------------------------------------------------------------------- report

def _versions() -> dict:
    out = {}
    for pkg in ("synleak_jax", "jax", "jaxlib", "flax", "optax", "numpy", "ml-collections", "matplotlib", "pillow",
                "scikit-image", "face-recognition-models"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _dataset_entry(ds: DataSet | None, store) -> dict | None:
    if ds is None:
        return None
    return {"name": ds.name, "n_images": int(len(store.record_ids)), "labelled": ds.labelled,
            "description": ds.description, "records": len(ds.source),
            "rejected": int(len(ds.source) - len(store.record_ids))}


def _plots(out_dir: str, name: str, metric: str, res: dict) -> dict:
    cal = res["cal"]
    safe = W._safe(name)
    plots = {}
    series = [("real vs real impostors", cal.hist_edges, cal.hist_impostor)]
    if cal.n_genuine:
        series.append(("real vs real genuine", cal.hist_edges, cal.hist_genuine))
    rg = res["rg"]
    series.append(("real (members) vs generated, all pairs", np.asarray(rg["hist_edges"]), np.asarray(rg["hist_counts"])))
    if res["rel"]:
        series.append(("real vs generated, same label", np.asarray(res["rel"]["hist_edges"]),
                       np.asarray(res["rel"]["hist_genuine"])))
    thr = [(("FMR %g" % t.fmr) if t.source == "calibrated" else t.source, t.tau_native) for t in cal.thresholds]
    plots["score_histograms"] = os.path.relpath(
        P.score_histograms(os.path.join(out_dir, "plots", f"{safe}_scores.png"), name, metric, series, thr), out_dir)
    plots["tails"] = os.path.relpath(P.tails(os.path.join(out_dir, "plots", f"{safe}_tails.png"), name, rg["tails"]),
                                     out_dir)
    if res["mem_results"]:
        curves = [(r.score_name, r.roc.fpr, r.roc.tpr, r.auc) for r in res["mem_results"]]
        plots["membership_roc"] = os.path.relpath(
            P.roc_loglog(os.path.join(out_dir, "plots", f"{safe}_roc.png"), name, curves), out_dir)
    return plots


def run_audit(cfg, *, emit_filtered_list: bool | None = None) -> dict:
    """Runs the audit described by ``cfg`` (see configs/); returns the report dict (also written to disk)."""
    t_start = time.time()
    out_dir = os.path.abspath(cfg.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    notes = list(cfg.notes) if cfg.get("notes") else []
    demo_info = None
    if cfg.demo.enabled:
        from synleak_jax.demo import generator

        root = os.path.join(out_dir, "demo_data")
        demo_info = generator.make_demo_data(root, n_members=cfg.demo.n_members, n_synthetic=cfg.demo.n_synthetic,
                                             steps=cfg.demo.steps, bandwidth=cfg.demo.bandwidth, seed=cfg.demo.seed)
        for role in ROLES:
            cfg.data[role].kind = "flat_folder"
            cfg.data[role].path = os.path.join(root, role)
        g = demo_info["generator"]
        notes.append(f"DEMO: synthetic images from a {g['kind']} (latent dim {g['latent_dim']}) trained for "
                     f"{cfg.demo.steps} steps on the {cfg.demo.n_members} member images (final training MSE "
                     f"{g['final_train_mse']:.5f}); latent sampling bandwidth {cfg.demo.bandwidth}. Images are 25x25 "
                     f"LFW crops from scikit-image, resized to 32x32 and then to the matcher's input: far below the "
                     f"resolution face matchers are built for, so the absolute numbers are only illustrative.")
    matchers = [m.strip() for m in cfg.matchers.split(",") if m.strip()]
    if not matchers:
        raise AuditError("--config.matchers is empty: name at least one registered model (e.g. dlib_resnet_v1)")
    for name in matchers:  # weights problems first: they are cheap to check and easy to fix
        w = cfg.weights.get(name, "")
        if not w and name != "dlib_resnet_v1":
            raise AuditError(f"matcher {name!r} needs weights: --config.weights.{name}=PATH (see docs/audit.md for "
                             "where to get them)")
        if w and not os.path.exists(w):
            raise AuditError(f"--config.weights.{name}={w!r} does not exist")
    datasets = {r: open_dataset(r, cfg.data[r]) for r in ROLES}
    datasets = {r: d for r, d in datasets.items() if d is not None}
    if cfg.calibration.source == "verification_bin":
        from synleak_jax.data import verification

        if not cfg.calibration.path or not os.path.isfile(cfg.calibration.path):
            raise AuditError(f"--config.calibration.path={cfg.calibration.path!r}: give an existing verification bin "
                             "(e.g. lfw.bin) for --config.calibration.source=verification_bin")
        try:
            vp = verification.load_bin(cfg.calibration.path)
        except Exception as e:
            raise AuditError(f"--config.calibration.path: {e}") from e
        ds = DataSet("calibration", vp.name, vp.images, False, f"verification pairs of {vp.name}",
                     cfg.calibration.align)
        ds.issame = vp.issame
        datasets["calibration"] = ds
    fmrs = [float(f) for f in cfg.attack.fmrs]
    if not fmrs:
        raise AuditError("--config.attack.fmrs is empty")
    stores_dir = os.path.abspath(cfg.stores_dir) if cfg.stores_dir else os.path.join(out_dir, "stores")

    sections, raw, pairs_rows, gallery_items = [], {}, [], []
    timings = {}
    for name in matchers:
        t0 = time.time()
        module, variables, entry, winfo, compute = load_matcher(name, cfg.weights.get(name, ""))
        spec = entry.spec
        metric = spec.metric
        stores = {}
        for role, ds in datasets.items():
            stores[role] = ensure_store(os.path.join(stores_dir, f"{role}.{W._safe(ds.name)}.{name}"), ds, name, module,
                                        variables, entry, winfo, compute, cfg.embed)
        timings[f"{name}/embed"] = time.time() - t0
        res = analyse_matcher(cfg, name, metric, stores, datasets, spec,
                              StageCache(os.path.join(out_dir, "stages", W._safe(name))))
        for k2, v in res["timings"].items():
            timings[f"{name}/{k2}"] = v
        raw[name] = (res, stores)
        leak_rows = []
        for lk in res["leaks"]:
            row = lk.summary()
            top = cfg.report.per_group_top
            if lk.per_synthetic_class:
                row["per_synthetic_class_top"] = [_native_row(r, metric) for r in lk.per_synthetic_class[:top]]
            if lk.per_real_identity:
                row["per_real_identity_top"] = [_native_row(r, metric) for r in lk.per_real_identity[:top]]
            leak_rows.append(row)
            label = ("FMR %g" % lk.fmr) if lk.source == "calibrated" else lk.source
            for rank, (si, ri, sc) in enumerate(zip(lk.pairs["syn_idx"], lk.pairs["real_idx"], lk.pairs["score"]), 1):
                pairs_rows.append(_pair_row(name, label, lk.tau_native, rank, si, ri, sc, stores, datasets, metric))
        rg = dict(res["rg"])
        rg.pop("hist_edges", None)
        rg.pop("hist_counts", None)
        rel = None
        if res["rel"]:
            rel = {k2: v for k2, v in res["rel"].items() if not k2.startswith("hist_")}
        sections.append({
            "name": name, "metric": metric, "native_unit": S.native_unit(metric), "weights": winfo,
            "input_spec": spec.to_dict(),
            "stores": {r: {"path": s.path if hasattr(s, "path") else "", "manifest": _manifest_summary(s.manifest)}
                       for r, s in stores.items()},
            "calibration": res["cal"].to_dict(), "leakage": leak_rows,
            "leakage_control_nonmembers": [x.summary() for x in res["leaks_control"]],
            "membership": res["membership"],
            "identity_relation": rel, "distributions": {"real_vs_generated": rg},
            "plots": _plots(out_dir, name, metric, res)})
        # Gallery: the strongest pairs of this matcher (the pair list at the loosest threshold holds them all).
        loosest = max(res["leaks"], key=lambda x: x.n_pairs)
        nb = res["nb"]
        top_syn = np.argsort(-nb.syn_to_real_scores[:, 0], kind="stable")[: cfg.report.gallery_n]
        for rank, si in enumerate(top_syn.tolist(), 1):
            ri = int(nb.syn_to_real_idx[si, 0])
            sc = float(nb.syn_to_real_scores[si, 0])
            matched = [("FMR %g" % lk.fmr) if lk.source == "calibrated" else lk.source for lk in res["leaks"]
                       if sc > lk.tau]
            item = _pair_row(name, "", None, rank, si, ri, sc, stores, datasets, metric)
            gallery_items.append({"matcher": name, "rank": rank, "syn_idx": si, "real_idx": ri,
                                  "score_native": item["score_native"], "syn_id": item["syn_id"],
                                  "real_id": item["real_id"], "matched_at": ", ".join(matched),
                                  "unit": "distance" if metric == "euclidean" else "cosine"})
        del loosest

    # --- agreement between matchers
    agreement = None
    if len(matchers) > 1:
        f = float(cfg.attack.agreement_fmr or fmrs[0])
        flags_img, flags_pairs = {}, {}
        for name, (res, stores) in raw.items():
            lk = [x for x in res["leaks"] if x.source == "calibrated" and math.isclose(x.fmr, f)]
            if not lk:
                raise AuditError(f"--config.attack.agreement_fmr={f:g} is not among --config.attack.fmrs")
            lk = lk[0]
            srec = stores["synthetic"].record_ids
            mrec = stores["members"].record_ids
            flags_img[name] = set(srec[np.unique(lk.pairs["syn_idx"])].tolist())
            flags_pairs[name] = set(zip(srec[lk.pairs["syn_idx"]].tolist(), mrec[lk.pairs["real_idx"]].tolist()))
        agreement = {"fmr": f, "synthetic_images": D.agreement(flags_img), "pairs": D.agreement(flags_pairs),
                     "flagged_by_all": len(D.flagged_by_all(flags_img))}

    # --- remedy
    remedy = None
    emit = cfg.remedy.emit_filtered_list if emit_filtered_list is None else emit_filtered_list
    if emit:
        remedy = _remedy(cfg, out_dir, raw, datasets, matchers, fmrs)

    # --- files
    W.write_pairs_csv(os.path.join(out_dir, "pairs.csv"), pairs_rows)
    first_res, first_stores = raw[matchers[0]]

    def reader(role, stores):
        def read(row_idx):
            return datasets[role].source.read_rgb(int(stores[role].record_ids[row_idx]))
        return read

    gal = []
    for name in matchers:
        items = [g for g in gallery_items if g["matcher"] == name]
        gal += W.write_gallery(out_dir, items, reader("synthetic", raw[name][1]), reader("members", raw[name][1]))

    cal_desc = {"description": first_res["cal"].method, "source": cfg.calibration.source, "note": first_res["cal"].note}
    plots = sorted({p for s in sections for p in s["plots"].values()})
    report = {
        "schema_version": W.SCHEMA_VERSION,
        "tool": {"name": "synleak_jax", "version": _versions().get("synleak_jax", "0")},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "demo": bool(cfg.demo.enabled), "title": cfg.title, "notes": notes,
        "config": cfg.to_dict(), "versions": _versions(),
        "datasets": {"synthetic": _dataset_entry(datasets["synthetic"], first_stores["synthetic"]),
                     "members": _dataset_entry(datasets["members"], first_stores["members"]),
                     "nonmembers": _dataset_entry(datasets.get("nonmembers"), first_stores.get("nonmembers")),
                     "calibration": cal_desc},
        "matchers": sections, "agreement": agreement, "remedy": remedy,
        "files": {"report_json": "report.json", "pairs_csv": "pairs.csv", "html": "index.html", "plots": plots},
        "gallery": gal, "timings_s": {**timings, "total": time.time() - t_start},
    }
    if demo_info is not None:
        report["demo_info"] = {k: v for k, v in demo_info.items() if k != "synthetic_source_member"}
    rep = W.write_report(out_dir, report)
    logging.info("audit written to %s (%.1f s)", os.path.join(out_dir, "index.html"), time.time() - t_start)
    return rep


def _native_row(r: dict, metric: str) -> dict:
    r = dict(r)
    if r.get("best_score") is not None:
        r["best_score"] = float(S.to_native(metric, r["best_score"]))
    return r


def _manifest_summary(m: dict) -> dict:
    keep = ("model", "weights", "dataset", "preprocessing", "flip", "flip_combine", "metric", "normalized",
            "embedding_dim", "compute_dtype", "storage_dtype", "versions", "created")
    return {k: m.get(k) for k in keep if k in m}


def _pair_row(matcher, label, tau_native, rank, si, ri, sc, stores, datasets, metric) -> dict:
    srec = int(stores["synthetic"].record_ids[si])
    rrec = int(stores["members"].record_ids[ri])
    return {"matcher": matcher, "threshold": label, "tau_native": tau_native, "rank": rank, "syn_idx": int(si),
            "syn_id": datasets["synthetic"].source.describe(srec), "syn_label": int(stores["synthetic"].labels[si]),
            "real_idx": int(ri), "real_id": datasets["members"].source.describe(rrec),
            "real_label": int(stores["members"].labels[ri]), "score_native": float(S.to_native(metric, sc))}


def _remedy(cfg, out_dir, raw, datasets, matchers, fmrs) -> dict:
    rcfg = cfg.remedy
    name = rcfg.matcher or matchers[0]
    if name not in raw:
        raise AuditError(f"--config.remedy.matcher={name!r} is not among --config.matchers")
    f = float(rcfg.fmr or fmrs[0])
    res, stores = raw[name]
    lk = [x for x in res["leaks"] if x.source == "calibrated" and math.isclose(x.fmr, f)]
    if not lk:
        raise AuditError(f"--config.remedy.fmr={f:g} is not among --config.attack.fmrs")
    keep_rows = L.filtered_synthetic(len(stores["synthetic"].record_ids), lk[0], res["nb"])
    src = datasets["synthetic"].source
    keep_rec = stores["synthetic"].record_ids[keep_rows]
    lines = [src.describe(int(r)) for r in keep_rec]
    list_file = os.path.join(out_dir, "filtered_synthetic.txt")
    W.atomic_write(list_file, "\n".join(lines) + ("\n" if lines else ""))
    out = {"matcher": name, "fmr": f, "kept": int(keep_rows.size),
           "removed": int(len(stores["synthetic"].record_ids) - keep_rows.size), "list_file": "filtered_synthetic.txt",
           "note": "rejected synthetic images (undecodable) are neither kept nor removed"}
    if rcfg.export in ("copy", "hardlink"):
        dest = os.path.join(out_dir, "filtered_synthetic")
        root = os.path.abspath(cfg.data.synthetic.path)
        n = 0
        for p in lines:
            ap = os.path.abspath(p)
            if not ap.startswith(root + os.sep) or not os.path.isfile(ap):
                raise AuditError(f"--config.remedy.export={rcfg.export}: {p!r} is not a file under the synthetic "
                                 f"dataset root {root} (export works for image folders only)")
            target = os.path.join(dest, os.path.relpath(ap, root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                os.remove(target)
            if rcfg.export == "hardlink":
                try:
                    os.link(ap, target)
                except OSError:
                    shutil.copy2(ap, target)
            else:
                shutil.copy2(ap, target)
            n += 1
        out["export"] = "filtered_synthetic/"
        out["exported"] = n
    elif rcfg.export == "recordio":
        # The kept records' bytes as stored, with their labels (unlabelled -> 0), through the data layer's writer.
        from synleak_jax.data import recordio

        items = []
        for r in keep_rec.tolist():
            b, lab = src.read_record(int(r))
            items.append((b, max(int(lab), 0)))
        prefix = os.path.join(out_dir, "filtered_synthetic", "train")
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        info = recordio.write_recordio(prefix, items, layout="keys")
        out["export"] = "filtered_synthetic/train.rec"
        out["exported"] = int(info.get("num_images", len(items)))
    elif rcfg.export:
        raise AuditError(f"--config.remedy.export={rcfg.export!r}: use '', 'copy', 'hardlink' or 'recordio'")
    return out
