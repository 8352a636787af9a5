"""The spine (synleak_jax/audit.py): audits from embeddings, from synleak-embed stores, validation before any
work, and identical numbers from 2 processes."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synleak_jax.audit import run_audit
from synleak_jax.config import ConfigError
from synleak_jax.report import writer as report_writer
from tests import audit_helpers

ROOT = Path(__file__).resolve().parents[1]


def _impostors64(members, labels):
    s = members.astype(np.float64) @ members.T.astype(np.float64)
    iu = np.triu_indices(len(members), 1)
    return s[iu][labels[iu[0]] != labels[iu[1]]]


def test_audit_from_embeddings_planted_copies_and_exact_tau(tmp_path, rng):
    sets = audit_helpers.make_sets(rng)
    paths = audit_helpers.write_sets(tmp_path, sets)
    cfg = audit_helpers.embeddings_config(paths, tmp_path / "out")
    rep = run_audit(cfg)
    report_writer.validate(rep)
    (m,) = rep["matchers"]
    assert m["name"] == "embeddings" and m["metric"] == "cosine"
    imp = _impostors64(sets["members"], sets["member_labels"])
    cal = m["calibration"]
    assert cal["n_impostor_pairs"] == imp.size
    for t in cal["thresholds"]:  # cosine: the native unit is the score itself
        assert t["tau_native"] == np.quantile(imp, 1 - t["target_fmr"], method="inverted_cdf")  # exact: bit for bit
    # every planted near-copy is the rank-1 real neighbour of its synthetic image, listed at FMR 1e-3
    rows = list(csv.DictReader(open(tmp_path / "out" / "pairs.csv")))
    assert {r["unit"] for r in rows} == {"cosine"} and {r["role"] for r in rows} == {"members", "nonmembers"}
    at = {(int(r["syn_idx"]), int(r["real_idx"])) for r in rows
          if r["threshold"] == "FMR 0.001" and r["role"] == "members"}
    full = sets["synthetic"].astype(np.float64) @ sets["members"].T.astype(np.float64)
    for s, r in zip(sets["planted_syn"], sets["planted_real"]):
        assert (int(s), int(r)) in at
        assert full[s, r] == full[s].max()
    assert {r["syn_id"] for r in rows} >= {f"syn_{s:04d}" for s in sets["planted_syn"]}  # names, not paths
    lk = [x for x in m["leakage"] if x["target_fmr"] == 0.001][0]
    tau = [t for t in cal["thresholds"] if t["target_fmr"] == 0.001][0]["tau_native"]
    assert lk["synthetic_matched"] == (full.max(1) > tau).sum()
    assert lk["real_images_matched"] == (full.max(0) > tau).sum()
    assert m["membership"]["available"]
    html = (tmp_path / "out" / "index.html").read_text()
    assert "audited from embeddings" in html


def test_typo_in_remedy_export_fails_before_any_work(tmp_path):
    from synleak_jax.config import base_config

    cfg = base_config()
    cfg.matchers = "dlib_resnet_v1"
    cfg.output_dir = str(tmp_path / "out")
    cfg.data.synthetic.path = cfg.data.members.path = str(tmp_path)
    cfg.remedy.export = "hardlinks"
    cfg.attack.identity_relation = "sometimes"
    with pytest.raises(ConfigError) as e:
        run_audit(cfg)
    msg = str(e.value)
    assert "--config.remedy.export='hardlinks'" in msg and "--config.attack.identity_relation='sometimes'" in msg
    assert not (tmp_path / "out").exists()  # nothing listed, embedded or written


def test_store_from_synleak_embed_is_audited_as_is(tmp_path, rng):
    """A synleak-embed store given as kind=store: no chunk recomputed, its files untouched."""
    from synleak_jax.config import base_config, embed_config
    from synleak_jax.embed import door
    from tests.embed import data_helpers

    root = tmp_path / "imgs"
    data_helpers.make_png_folder(str(root / "members"), rng, num_ids=4, per_id=6, bad=0)
    data_helpers.make_png_folder(str(root / "syn"), rng, num_ids=3, per_id=5, bad=0)
    ecfg = embed_config()
    ecfg.model, ecfg.batch_size, ecfg.chunk_batches, ecfg.flip = "dlib_resnet_v1", 8, 1, False
    ecfg.data.path, ecfg.output = str(root / "members"), str(tmp_path / "store")
    door.embed_from_config(ecfg)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "store").rglob("*") if p.is_file()}
    cfg = base_config()
    cfg.matchers = "dlib_resnet_v1"
    cfg.output_dir = str(tmp_path / "out")
    cfg.embed.flip = False
    cfg.embed.batch_size, cfg.embed.chunk_batches = 8, 1
    cfg.data.synthetic.path = str(root / "syn")
    cfg.data.members.kind, cfg.data.members.path = "store", str(tmp_path / "store")
    cfg.attack.fmrs = (1e-2,)
    rep = run_audit(cfg)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "store").rglob("*") if p.is_file()}
    assert after == before
    (m,) = rep["matchers"]
    assert m["stores"]["members"]["path"] == str(tmp_path / "store")
    assert rep["datasets"]["members"]["n_images"] == 24
    assert not (tmp_path / "out" / "stores" / "members.store.dlib_resnet_v1").exists()
    # the same dataset embedded by the audit itself gets the very same manifest identity
    cfg2 = base_config()
    cfg2.matchers = "dlib_resnet_v1"
    cfg2.output_dir = str(tmp_path / "out2")
    cfg2.embed.flip = False
    cfg2.embed.batch_size, cfg2.embed.chunk_batches = 8, 1
    cfg2.data.synthetic.path = str(root / "syn")
    cfg2.data.members.path = str(root / "members")
    cfg2.data.members.name = "store"
    cfg2.attack.fmrs = (1e-2,)
    cfg2.stores_dir = str(tmp_path / "stores2")
    run_audit(cfg2)
    from synleak_jax.embed.store import EmbeddingStore, identity_diff
    made = EmbeddingStore.open(str(tmp_path / "stores2" / "members.store.dlib_resnet_v1")).manifest
    ours = EmbeddingStore.open(str(tmp_path / "store")).manifest
    assert identity_diff(made, ours) == []


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _numbers(rep):
    """Every figure of a report that must not depend on the number of processes."""
    out = []
    for m in rep["matchers"]:
        out.append([(t["tau_native"], t["impostors_above"], t["fnmr"]) for t in m["calibration"]["thresholds"]])
        out.append((m["calibration"]["eer"], m["calibration"]["impostor_mean_native"],
                    m["calibration"]["n_impostor_pairs"]))
        out.append([(x["synthetic_matched"], x["real_images_matched"], x["real_identities_matched"], x["n_pairs"])
                    for x in m["leakage"] + m["leakage_control"]])
        out.append([(r["auc"], r["balanced_accuracy"], r["tpr_at_fpr"]) for r in m["membership"]["results"]])
        out.append([(t["real_vs_generated_pairs_above"]) for t in m["distributions"]["real_vs_generated"]["tails"]])
        out.append(m["distributions"]["real_vs_generated"]["mean_native"])
        out.append([(t["nonmembers_matched"], t["member_vs_control"]["p_value"]) for t in m["card"]["thresholds"]])
    return out


def test_two_processes_report_equals_one_process(tmp_path, rng):
    sets = audit_helpers.make_sets(rng)
    paths = audit_helpers.write_sets(tmp_path, sets)
    one = run_audit(audit_helpers.embeddings_config(paths, tmp_path / "one"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [json.dumps(paths), str(tmp_path / "two")]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "audit_mp_worker.py"), str(port), str(p), *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in range(2)]
    logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert _numbers(two) == _numbers(one)
