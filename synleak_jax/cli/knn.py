r"""synleak-knn: exact top-k between two embedding stores (or .npy files), written incrementally with resume.

  synleak-knn --config.queries=/stores/dcface_r100 --config.database=/stores/casia_r100 \
      --config.output=/out/knn_dcface_casia --config.knn.k=10

Output directory:
  manifest.json            what was searched (inputs' shapes and fingerprints, k, precision, blocks); a rerun with
                           different settings is refused unless --config.overwrite=true
  parts/part_000003.npz    scores [n, k] float32, indices [n, k] int64 (database rows) for query rows
                           [query_start, query_stop); written atomically, one per `write_block` queries
  topk.npz                 (at the end) scores [nq, k], indices [nq, k], and, for stores, query_record_ids [nq]
                           and db_record_ids [nq, k] (record ids in the sources)
A killed run resumes by skipping the parts already on disk. ``--show_config`` lists every field.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from absl import app, logging
from ml_collections import ConfigDict

from synleak_jax.cli import common
from synleak_jax.config import knn_config
from synleak_jax.files import atomic_save_npz


_CONFIG = common.define_config_dict_flag("config", knn_config(), "synleak-knn settings (every field: --show_config).")


def open_embeddings(path: str, what: str):
    """(array-like [n, D], record_ids or None, fingerprint dict) for a store directory or a .npy file."""
    if not path:
        raise app.UsageError(f"--config.{what} is required (an embedding store directory or a .npy file)")
    if os.path.isdir(path):
        from synleak_jax.embed.store import EmbeddingStore, StoreError

        try:
            store = EmbeddingStore.open(path)
        except StoreError as e:
            raise app.UsageError(f"--config.{what}: {e}") from None
        ident = hashlib.sha256(json.dumps(store.manifest, sort_keys=True, default=str).encode()).hexdigest()
        return store.embeddings, store.record_ids, {"path": os.path.abspath(path), "kind": "store",
                                                    "shape": list(store.embeddings.shape), "manifest_sha256": ident}
    if path.endswith(".npy") and os.path.isfile(path):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise app.UsageError(f"--config.{what}: {path} is not a plain numeric .npy file: {e}") from None
        st = os.stat(path)
        return arr, None, {"path": os.path.abspath(path), "kind": "npy", "shape": list(arr.shape),
                           "dtype": str(arr.dtype), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    raise app.UsageError(f"--config.{what}={path!r} is neither an embedding store directory nor a .npy file")


def _needs_whole_database(precision: str) -> bool:
    from synleak_jax.search.exact import fastest_exact_precision

    return (fastest_exact_precision() if precision == "auto" else precision) == "bf16_certified"


def run_knn(cfg: ConfigDict) -> str:
    """Runs the search described by cfg; returns the path of topk.npz."""
    from synleak_jax.search.engine import Source, check_k, check_positive_int
    from synleak_jax.search.exact import exact_topk

    q, q_ids, q_fp = open_embeddings(cfg.queries, "queries")
    db, db_ids, db_fp = open_embeddings(cfg.database, "database")
    if not cfg.output:
        raise app.UsageError("--config.output is required (a directory)")
    if len(q.shape) != 2 or len(db.shape) != 2 or q.shape[1] != db.shape[1]:
        raise app.UsageError(f"queries {tuple(q.shape)} and database {tuple(db.shape)} must be [n, D] with equal D")
    k = check_k(cfg.knn.k, db.shape[0], "--config.knn.k")
    wb = check_positive_int(cfg.knn.write_block, "--config.knn.write_block")
    search = {key: cfg.knn[key] for key in ("precision", "selection", "tile", "query_block", "db_block")}
    search["query_block"] = search["query_block"] or None
    search["db_block"] = search["db_block"] or None
    manifest = {"format_version": 1, "queries": q_fp, "database": db_fp, "k": k, "write_block": wb,
                "search": search}
    out = cfg.output
    parts = os.path.join(out, "parts")
    mpath = os.path.join(out, "manifest.json")
    if os.path.exists(mpath) and not cfg.overwrite:
        with open(mpath) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(manifest)):
            diff = [key for key in manifest if old.get(key) != json.loads(json.dumps(manifest[key]))]
            raise app.UsageError(f"{out} holds a search with different settings ({', '.join(diff)}); use another "
                                 "--config.output or --config.overwrite=true")
    elif os.path.exists(mpath) and cfg.overwrite:
        for name in os.listdir(parts) if os.path.isdir(parts) else []:
            os.remove(os.path.join(parts, name))
        final = os.path.join(out, "topk.npz")
        if os.path.exists(final):
            os.remove(final)
    os.makedirs(parts, exist_ok=True)
    with open(mpath + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(mpath + ".tmp", mpath)

    if not isinstance(db, np.ndarray) and _needs_whole_database(cfg.knn.precision):
        # the group screen puts the whole database on the device for every part: read a store once into
        # aligned memory (used in place by the CPU backend) instead of copying it again per part
        db = Source(db, "database").aligned_host()
    nq = q.shape[0]
    n_parts = -(-nq // wb)
    t0 = time.perf_counter()
    done_now = 0
    for p in range(n_parts):
        a, b = p * wb, min(nq, (p + 1) * wb)
        dest = os.path.join(parts, f"part_{p:06d}.npz")
        if os.path.exists(dest):
            continue
        qa = q[a:b]
        s, i = exact_topk(qa, db, k, **search)  # on every device of every process
        atomic_save_npz(dest, scores=s, indices=i.astype(np.int64), query_start=a, query_stop=b)
        done_now += b - a
        rate = done_now / (time.perf_counter() - t0)
        left = sum(min(nq, (j + 1) * wb) - j * wb for j in range(p + 1, n_parts))
        logging.info("synleak-knn: part %d/%d written (%d queries, %.1f queries/s, ETA %.0f s)", p + 1, n_parts,
                     b - a, rate, left / max(rate, 1e-9))
    scores = np.empty((nq, k), np.float32)
    indices = np.empty((nq, k), np.int64)
    for p in range(n_parts):
        with np.load(os.path.join(parts, f"part_{p:06d}.npz")) as z:
            a, b = int(z["query_start"]), int(z["query_stop"])
            scores[a:b], indices[a:b] = z["scores"], z["indices"]
    extra = {}
    if q_ids is not None:
        extra["query_record_ids"] = np.asarray(q_ids, np.int64)
    if db_ids is not None:
        extra["db_record_ids"] = np.asarray(db_ids, np.int64)[indices]
    final = os.path.join(out, "topk.npz")
    atomic_save_npz(final, scores=scores, indices=indices, **extra)
    logging.info("synleak-knn: wrote %s (%d queries x k=%d)", final, nq, k)
    return final


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value.malloc_single_arena:
        from synleak_jax.search.hostmem import limit_malloc_retention

        limit_malloc_retention()
    try:
        with common.output_dir_guard(_CONFIG.value.output or "."):  # no empty output directory after a failure
            run_knn(_CONFIG.value)
    except ValueError as e:  # bad inputs (NaN rows, shapes) from the search: one clear line
        raise app.UsageError(str(e)) from None


def run():
    common.run_program(main, doc=__doc__, config=_CONFIG, schema=knn_config)


if __name__ == "__main__":
    run()
