"""synleak-audit --dry_run (audit.dry_run, audit.format_plan): it lists every dataset (kind, count, a sample of
rejects, the face check), says what it would do with every store (absent, partial, complete, refused), gives the
pairs of every stage and a measured estimate, and writes nothing.

The expectations are independent of the planner: dataset sizes are the files written here, pair counts are
products of those sizes, store states are made here with the door the audit embeds through (a complete store, one
with chunk markers removed, one made with other settings), and "writes nothing" compares a snapshot of every file
(path, size, mtime) under the test's folder before and after."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synleak_jax.weights import mtcnn_weights
from tests import audit_helpers
from tests.cli.test_errors import one_line_error
from tests.cli.test_help import run_cli

skimage_data = pytest.importorskip("skimage.data")

SIZES = {"synthetic": 16, "members": 24, "nonmembers": 16}


def _snapshot(root: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file and folder under ``root``."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _stage_pairs(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^  (\w+): ([\d,]+) pairs, passes ", text, re.M)}


def test_dry_run_from_embeddings_writes_nothing(tmp_path):
    sets = audit_helpers.make_sets(np.random.default_rng(3))
    paths = audit_helpers.write_sets(tmp_path, sets)
    out = tmp_path / "out"
    args = ["--config=embeddings", *(f"--config.data.{r}.path={paths[r]}" for r in ("synthetic", "members",
                                                                                   "nonmembers")),
            f"--config.data.members.labels={paths['member_labels']}", f"--config.output_dir={out}"]
    before = _snapshot(tmp_path)
    p = run_cli("synleak_jax.cli.audit", *args, "--dry_run", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _snapshot(tmp_path) == before and not out.exists()  # nothing written, not even the output folder
    text = p.stdout
    assert text.startswith("DRY RUN: nothing embedded, no store written")
    n = {r: len(sets[r]) for r in ("synthetic", "members", "nonmembers")}
    for role in n:
        assert re.search(rf"^  {role}: kind=embeddings {re.escape(paths[role])} — {n[role]:,} records$", text, re.M)
        assert re.search(rf"^  embeddings / {role}: given {re.escape(paths[role])}$", text, re.M)
    assert text.count("    face check: not run (audited from embeddings: no images)") == 3
    # calibration on the members (the preset's source): every pair of them is one evaluation of the pass
    assert _stage_pairs(text) == {"calibration": n["members"] * (n["members"] - 1) // 2,
                                  "members_x_synthetic": n["members"] * n["synthetic"],
                                  "nonmembers_x_synthetic": n["nonmembers"] * n["synthetic"]}
    memory = re.search(r"^estimate on this machine \(.+\): embedding 0 s \+ analyses \d+ s = \d+ s; peak memory "
                       r"above the runtime about (\d+) MB \(analyses (\d+) MB from the engine's block rules, "
                       r"embedding 0 MB measured\)$", text, re.M)
    # the analyses hold every embedding set (memory-mapped, read whole) plus the passes' blocks
    embeddings_mb = sum(s.nbytes for r, s in sets.items() if r in n) / 2**20
    assert memory and memory.group(1) == memory.group(2) and int(memory.group(2)) >= int(embeddings_mb)
    # a user error in a dry run is the same one line as in a run
    msg = one_line_error(run_cli("synleak_jax.cli.audit", *args, f"--config.data.nonmembers.path={tmp_path / 'no.npy'}",
                                 "--dry_run", cwd=str(tmp_path)), "audit")
    assert "--config.data.nonmembers.path" in msg and str(tmp_path / "no.npy") in msg
    assert not out.exists()


@pytest.fixture(scope="module")
def face_folders(tmp_path_factory):
    """Three flat folders of distinct lfw_subset faces (25x25 grey crops saved at 32x32, as the demo does)."""
    root = tmp_path_factory.mktemp("faces")
    faces = np.round(skimage_data.lfw_subset()[:100] * 255).astype(np.uint8)
    start = 0
    for role, count in SIZES.items():
        (root / role).mkdir()
        for i in range(count):
            Image.fromarray(faces[start + i]).resize((32, 32), Image.BICUBIC).save(root / role / f"{i:03d}.png")
        start += count
    return root


def test_dry_run_of_image_folders_reports_each_store_state_and_writes_nothing(face_folders, tmp_path):
    from synleak_jax import audit
    from synleak_jax.cli.common import PresetFileParser
    from synleak_jax.embed import door

    cfg = PresetFileParser("config").parse("demo")
    cfg.demo.enabled = False
    for role in SIZES:
        cfg.data[role].path = str(face_folders / role)
    cfg.output_dir = str(tmp_path / "out")
    cfg.stores_dir = str(tmp_path / "stores")
    cfg.embed.batch_size, cfg.embed.chunk_batches = 8, 1  # chunks of 8 records: members has 3
    cfg.face_check.sample_size = 8
    cfg.attack.fmrs = (1e-2,)  # 780 calibration pairs resolve 1e-2, not 1e-3

    # the stores the audit would find, made through the door it embeds with
    matcher = door.load_matcher("dlib_resnet_v1", "", field="--config.weights.dlib_resnet_v1")
    datasets = {r: door.open_data(cfg.data[r], f"--config.data.{r}") for r in SIZES}
    store = {r: door.store_path(cfg.stores_dir, r, datasets[r], "dlib_resnet_v1") for r in SIZES}
    door.ensure_store(datasets["synthetic"], matcher, cfg.embed, store["synthetic"])  # complete
    door.ensure_store(datasets["members"], matcher, cfg.embed, store["members"])
    for j in (1, 2):  # an interrupted run: two of the three chunks not committed
        os.remove(os.path.join(store["members"], "chunks", f"chunk_{j:06d}.done.json"))
    other = cfg.embed.copy_and_resolve_references()
    other.flip = True  # the demo embeds without flip: this store was made with other settings
    door.ensure_store(datasets["nonmembers"], matcher, other, store["nonmembers"])

    before = _snapshot(tmp_path) | {f"faces/{k}": v for k, v in _snapshot(face_folders).items()}
    plan = audit.dry_run(cfg)
    after = _snapshot(tmp_path) | {f"faces/{k}": v for k, v in _snapshot(face_folders).items()}
    assert after == before and not (tmp_path / "out").exists()

    for role, count in SIZES.items():
        d = plan["datasets"][role]
        assert (d["kind"], d["path"], d["records"]) == ("flat_folder", str(face_folders / role), count)
        assert d["reject_sample"] == {"sampled": min(16, count), "rejected": 0, "reasons": {}}
    st = plan["matchers"]["dlib_resnet_v1"]["stores"]
    assert st["synthetic"]["status"] == "complete" and st["synthetic"]["records_to_embed"] == 0
    assert (st["members"]["status"], st["members"]["chunks_done"], st["members"]["chunks_total"],
            st["members"]["records_to_embed"]) == ("partial", 1, 3, 16)
    assert st["nonmembers"]["status"] == "mismatch" and st["nonmembers"]["records_to_embed"] == 16
    assert any("flip" in x and "stored True vs requested False" in x for x in st["nonmembers"]["differences"])
    m = plan["matchers"]["dlib_resnet_v1"]
    assert m["images_per_s_measured"] > 0
    assert m["embed_estimate_s"] == pytest.approx(32 / m["images_per_s_measured"])  # 16 partial + 16 refused
    n = SIZES
    n_real = n["members"] + n["nonmembers"]  # the demo calibrates on all real images
    assert {s: v["pairs"] for s, v in plan["stages"].items()} == {
        "calibration": n_real * (n_real - 1) // 2, "members_x_synthetic": n["members"] * n["synthetic"],
        "nonmembers_x_synthetic": n["nonmembers"] * n["synthetic"]}
    e = plan["estimate"]
    assert e["total_s"] == pytest.approx(e["embed_s"] + e["analyses_s"]) and e["peak_memory_mb"] > 0
    # embedding memory is measured while the few batches run: at least the matcher's variables (dlib: 5.6M
    # float32 parameters, 22 MB), and the estimate is the larger of the two phases
    assert m["embed_peak_memory_mb_measured"] >= 20 and e["embed_memory_mb_measured"] == m["embed_peak_memory_mb_measured"]
    assert e["peak_memory_mb"] == max(e["analyses_memory_mb"], e["embed_memory_mb_measured"])

    text = audit.format_plan(plan)
    assert "  dlib_resnet_v1 / members: partial (1/3 chunks done) " + store["members"] in text
    assert "!! the audit would refuse this store" in text
    assert "    sample of 16 records: 0 rejected\n" in text
    if mtcnn_weights.cache_is_valid(mtcnn_weights.cache_dir())[0]:
        for role in SIZES:
            fc = plan["datasets"][role]["face_check"]["dlib150"]
            assert re.match(rf"face check (ok|warn|fail): faces in \d+/{min(8, n[role])} sampled images", fc), fc
        assert text.count("    face check vs dlib150: face check ") == 3
    else:  # the check cannot run without MTCNN's weights: the plan says so
        assert all("not run" in plan["datasets"][r]["face_check"]["dlib150"] for r in SIZES)


def test_require_faces_stops_a_dry_run_in_one_line(tmp_path):
    """Non-faces (skimage's coffee, chelsea and rocket, as crops) with --config.data.synthetic.require_faces: the
    face check fails and the audit stops before embedding, one line naming the flag and the folder."""
    if not mtcnn_weights.cache_is_valid(mtcnn_weights.cache_dir())[0]:
        pytest.skip("needs the MTCNN weights (synleak-fetch-mtcnn)")
    for role in SIZES:
        (tmp_path / role).mkdir()
    for i, name in enumerate(("coffee", "chelsea", "rocket")):
        img = getattr(skimage_data, name)()
        Image.fromarray(img).resize((150, 150)).save(tmp_path / "synthetic" / f"{i}.png")
    faces = np.round(skimage_data.lfw_subset()[:8] * 255).astype(np.uint8)
    for i, face in enumerate(faces):
        Image.fromarray(face).save(tmp_path / ("members" if i < 4 else "nonmembers") / f"{i}.png")
    out = tmp_path / "out"
    before = _snapshot(tmp_path)
    p = run_cli("synleak_jax.cli.audit", "--config=demo", "--config.demo.enabled=false",
                *(f"--config.data.{r}.path={tmp_path / r}" for r in SIZES), "--config.attack.fmrs=(0.1,)",
                "--config.data.synthetic.require_faces=true", f"--config.output_dir={out}", "--dry_run")
    msg = one_line_error(p, "audit")
    assert "--config.data.synthetic.require_faces" in msg and str(tmp_path / "synthetic") in msg, msg
    assert _snapshot(tmp_path) == before and not out.exists()
