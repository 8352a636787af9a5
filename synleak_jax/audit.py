"""The audit program (what ``synleak-audit`` runs), top to bottom:

    validate the config  ->  open the data  ->  load the matchers  ->  face and colour-order checks
        ->  ensure embeddings (one door: embed/door.py)
        ->  analyses per matcher (attack/, on the tile engine over a global mesh)  ->  report (report/)

Every config field is checked before the first dataset is listed; datasets are listed (and the FMRs re-checked
against their sizes) before the first image is embedded. Every analysis result is a stage written atomically
under ``<output_dir>/stages/<matcher>/`` and reused on a rerun whose inputs are the same, so an interrupted audit
resumes where it stopped. With several processes (``--config.distributed.*``) every process takes part in every
embedding and every pass over pairs; process 0 writes the report, whose numbers equal a one-process run's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from synleak_jax import config as config_lib
from synleak_jax import memory
from synleak_jax.attack import calibration as cal_lib
from synleak_jax.attack.calibration import MAX_REFINE
from synleak_jax.attack import card as card_lib
from synleak_jax.attack import channel_order
from synleak_jax.attack import distributions, identity, leakage, membership, neighbours, pairs, stats
from synleak_jax.data import face_check, rejects, verification
from synleak_jax.demo import generator
from synleak_jax.models import registry
from synleak_jax.embed import distributed, door
from synleak_jax.files import StageCache, digest, safe_name
from synleak_jax.report import assemble, remedy
from synleak_jax.search.engine import Bins, ConcatRows, PassParams, PassSpec, RowSubset, make_mesh, tile_pass

ROLES = ("synthetic", "members", "nonmembers")


class AuditError(ValueError):
    """A problem with the user's data or settings found while running (the message names the field/file)."""


@dataclasses.dataclass
class MatcherResult:
    """Everything the audit computed for one matcher (typed results of attack/ plus where they came from)."""
    name: str
    metric: str
    weights: dict
    input_spec: dict | None
    sets: dict  # role -> door.EmbeddingSet
    calibration: cal_lib.Calibration
    scan: neighbours.CrossScan
    control: neighbours.Neighbours | None
    leaks: list
    leaks_control: list
    membership: list  # membership.MembershipResult, one per attack score
    identity_relation: dict | None
    real_vs_generated: dict
    timings: dict
    card: object = None  # attack.card.LeakageCard


# ------------------------------------------------------------------------------------------------- program


def run_audit(cfg, *, emit_filtered_list: bool | None = None) -> dict:
    """Runs the audit described by ``cfg`` (a preset of ``synleak_jax/configs``); returns the report dict
    (written to ``cfg.output_dir`` by process 0)."""
    t_start = time.time()
    if emit_filtered_list is not None:
        cfg.remedy.emit_filtered_list = bool(emit_filtered_list)
    config_lib.validate_audit(cfg)
    _initialize_distributed(cfg.distributed)
    out_dir = os.path.abspath(cfg.output_dir)
    writer_process = jax.process_index() == 0
    notes = list(cfg.notes) if cfg.get("notes") else []
    demo_info = _demo_data(cfg, out_dir, notes) if cfg.demo.enabled else None

    datasets = {role: door.open_data(cfg.data[role], f"--config.data.{role}") for role in ROLES}
    datasets = {r: d for r, d in datasets.items() if d is not None}
    if cfg.calibration.source == "verification_bin":
        datasets["calibration"] = _verification_dataset(cfg)
    _check_sizes(cfg, datasets)
    matchers = _load_matchers(cfg, datasets)  # weights are read before any image is looked at
    face_checks = _face_checks(cfg, datasets, StageCache(os.path.join(out_dir, "stages", "face_check"),
                                                         write=writer_process, agree=_all_processes_agree))
    channel_checks = _channel_checks(cfg, datasets, matchers,
                                     StageCache(os.path.join(out_dir, "stages", "channel_order"),
                                                write=writer_process, agree=_all_processes_agree))

    mesh = make_mesh()
    stores_dir = os.path.abspath(cfg.stores_dir) if cfg.stores_dir else os.path.join(out_dir, "stores")
    results: dict[str, MatcherResult] = {}
    for name in config_lib.matcher_names(cfg):
        t0 = time.time()
        sets, matcher = _embeddings(cfg, name, datasets, stores_dir, matchers[name])
        embed_s = time.time() - t0
        cache = StageCache(os.path.join(out_dir, "stages", safe_name(name)), write=writer_process,
                           agree=_all_processes_agree)
        res = analyse_matcher(cfg, name, sets, datasets, mesh, cache, matcher)
        res.timings = {"embed": embed_s, **res.timings}
        results[name] = res

    agreement = _agreement(cfg, results)
    filtered = _remedy(cfg, out_dir, results, datasets) if cfg.remedy.emit_filtered_list and writer_process else None
    report = assemble.build_report(cfg, out_dir, results, datasets, agreement, filtered, notes, demo_info,
                                   t_start, write=writer_process, face_checks=face_checks,
                                   channel_checks=channel_checks)
    if writer_process:
        logging.info("audit written to %s (%.1f s)", os.path.join(out_dir, "index.html"), time.time() - t_start)
    return report


# ------------------------------------------------------------------------------------------------- dry run


def dry_run(cfg) -> dict:
    """What ``run_audit(cfg)`` would do, and how long it would take here, without embedding or writing a store:
    every dataset (kind, records, identities, colour order, a sample of rejects, the face check), every store
    (reused, resumed, computed, or refused), the pairs every stage evaluates, and a time and memory estimate
    from a short measurement on this machine (a few embedding batches per matcher, small tile-engine passes).
    Only the built-in demo writes its image folders (it needs data to list)."""
    t_start = time.time()
    config_lib.validate_audit(cfg)
    _initialize_distributed(cfg.distributed)
    out_dir = os.path.abspath(cfg.output_dir)
    notes: list = []
    if cfg.demo.enabled:
        _demo_data(cfg, out_dir, notes)
    datasets = {role: door.open_data(cfg.data[role], f"--config.data.{role}") for role in ROLES}
    datasets = {r: d for r, d in datasets.items() if d is not None}
    if cfg.calibration.source == "verification_bin":
        datasets["calibration"] = _verification_dataset(cfg)
    _check_sizes(cfg, datasets)
    plan: dict = {"datasets": {}, "matchers": {}, "stages": {}, "notes": notes}
    for role, ds in datasets.items():
        entry = {"kind": ds.kind, "path": ds.path, "records": ds.num_records, "labelled": ds.labelled,
                 "channel_order": ds.channel_order, "channel_order_reason": ds.channel_order_reason}
        if ds.source is not None:
            labels = ds.source.labels() if hasattr(ds.source, "labels") else None
            if labels is not None and ds.labelled:
                entry["identities"] = int(np.unique(np.asarray(labels)[np.asarray(labels) >= 0]).size)
            entry["reject_sample"] = _reject_sample(ds)
        plan["datasets"][role] = entry
    matchers = _load_matchers(cfg, datasets)
    for role, checks in _face_checks(cfg, datasets).items():
        if "not_run" in checks:  # the whole dataset: no images, or the check switched off
            plan["datasets"][role]["face_check_not_run"] = checks["not_run"]
            continue
        # template -> the check's one-line summary (verdict, faces found, near the template), or why it did not run
        plan["datasets"][role]["face_check"] = {
            t: face_check.FaceCheckResult.from_dict(c).summary() if "outcomes" in c else f"not run: {c['not_run']}"
            for t, c in checks.items()}
    stores_dir = os.path.abspath(cfg.stores_dir) if cfg.stores_dir else os.path.join(out_dir, "stores")
    embed_s = 0.0
    dim = None
    for name in config_lib.matcher_names(cfg):
        m_entry: dict = {"stores": {}}
        if config_lib.uses_embeddings(cfg):
            dim = int(door.NpyFile(datasets["synthetic"].path).shape[1])
            m_entry["stores"] = {r: {"status": "given", "path": ds.path} for r, ds in datasets.items()}
        else:
            matcher = matchers[name] or door.load_matcher(name, "", field=f"--config.weights.{name}",
                                                          compute_dtype=cfg.embed.compute_dtype)
            dim = matcher.spec.embedding_dim
            to_embed = 0
            for role, ds in datasets.items():
                st = door.store_status(ds, matcher, cfg.embed, door.store_path(stores_dir, role, ds, name))
                m_entry["stores"][role] = st
                to_embed += st.get("records_to_embed", 0)
            image_ds = next((ds for ds in datasets.values() if ds.source is not None), None)
            if image_ds is not None and to_embed:
                # Embedding memory is measured, not modelled: the peak while a few batches run (the warm-up
                # compiles), above the resident set before them, plus the matcher's variables already loaded.
                memory.reset_peak()
                before = memory.resident_mb()
                rate = door.measure_embedding(image_ds, matcher, cfg.embed)
                m_entry["embed_peak_memory_mb_measured"] = (memory.peak_resident_mb() - before + sum(
                    np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(matcher.variables)) / 2**20)
                m_entry["images_per_s_measured"] = rate
                m_entry["embed_estimate_s"] = to_embed / rate
                embed_s += to_embed / rate
        plan["matchers"][name] = m_entry
    stages = _stage_plan(cfg, datasets)
    rates = _measure_engine(dim or 512)
    analysis_s = 0.0
    for stage, (n_pairs, kinds) in stages.items():
        secs = sum(n_pairs / rates[k] for k in kinds) * len(plan["matchers"])
        plan["stages"][stage] = {"pairs": n_pairs, "passes": kinds, "estimate_s": secs}
        analysis_s += secs
    plan["engine_pairs_per_s_measured"] = rates
    analyses_mb = _memory_estimate_mb(cfg, datasets, dim or 512)
    embed_mb = max((m.get("embed_peak_memory_mb_measured", 0.0) for m in plan["matchers"].values()), default=0.0)
    plan["estimate"] = {"embed_s": embed_s, "analyses_s": analysis_s, "total_s": embed_s + analysis_s,
                        "analyses_memory_mb": analyses_mb, "embed_memory_mb_measured": embed_mb,
                        "peak_memory_mb": max(analyses_mb, embed_mb), "machine": _machine()}
    plan["dry_run_seconds"] = time.time() - t_start
    return plan


def format_plan(plan: dict) -> str:
    """The dry run's plan as text for the terminal."""
    lines = ["DRY RUN: nothing embedded, no store written", "", "datasets:"]
    for role, d in plan["datasets"].items():
        extra = f", {d['identities']:,} identities" if d.get("identities") is not None else ""
        colour = "" if d["kind"] == "embeddings" else (  # features as given: no pixels, no colour order
            f", colour order {d['channel_order']}" + (f" ({d['channel_order_reason']})"
                                                       if d.get("channel_order_reason") else ""))
        lines.append(f"  {role}: kind={d['kind']} {d['path']} — {d['records']:,} records{extra}{colour}")
        rs = d.get("reject_sample")
        if rs:
            lines.append(f"    sample of {rs['sampled']} records: {rs['rejected']} rejected"
                         + (f" {rs['reasons']}" if rs["reasons"] else ""))
        if d.get("face_check_not_run"):
            lines.append(f"    face check: not run ({d['face_check_not_run']})")
        for template, fc in (d.get("face_check") or {}).items():
            lines.append(f"    face check vs {template}: {fc}")
    lines.append("stores:")
    for name, m in plan["matchers"].items():
        for role, st in m["stores"].items():
            more = f" ({st['chunks_done']}/{st['chunks_total']} chunks done)" if "chunks_total" in st else ""
            lines.append(f"  {name} / {role}: {st['status']}{more} {st.get('path', '')}")
            for diff in st.get("differences", []):
                lines.append(f"      differs: {diff}")
            if st.get("note"):
                lines.append(f"      !! {st['note']}")
        if "images_per_s_measured" in m:
            lines.append(f"  {name}: {m['images_per_s_measured']:.1f} images/s measured here -> embedding "
                         f"{m['embed_estimate_s']:.0f} s; {m['embed_peak_memory_mb_measured']:.0f} MB measured while "
                         "embedding")
    lines.append("stages (per matcher):")
    for stage, st in plan["stages"].items():
        lines.append(f"  {stage}: {st['pairs']:,} pairs, passes {', '.join(st['passes'])} -> {st['estimate_s']:.0f} s")
    e = plan["estimate"]
    lines.append(f"estimate on this machine ({e['machine']}): embedding {e['embed_s']:.0f} s + analyses "
                 f"{e['analyses_s']:.0f} s = {e['total_s']:.0f} s; peak memory above the runtime about "
                 f"{e['peak_memory_mb']:.0f} MB (analyses {e['analyses_memory_mb']:.0f} MB from the engine's block "
                 f"rules, embedding {e['embed_memory_mb_measured']:.0f} MB measured)")
    return "\n".join(lines)


def _reject_sample(ds, n: int = 16) -> dict:
    """Decodes a seeded sample of records: how many decode, and the reasons of those that do not."""
    ids = np.random.default_rng(0).choice(len(ds.source), min(n, len(ds.source)), replace=False)
    reasons: dict[str, int] = {}
    for i in ids.tolist():
        try:
            ds.source.read_rgb(int(i), size=(8, 8), channel_order=ds.channel_order)
        except rejects.RecordError as e:
            reasons[rejects.REASONS.get(e.code, str(e.code))] = reasons.get(rejects.REASONS.get(e.code, str(e.code)),
                                                                            0) + 1
        except (OSError, ValueError) as e:
            reasons[type(e).__name__] = reasons.get(type(e).__name__, 0) + 1
    return {"sampled": int(len(ids)), "rejected": int(sum(reasons.values())), "reasons": reasons}


def _stage_plan(cfg, datasets: dict) -> dict:
    """stage -> (pairs evaluated, pass kinds), from the listed sizes (before rejects)."""
    n = {r: ds.num_records for r, ds in datasets.items()}
    out = {}
    if cfg.calibration.source != "verification_bin":
        nc, _ = _calibration_size(cfg, datasets)
        out["calibration"] = (nc * (nc - 1) // 2, ["key_histogram"])  # one pass; a missed bin: one more
    out["members_x_synthetic"] = (n["members"] * n["synthetic"], ["scan"])
    if "nonmembers" in n:
        out["nonmembers_x_synthetic"] = (n["nonmembers"] * n["synthetic"], ["topk_both"])
    mode = str(cfg.attack.identity_relation).lower()
    labelled = datasets["synthetic"].labelled and datasets["members"].labelled
    if mode == "on" or (mode == "auto" and labelled):
        out["identity_relation"] = (n["members"] * n["synthetic"], ["histogram", "counts"])
    return out


def _measure_engine(dim: int, rows: int = 4096, cols: int = 8192) -> dict:
    """Pairs per second of each pass kind on this machine (random unit vectors, second call timed)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, dim)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a[: cols // 2].repeat(2, axis=0)
    lab = np.arange(rows) // 8
    bins = Bins(-1.01, 1.01, 1 << 16)
    kinds = {
        "histogram": (a, a, PassSpec(pairs="upper", labels=True, nbins=1 << 16, moments=True), PassParams(bins=bins)),
        "key_histogram": (a, a, PassSpec(pairs="upper", labels=True, key_hist=True, key_refine=MAX_REFINE),
                          PassParams(key_refine_bins=np.arange(48000, 48000 + MAX_REFINE))),
        "scan": (a, b, PassSpec(row_k=10, col_k=10, n_taus=4, nbins=256, moments=True),
                 PassParams(taus=np.asarray([0.1, 0.2, 0.3, 0.4], np.float32), bins=Bins(-1.01, 1.01, 256))),
        "topk_both": (a, b, PassSpec(row_k=10, col_k=10), PassParams()),
        "counts": (a, b, PassSpec(n_taus=4), PassParams(taus=np.asarray([0.1, 0.2, 0.3, 0.4], np.float32))),
    }
    out = {}
    for kind, (x, y, spec, params) in kinds.items():
        kw = {"row_labels": lab} if spec.labels else {}
        for _ in range(2):
            t = time.perf_counter()
            tile_pass(x, x if spec.pairs == "upper" else y, spec, params, **kw)
            dt = time.perf_counter() - t
        pairs = rows * (rows - 1) / 2 if spec.pairs == "upper" else rows * y.shape[0]
        out[kind] = pairs / dt
    return out


def _memory_estimate_mb(cfg, datasets: dict, dim: int) -> float:
    """Peak memory of the analyses above the runtime (MB), from the engine's block rules: every embedding set
    (stores and .npy files are memory-mapped and every pass reads them whole, so all their pages become
    resident; a ``real_all`` calibration concatenates members and non-members once more), plus the largest pass's
    copy of its resident column set (the smaller set, up to the engine's 1 GiB CPU budget, else a 16 MiB chunk;
    device memory on an accelerator, counted here all the same), its streamed row group and the top-k lists of
    both directions. Checked against a measured audit in BENCHMARKS.md ("The dry run's memory estimate")."""
    n = {r: ds.num_records for r, ds in datasets.items()}
    k = int(max(cfg.attack.k, cfg.attack.membership_topk))
    row_bytes = dim * 4
    stored_bytes = dim * (2 if cfg.embed.storage_dtype == "float16" and not config_lib.uses_embeddings(cfg) else 4)
    group_rows = 16 * 1024

    def pass_mb(n_rows, n_cols):
        cols = n_cols * row_bytes if n_cols * row_bytes <= 1 << 30 else 16 << 20
        return (cols + group_rows * row_bytes + (n_rows + n_cols) * k * 8) / 2**20

    resident = sum(n.values()) * stored_bytes / 2**20
    nc, _ = _calibration_size(cfg, datasets) if "calibration" not in datasets else (0, None)
    if cfg.calibration.source == "real_all" and "nonmembers" in n:
        resident += nc * row_bytes / 2**20
    a, b = sorted((n["members"], n["synthetic"]))
    peaks = [pass_mb(b, a), pass_mb(nc, nc)]
    if "nonmembers" in n:
        a, b = sorted((n["nonmembers"], n["synthetic"]))
        peaks.append(pass_mb(b, a))
    return float(resident + max(peaks))


def _machine() -> str:
    d = jax.devices()[0]
    return f"{jax.device_count()} x {d.device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores"


def _initialize_distributed(d) -> None:
    distributed.initialize(d.coordinator_address or None, d.num_processes or None,
                           d.process_id if d.process_id >= 0 else None, mode=d.mode)


def _all_processes_agree(flag: bool) -> bool:
    """True only when every process passes True (a stage is reused by all processes or by none)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.min(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))))


# ---------------------------------------------------------------------------------------------------- data


def _demo_data(cfg, out_dir: str, notes: list) -> dict:
    """The built-in demo makes its three image folders (once; reused when finished)."""
    root = os.path.join(out_dir, "demo_data")
    if jax.process_index() == 0:
        info = generator.make_demo_data(root, n_members=cfg.demo.n_members, n_synthetic=cfg.demo.n_synthetic,
                                        steps=cfg.demo.steps, bandwidth=cfg.demo.bandwidth, seed=cfg.demo.seed)
    distributed.barrier("synleak-demo-data")
    if jax.process_index() != 0:
        info = generator.make_demo_data(root, n_members=cfg.demo.n_members, n_synthetic=cfg.demo.n_synthetic,
                                        steps=cfg.demo.steps, bandwidth=cfg.demo.bandwidth, seed=cfg.demo.seed)
    for role in ROLES:
        cfg.data[role].kind = "flat_folder"
        cfg.data[role].path = os.path.join(root, role)
    g = info["generator"]
    if not cfg.title:  # the demo's data, so the demo's title (a preset never titles data the user gives)
        cfg.title = (f"synleak_jax DEMO audit: tiny generator trained on {cfg.demo.n_members} LFW crops, "
                     f"matcher {', '.join(config_lib.matcher_names(cfg))}")
    notes.append(f"DEMO: synthetic images from a {g['kind']} (latent dim {g['latent_dim']}) trained for "
                 f"{cfg.demo.steps} steps on the {cfg.demo.n_members} member images (final training MSE "
                 f"{g['final_train_mse']:.5f}); latent sampling bandwidth {cfg.demo.bandwidth}. Images are 25x25 "
                 f"LFW crops from scikit-image, resized to 32x32 and then to the matcher's input: far below the "
                 f"resolution face matchers are built for, so the absolute numbers are only illustrative.")
    return info


def _verification_dataset(cfg) -> door.Dataset:
    c = cfg.calibration
    try:
        vp = verification.load_bin(c.path)
    except Exception as e:  # the reader's message names the file
        raise AuditError(f"--config.calibration.path: {e}") from None
    ds = door.Dataset(field="--config.calibration", name=vp.name, kind="verification_bin", path=c.path,
                      source=vp.images, labelled=False, label_from="index", align=c.align, align_policy="largest",
                      max_pixels=0, channel_order="auto", description=f"verification pairs of {vp.name}")
    ds.issame = vp.issame  # pairs (2i, 2i + 1)
    return ds


def _face_templates(cfg) -> dict[str, str]:
    """Alignment template -> the matcher whose input spec names it (one face check per template)."""
    out = {}
    for name in config_lib.matcher_names(cfg):
        spec = registry.get_spec(name)
        out.setdefault(spec.alignment, name)
    return out


def _face_checks(cfg, datasets: dict, cache: StageCache | None = None) -> dict:
    """MTCNN face check of every image dataset (seeded sample), per alignment template of the matchers: the
    share of images that are one face near the template. Warns loudly; ``require_faces`` makes a failed check
    fatal. Returns role -> {template: FaceCheckResult.to_dict()} (or the reason it did not run). With ``cache``
    a rerun reuses a check of the same data listing, template, alignment, colour order and settings (the demo's
    three checks cost 6 s of a 14 s rerun)."""
    fc = cfg.face_check
    out = {}
    if config_lib.uses_embeddings(cfg):
        return {r: {"not_run": "audited from embeddings: no images"} for r in datasets}
    templates = _face_templates(cfg)
    settings = face_check.FaceCheckConfig(sample_size=int(fc.sample_size), seed=int(fc.seed),
                                          tolerance=float(fc.tolerance))
    for role, ds in datasets.items():
        if not fc.enabled:
            out[role] = {"not_run": "--config.face_check.enabled=false"}
            continue
        if ds.source is None:
            out[role] = {"not_run": f"kind={ds.kind}: no images to look at"}
            continue
        out[role] = {}
        for template in templates:
            key = digest("face_check", ds.source.fingerprint(), template, ds.align, ds.channel_order,
                         dataclasses.asdict(settings))
            hit = cache.load(f"{role}_{template}", key) if cache is not None else None
            if hit:
                res = face_check.FaceCheckResult.from_dict(hit[0])
            else:
                try:
                    res = face_check.check_faces(_ChannelView(ds.source, ds.channel_order), template,
                                                 aligned=ds.align == "none", config=settings)
                except FileNotFoundError as e:  # MTCNN weights missing: the check cannot run; say so, go on
                    out[role][template] = {"not_run": str(e)}
                    logging.warning("face check of %s not run: %s", ds.field, e)
                    continue
                if cache is not None:
                    cache.save(f"{role}_{template}", key, res.to_dict())
            out[role][template] = res.to_dict()
            label = f"{role} ({ds.path}, vs the {template} template)"
            if cfg.data[role].require_faces if role in ROLES else False:  # fatal: the error line says it all
                face_check.require_faces(res, label, f"{ds.field}.require_faces")
            warning = face_check.format_warning(res, label)
            if warning and jax.process_index() == 0:
                logging.warning("\n%s", warning)
    return out


def _channel_checks(cfg, datasets: dict, matchers: dict, cache: StageCache) -> dict:
    """Colour-order check of every labelled image dataset with the first matcher: a seeded sample embedded as
    given and with red and blue swapped (attack/channel_order.py). When the other order separates genuine from
    impostor pairs clearly better: with channel_order=auto the dataset switches to it (said loudly, recorded in
    the report and the store manifest); with an explicit order a loud warning. role -> result dict."""
    cc = cfg.channel_check
    out: dict = {}
    if config_lib.uses_embeddings(cfg) or not cc.enabled:
        return out
    name = config_lib.matcher_names(cfg)[0]
    matcher = matchers[name]
    for role, ds in datasets.items():
        if ds.source is None or not ds.labelled or not hasattr(ds.source, "labels"):
            continue
        ids = channel_order.sample_identities(ds.source.labels(), int(cc.identities), int(cc.images_per_identity),
                                              int(cc.seed))
        if ids.size == 0:
            out[role] = {"not_run": "fewer than two identities with enough images"}
            continue
        given = ds.channel_order
        other = "bgr" if given == "rgb" else "rgb"
        key = digest("channel_check", ds.source.fingerprint(), matcher.weights.get("sha256"), name, given,
                     ids.tolist(), cc.to_dict())
        requested = cfg.data[role].channel_order if role in ROLES else "auto"
        hit = cache.load(f"{role}", key)
        if hit:
            # The key holds the resolved order, not the request: take this run's request, never the cached one
            # (an explicit rgb after an auto run with the same resolution must warn, not switch).
            result = {**hit[0], "requested": requested, "applied": given}
        else:
            rid_a, emb_a = door.embed_records(ds, matcher, ids, channel_order=given, batch_size=int(cfg.embed.batch_size))
            rid_b, emb_b = door.embed_records(ds, matcher, ids, channel_order=other, batch_size=int(cfg.embed.batch_size))
            both = np.intersect1d(rid_a, rid_b)
            labels = np.asarray(ds.source.labels(), np.int64)[both]
            check = channel_order.compare_channel_orders(
                emb_a[np.isin(rid_a, both)], emb_b[np.isin(rid_b, both)], labels, metric=matcher.metric,
                given_order=given)
            result = {**check.to_dict(), "matcher": name, "requested": requested, "applied": given}
            cache.save(f"{role}", key, result)
        if result.get("other_clearly_better"):
            if requested == "auto":
                ds.channel_order = result["other_order"]
                ds.channel_order_reason = f"channel-order check: {result['reading']} (auto switched to it)"
                result["applied"] = result["other_order"]
                msg = f"{ds.field}: {result['reading']}; channel_order=auto: using {result['other_order']}"
            else:
                msg = (f"{ds.field}: {result['reading']}; you set channel_order={requested}: check the release "
                       f"(set {ds.field}.channel_order={result['other_order']} if it is {result['other_order']})")
            if jax.process_index() == 0:
                logging.warning("\n%s\n!! COLOUR ORDER: %s\n%s", "!" * 100, msg, "!" * 100)
        out[role] = result
    return out


class _ChannelView:
    """A source whose read_rgb applies the dataset's resolved colour order (what the matcher will see)."""
    def __init__(self, source, order: str):
        self._source = source
        self._order = order

    def __len__(self) -> int:
        return len(self._source)

    def describe(self, i: int) -> str:
        return self._source.describe(i)

    def read_rgb(self, i: int, *args, **kwargs):
        return self._source.read_rgb(i, *args, channel_order=self._order, **kwargs)


def _calibration_size(cfg, datasets) -> tuple[int, object]:
    """(images, labels or None) of the calibration set as listed (before rejects)."""
    src = cfg.calibration.source
    roles = {"members": ["members"], "nonmembers": ["nonmembers"],
             "real_all": [r for r in ("members", "nonmembers") if r in datasets]}.get(src, [])
    n, labels = 0, []
    for r in roles:
        ds = datasets[r]
        n += ds.num_records
        labels.append(ds.source.labels() if ds.labelled and ds.source is not None and hasattr(ds.source, "labels")
                      else None)
    if cfg.calibration.max_images:
        n = min(n, int(cfg.calibration.max_images))
        return n, None
    if labels and all(lb is not None for lb in labels) and len(labels) == 1:
        return n, labels[0]
    return n, None


def _check_sizes(cfg, datasets) -> None:
    """FMRs against the calibration set's size, right after listing (before anything is embedded)."""
    if cfg.calibration.source == "verification_bin":
        return
    n, labels = _calibration_size(cfg, datasets)
    try:
        cal_lib.check_fmrs([float(f) for f in cfg.attack.fmrs], pairs.pair_counts(labels, n)[0])
    except ValueError as e:
        raise AuditError(f"--config.attack.fmrs: {e} (calibration set: {cfg.calibration.source}, {n:,} images)"
                         ) from None


def _load_matchers(cfg, datasets: dict) -> dict:
    """matcher name -> loaded Matcher, or None where none is needed (an audit from embeddings; every dataset a
    store and no weights given: the stores' manifests name their matcher). Loaded once, before any image is read,
    so a bad weights file is a one-line error naming its --config.weights field before minutes of face checks."""
    out = {}
    for name in config_lib.matcher_names(cfg):
        needed = not config_lib.uses_embeddings(cfg) and (
            any(ds.kind != "store" for ds in datasets.values()) or cfg.weights.get(name, ""))
        out[name] = door.load_matcher(name, cfg.weights.get(name, ""), field=f"--config.weights.{name}",
                                      compute_dtype=cfg.embed.compute_dtype) if needed else None
    return out


def _embeddings(cfg, name: str, datasets: dict, stores_dir: str, matcher):
    """role -> EmbeddingSet for matcher ``name`` (embedding image datasets into stores through the door);
    ``matcher`` from _load_matchers."""
    if config_lib.uses_embeddings(cfg):
        metric = cfg.embeddings.metric
        return {r: door.open_embeddings_file(ds, metric) for r, ds in datasets.items()}, None
    sets = {}
    for role, ds in datasets.items():
        if ds.kind == "store":
            sets[role] = door.open_store(ds, matcher)
            if matcher is None:
                model = (sets[role].manifest.get("model") or {}).get("name")
                if model != name:
                    raise AuditError(f"{ds.field}.path={ds.path!r}: the store was made by matcher {model!r}, not "
                                     f"{name!r} (--config.matchers)")
        else:
            sets[role] = door.ensure_store(ds, matcher, cfg.embed, door.store_path(stores_dir, role, ds, name))
    return sets, matcher


# ------------------------------------------------------------------------------------------------ analyses


def _labels(es: door.EmbeddingSet, ds: door.Dataset):
    """Identity labels of a set's rows, or None for unlabelled sets. With ``label_from="name"`` the class
    folder names are the identity ids (SFace/IDnet class folders named by CASIA label: "0", ..., "10571",
    whose sorted order differs from their numeric order)."""
    if not ds.labelled:
        return None
    lab = np.asarray(es.labels, np.int64)
    if ds.label_from == "index":
        return lab
    names = getattr(ds.source, "class_names", None)
    if not names:
        raise AuditError(f"{ds.field}.label_from=name needs an image folder with class folders")
    try:
        ids = np.asarray([int(n) for n in names], np.int64)
    except ValueError:
        bad = next(n for n in names if not n.strip().lstrip("-").isdigit())
        raise AuditError(f"{ds.field}.label_from=name: class folder {bad!r} is not an integer id") from None
    return np.where(lab >= 0, ids[np.maximum(lab, 0)], -1)


def _fingerprints(sets: dict) -> dict:
    return {r: [(s.manifest.get("dataset") or {}).get("fingerprint"), (s.manifest.get("weights") or {}).get("sha256"),
                len(s), s.manifest.get("flip"), s.manifest.get("preprocessing")] for r, s in sets.items()}


def _calibration_input(cfg, sets: dict, datasets: dict):
    """(embeddings, labels or None, description, note) of the calibration set."""
    c = cfg.calibration
    note = c.note
    if c.source in ("members", "nonmembers"):
        x, lab = sets[c.source].embeddings, _labels(sets[c.source], datasets[c.source])
        desc = f"all image pairs of the {c.source} set ({datasets[c.source].name})"
    else:  # real_all
        parts = [r for r in ("members", "nonmembers") if r in sets]
        x = ConcatRows([sets[r].embeddings for r in parts])
        labs = [_labels(sets[r], datasets[r]) for r in parts]
        lab = None
        if all(lb is not None for lb in labs):
            off, shifted = 0, []
            for lb in labs:  # labels of different sets are different identity spaces unless configured shared
                shifted.append(lb if c.shared_label_space else np.where(lb >= 0, lb + off, lb))
                off += int(lb.max(initial=-1)) + 1
            lab = np.concatenate(shifted)
        desc = "all image pairs of the real images (" + " + ".join(datasets[r].name for r in parts) + ")"
    if c.max_images and x.shape[0] > c.max_images:
        sel = np.sort(np.random.default_rng(c.seed).choice(x.shape[0], c.max_images, replace=False))
        x = RowSubset(x, sel)
        lab = None if lab is None else lab[sel]
        desc += f", a seeded random subset of {c.max_images:,} images"
    if lab is None:
        desc += "; no identity labels: every image counted as its own identity"
        note = (note + " " if note else "") + (
            "Without identity labels every pair counts as an impostor pair; pairs of the same person then inflate "
            "tau, which makes the match counts conservative (fewer matches).")
    return x, lab, desc, note


def _calibrate(cfg, name: str, metric: str, sets: dict, datasets: dict, mesh, cache: StageCache, matcher
               ) -> cal_lib.Calibration:
    fmrs = [float(f) for f in cfg.attack.fmrs]
    fixed = {}
    spec = matcher.spec if matcher is not None else None
    if cfg.attack.published_threshold and spec is not None and spec.threshold is not None:
        fixed[f"{name} published {spec.threshold:g}"] = float(spec.threshold)
    key = digest("calibration/float32-key", _fingerprints(sets), fmrs, cfg.calibration.to_dict(),
                 sorted(fixed.items()))
    hit = cache.load("calibration", key)
    if hit:
        return _calibration_from_cache(*hit)
    if cfg.calibration.source == "verification_bin":
        imp, gen = _verification_scores(sets["calibration"], datasets["calibration"].issame, metric)
        desc = f"the pairs of the verification bin {os.path.basename(cfg.calibration.path)}"
        try:
            cal = cal_lib.calibrate_scores(imp, gen, fmrs, metric=metric, fixed_thresholds=fixed,
                                           note=cfg.calibration.note,
                                           method=f"{imp.size:,} impostor and {gen.size:,} genuine pairs of a "
                                                  "verification bin (exact order statistic)")
        except ValueError as e:
            raise AuditError(f"--config.attack.fmrs: {e} (calibration set: {desc})") from None
    else:
        x, lab, desc, note = _calibration_input(cfg, sets, datasets)
        try:
            cal_lib.check_fmrs(fmrs, pairs.pair_counts(lab, x.shape[0])[0])
            cal = cal_lib.calibrate_embeddings(x, lab, fmrs, metric=metric, fixed_thresholds=fixed, note=note,
                                               mesh=mesh)
        except ValueError as e:  # impossible FMR for this calibration set (after rejects): a config problem
            raise AuditError(f"--config.attack.fmrs: {e} (calibration set: {desc})") from None
    cal.method = f"{cal.method} — {desc}"
    cache.save("calibration", key, *_calibration_to_cache(cal))
    return cal


def _calibration_to_cache(cal: cal_lib.Calibration):
    value = {k: getattr(cal, k) for k in ("metric", "n_impostor", "n_genuine", "eer", "impostor_mean", "impostor_std",
                                          "genuine_mean", "genuine_std", "method", "note")}
    value["thresholds"] = [t.to_dict() for t in cal.thresholds]
    return value, {"hist_edges": cal.hist_edges, "hist_impostor": cal.hist_impostor, "hist_genuine": cal.hist_genuine}


def _calibration_from_cache(value, arrays) -> cal_lib.Calibration:
    v = dict(value)
    v["thresholds"] = [cal_lib.Threshold(**t) for t in v["thresholds"]]
    for k in ("impostor_mean", "impostor_std"):
        v[k] = float("nan") if v[k] is None else v[k]
    return cal_lib.Calibration(**v, **arrays)


def _verification_scores(es: door.EmbeddingSet, issame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 scores of the verification pairs whose two images were both embedded (rejects drop the pair)."""
    rows = {int(r): i for i, r in enumerate(es.record_ids)}
    emb = np.asarray(es.embeddings[0:len(es)], np.float64)
    ia, ib, same = [], [], []
    for p in range(len(issame)):
        a, b = rows.get(2 * p), rows.get(2 * p + 1)
        if a is not None and b is not None:
            ia.append(a)
            ib.append(b)
            same.append(bool(issame[p]))
    if not ia:
        raise AuditError("--config.calibration.path: no verification pair has both images embedded (see the "
                         "calibration store's rejects)")
    ea, eb = emb[ia], emb[ib]
    sc = (ea * eb).sum(1) if metric == "cosine" else -np.linalg.norm(ea - eb, axis=1)
    same = np.asarray(same)
    return sc[~same], sc[same]


def _scan(cfg, sets: dict, cal: cal_lib.Calibration, mesh, cache: StageCache, metric: str) -> neighbours.CrossScan:
    """Members x synthetic in one pass: neighbours both ways, real-vs-generated tails, moments, histogram."""
    k = int(max(cfg.attack.k, cfg.attack.membership_topk))
    taus = [t.tau for t in cal.thresholds]
    key = digest("scan", _fingerprints({r: sets[r] for r in ("synthetic", "members")}), k, taus, metric)
    hit = cache.load("real_vs_synthetic", key)
    if hit:
        v, a = hit
        nb = neighbours.Neighbours(metric, a["fs"], a["fi"], a["rs"], a["ri"])
        hist = None
        if "hist_counts" in a:
            from synleak_jax.attack.pairs import Bins, PairHistogram
            hist = PairHistogram(Bins(v["hist_lo"], v["hist_hi"], int(v["hist_nbins"])), a["hist_counts"],
                                 np.zeros_like(a["hist_counts"]), a["sums2"])
        return neighbours.CrossScan(nb, int(v["n_pairs"]), np.asarray(taus, np.float32), a["above"], a["sums"], hist)
    scan = neighbours.scan_real_vs_synthetic(sets["members"].embeddings, sets["synthetic"].embeddings, metric=metric,
                                             k=k, taus=taus, mesh=mesh, progress="members x synthetic")
    nb = scan.neighbours
    value = {"n_pairs": scan.n_pairs, "k": k}
    arrays = {"fs": nb.syn_to_real_scores, "fi": nb.syn_to_real_idx, "rs": nb.real_to_syn_scores,
              "ri": nb.real_to_syn_idx, "above": scan.above, "sums": scan.sums}
    if scan.hist is not None:
        value.update(hist_lo=scan.hist.bins.lo, hist_hi=scan.hist.bins.hi, hist_nbins=scan.hist.bins.nbins)
        arrays.update(hist_counts=scan.hist.impostor, sums2=scan.hist.sums)
    cache.save("real_vs_synthetic", key, value, arrays)
    return scan


def _control(cfg, sets: dict, mesh, cache: StageCache, metric: str) -> neighbours.Neighbours | None:
    """Non-members x synthetic: the neighbours of the control (membership scores, control counts)."""
    if "nonmembers" not in sets:
        return None
    k = int(max(cfg.attack.k, cfg.attack.membership_topk))
    key = digest("control", _fingerprints({r: sets[r] for r in ("synthetic", "nonmembers")}), k, metric,
                 cfg.attack.precision)
    hit = cache.load("nonmembers_x_synthetic", key)
    if hit:
        a = hit[1]
        return neighbours.Neighbours(metric, a["fs"], a["fi"], a["rs"], a["ri"])
    nb = neighbours.neighbours_both_ways(sets["nonmembers"].embeddings, sets["synthetic"].embeddings, metric=metric,
                                         k=k, mesh=mesh, precision=cfg.attack.precision,
                                         progress="non-members x synthetic")
    cache.save("nonmembers_x_synthetic", key, {"k": k}, {"fs": nb.syn_to_real_scores, "fi": nb.syn_to_real_idx,
                                                         "rs": nb.real_to_syn_scores, "ri": nb.real_to_syn_idx})
    return nb


def analyse_matcher(cfg, name: str, sets: dict, datasets: dict, mesh, cache: StageCache, matcher) -> MatcherResult:
    """Every analysis for one matcher, from its embedding sets (arrays in, typed results out)."""
    metric = sets["synthetic"].metric
    timings = {}
    t0 = time.time()
    cal = _calibrate(cfg, name, metric, sets, datasets, mesh, cache, matcher)
    timings["calibration"] = time.time() - t0

    t0 = time.time()
    scan = _scan(cfg, sets, cal, mesh, cache, metric)
    timings["members_x_synthetic"] = time.time() - t0
    t0 = time.time()
    control = _control(cfg, sets, mesh, cache, metric)
    timings["nonmembers_x_synthetic"] = time.time() - t0

    syn_labels = _labels(sets["synthetic"], datasets["synthetic"])
    mem_labels = _labels(sets["members"], datasets["members"])
    leaks = [leakage.leakage_at(scan.neighbours, t.tau, fmr=t.fmr, source=t.source, real_labels=mem_labels,
                                syn_labels=syn_labels) for t in cal.thresholds]
    # Control: the same counts against the held-out non-members. A generator that only produces plausible faces
    # matches members and non-members alike; leakage shows as members matched far more often.
    leaks_control = []
    mem_results = []
    if control is not None:
        non_labels = _labels(sets["nonmembers"], datasets["nonmembers"])
        leaks_control = [leakage.leakage_at(control, t.tau, fmr=t.fmr, source=t.source, real_labels=non_labels)
                         for t in cal.thresholds]
        kk = int(cfg.attack.membership_topk)
        for how in ("max", "topk_mean"):
            ms = membership.attack_scores(scan.neighbours.real_to_syn_scores, how, kk)
            ns = membership.attack_scores(control.real_to_syn_scores, how, kk)
            label = "max similarity to any synthetic image" if how == "max" else f"mean of top-{kk} similarities"
            mem_results.append(membership.membership_metrics(ms, ns, score_name=label,
                                                             fprs=tuple(cfg.attack.membership_fprs)))

    rel = None
    mode = str(cfg.attack.identity_relation).lower()
    want_rel = (syn_labels is not None and mem_labels is not None) if mode == "auto" else mode == "on"
    if want_rel:
        if syn_labels is None or mem_labels is None:
            raise AuditError("--config.attack.identity_relation=on needs labelled synthetic and member sets "
                             "(image folders <class>/<image> or RecordIO, data.*.labelled=True) whose class ids "
                             "name the same identities")
        t0 = time.time()
        key = digest("rel", _fingerprints(sets), [t.tau for t in cal.thresholds], cfg.attack.nbins,
                     cfg.data.synthetic.label_from, cfg.data.members.label_from)
        hit = cache.load("identity_relation", key)
        if hit:
            rel = hit[0]
        else:
            r = identity.identity_relation(sets["members"].embeddings, mem_labels, sets["synthetic"].embeddings,
                                           syn_labels, cal, metric=metric, nbins=int(cfg.attack.nbins), mesh=mesh)
            rel = r.to_dict()
            rel.update(hist_edges=r.hist.bins.edges().tolist(), hist_genuine=r.hist.genuine.tolist(),
                       hist_impostor=r.hist.impostor.tolist())
            cache.save("identity_relation", key, rel)
        timings["identity_relation"] = time.time() - t0
    t0 = time.time()
    leakage_card = _card(cfg, name, cal, leaks, leaks_control, mem_results, sets, datasets, mesh, cache)
    timings["card"] = time.time() - t0
    return MatcherResult(
        name=name, metric=metric, weights=(sets["synthetic"].manifest.get("weights") or {}),
        input_spec=matcher.spec.to_dict() if matcher is not None else None, sets=sets, calibration=cal, scan=scan,
        control=control, leaks=leaks, leaks_control=leaks_control, membership=mem_results, identity_relation=rel,
        real_vs_generated=distributions.real_vs_generated(scan, cal), timings=timings, card=leakage_card)


def _fmr_bootstraps(cfg, cal, sets: dict, datasets: dict, mesh, cache: StageCache) -> list:
    """Identity bootstrap of the achieved FMR at every threshold (labelled calibration set, report.bootstrap):
    per-identity impostor pairs above each tau from one pass over all ordered pairs of the calibration set
    (each pair counted for both of its identities)."""
    if not cfg.report.bootstrap or cfg.calibration.source == "verification_bin":
        return [None] * len(cal.thresholds)
    x, lab, _, _ = _calibration_input(cfg, sets, datasets)
    if lab is None:
        return [None] * len(cal.thresholds)
    taus = [t.tau for t in cal.thresholds]
    key = digest("fmr_bootstrap", _fingerprints(sets), cfg.calibration.to_dict(), taus)
    hit = cache.load("fmr_bootstrap_counts", key)
    if hit:
        per_row = hit[1]["per_row"]
    else:
        per_row, _ = pairs.count_above(x, lab, cal.metric, taus, y=x, y_labels=lab, mesh=mesh,
                                       progress="calibration: impostors above tau per image (bootstrap)")
        per_row = per_row[:, :, 0]
        cache.save("fmr_bootstrap_counts", key, {}, {"per_row": per_row})
    known = lab >= 0
    ids, inverse, sizes = np.unique(lab[known], return_inverse=True, return_counts=True)
    n = int(known.sum())
    pairs_per_identity = sizes.astype(np.int64) * (n - sizes)
    out = []
    for t_i in range(len(taus)):
        above = np.bincount(inverse, weights=per_row[known, t_i], minlength=ids.size).astype(np.int64)
        out.append(stats.identity_bootstrap_fmr(above, pairs_per_identity,
                                                replicates=int(cfg.report.bootstrap_replicates),
                                                confidence=float(cfg.report.confidence)))
    return out


def _card(cfg, name: str, cal, leaks, leaks_control, mem_results, sets, datasets, mesh, cache) -> object:
    """The leakage card (attack/card.py): every count with its interval, the member-vs-control test, the
    membership metrics with intervals, the epsilon bound and what the numbers cannot say."""
    boots = _fmr_bootstraps(cfg, cal, sets, datasets, mesh, cache)
    counts = []
    for i, (t, lk) in enumerate(zip(cal.thresholds, leaks)):
        ctrl = leaks_control[i] if i < len(leaks_control) else None
        counts.append(card_lib.ThresholdCounts(
            fmr=t.fmr if t.source == "calibrated" else None, tau_native=t.tau_native, source=t.source,
            synthetic_matched=lk.synthetic_matched, n_synthetic=lk.n_synthetic,
            real_images_matched=lk.real_images_matched, n_real=lk.n_real,
            identities_matched=lk.real_identities_matched, n_identities=lk.real_identities_total,
            nonmembers_matched=None if ctrl is None else ctrl.real_images_matched,
            n_nonmembers=None if ctrl is None else ctrl.n_real,
            impostor_pairs=cal.n_impostor, impostors_above=t.impostors_above, fmr_bootstrap=boots[i]))
    member_scores = nonmember_scores = mem_ids = non_ids = None
    if mem_results:
        member_scores, nonmember_scores = mem_results[0].member_scores, mem_results[0].nonmember_scores
        mem_ids = _labels(sets["members"], datasets["members"])
        non_ids = _labels(sets["nonmembers"], datasets["nonmembers"])
    bootstrap = bool(cfg.report.bootstrap) and mem_ids is not None and non_ids is not None
    return card_lib.leakage_card(
        name, counts, member_scores=member_scores, nonmember_scores=nonmember_scores,
        member_identities=mem_ids, nonmember_identities=non_ids, target_fprs=tuple(cfg.attack.membership_fprs),
        confidence=float(cfg.report.confidence), alpha=float(cfg.report.alpha), delta=float(cfg.report.delta),
        test=cfg.report.test, bootstrap=bootstrap, bootstrap_replicates=int(cfg.report.bootstrap_replicates))


def _agreement(cfg, results: dict) -> dict | None:
    if len(results) < 2:
        return None
    fmrs = [float(f) for f in cfg.attack.fmrs]
    f = float(cfg.attack.agreement_fmr or fmrs[0])
    flags_img, flags_pairs = {}, {}
    for name, res in results.items():
        lk = next(x for x in res.leaks if x.source == "calibrated" and math.isclose(x.fmr, f))
        srec = res.sets["synthetic"].record_ids
        mrec = res.sets["members"].record_ids
        flags_img[name] = set(srec[np.unique(lk.pairs["syn_idx"])].tolist())
        flags_pairs[name] = set(zip(srec[lk.pairs["syn_idx"]].tolist(), mrec[lk.pairs["real_idx"]].tolist()))
    return {"fmr": f, "synthetic_images": distributions.agreement(flags_img),
            "pairs": distributions.agreement(flags_pairs),
            "flagged_by_all": len(distributions.flagged_by_all(flags_img))}


# ------------------------------------------------------------------------------------------------- remedy


def _remedy(cfg, out_dir: str, results: dict, datasets: dict) -> dict:
    """The synthetic set minus every image matching a member at remedy.fmr under remedy.matcher."""
    name = cfg.remedy.matcher or next(iter(results))
    res = results[name]
    fmrs = [float(f) for f in cfg.attack.fmrs]
    f = float(cfg.remedy.fmr or fmrs[0])
    lk = next(x for x in res.leaks if x.source == "calibrated" and math.isclose(x.fmr, f))
    keep_rows = leakage.filtered_synthetic(len(res.sets["synthetic"]), lk, res.scan.neighbours)
    return remedy.write_filtered_set(out_dir, res.sets["synthetic"], keep_rows, export=cfg.remedy.export,
                                     dataset=datasets["synthetic"], matcher=name, fmr=f)
