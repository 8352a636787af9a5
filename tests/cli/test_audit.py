"""synleak-audit end to end: the built-in demo (the README's first command), its report, the HTML gallery in
headless Chromium, resume, the remedy export and clear errors."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest
from PIL import Image

from synleak_jax.report import writer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _audit(*args, cwd=None, check=True):
    env = dict(os.environ)
    cmd = [sys.executable, "-c", "from synleak_jax.cli.audit import run; run()", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"synleak-audit failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default audit exactly as `synleak-audit` runs it (only the output folder moved to a temp dir)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    t0 = time.time()
    p = _audit(f"--config.output_dir={out}")
    return out, p, time.time() - t0


def test_demo_report_files_and_numbers(demo):
    out, p, secs = demo
    print(f"demo audit took {secs:.1f} s")
    for f in ("report.json", "index.html", "pairs.csv"):
        assert (out / f).exists(), f
    rep = json.loads((out / "report.json").read_text())
    jsonschema.validate(rep, writer.load_schema())
    assert rep["demo"] is True and "DEMO" in (out / "index.html").read_text()
    assert rep["title"] == "synleak_jax DEMO audit: tiny generator trained on 50 LFW crops, matcher dlib_resnet_v1"
    # start-up is not silent: the demo says what it makes before its generator compiles
    assert "demo generator: training 1000 steps on 50 images (the first step compiles)" in p.stderr
    (m,) = rep["matchers"]
    assert m["name"] == "dlib_resnet_v1" and m["metric"] == "euclidean"
    assert m["weights"]["sha256"]  # the real shipped dlib weights
    cal = m["calibration"]
    assert cal["n_impostor_pairs"] == 100 * 99 // 2  # 100 real images, each its own identity
    assert m["unit"] == "distance" and m["more_similar"] == "lower"
    thr = {t["source"] if t["source"] != "calibrated" else t["target_fmr"]: t for t in cal["thresholds"]}
    assert thr[0.01]["impostors_above"] <= 49 and thr[0.001]["impostors_above"] <= 4
    assert thr[0.001]["tau_native"] < thr[0.01]["tau_native"] < 1.5  # distances: stricter FMR = smaller tau
    published = [t for t in cal["thresholds"] if t["source"] != "calibrated"]
    assert len(published) == 1 and "published 0.6" in published[0]["threshold"]
    assert published[0]["target_fmr"] is None and published[0]["tau_native"] == 0.6  # no target: only achieved
    assert published[0]["achieved_fmr"] == published[0]["impostors_above"] / cal["n_impostor_pairs"]
    lk = {x["target_fmr"]: x for x in m["leakage"] if x["source"] == "calibrated"}
    assert lk[0.01]["n_synthetic"] == 200 and lk[0.01]["n_real"] == 50
    # The phenomenon: the over-fitted generator leaks.
    assert lk[0.001]["synthetic_matched"] > 0 and lk[0.001]["real_images_matched"] > 0
    assert lk[0.001]["synthetic_matched"] <= lk[0.01]["synthetic_matched"] <= 200
    mem = m["membership"]
    assert mem["available"] and len(mem["results"]) == 2
    assert mem["results"][0]["n_members"] == 50 and mem["results"][0]["n_nonmembers"] == 50
    assert mem["results"][0]["auc"] > 0.5
    assert mem["results"][0]["member_score_mean_native"] > 0  # a distance, not a negated one
    assert [p["tpr"] for p in mem["results"][0]["tpr_at_fpr"]] == [None, None]  # 50 non-members resolve neither
    card = m["card"]
    assert card["verdict"] == "leakage detected" and card["membership"]["auc_ci"][0] < mem["results"][0]["auc"]
    assert [t["nonmembers_matched"] for t in card["thresholds"]] == [x["real_images_matched"]
                                                                     for x in m["leakage_control"]]
    tails = m["distributions"]["real_vs_generated"]["tails"]
    assert tails[0]["real_vs_generated_pairs_above"] >= 0 and 0 <= tails[0]["real_vs_generated_tail"] <= 1
    # pairs.csv holds every listed pair, members' and the control's; its counts equal the report's
    import csv
    rows = list(csv.DictReader((out / "pairs.csv").open()))
    assert len([r for r in rows if r["role"] == "members"]) == sum(x["n_pairs"] for x in m["leakage"])
    assert len([r for r in rows if r["role"] == "nonmembers"]) == sum(x["n_pairs"] for x in m["leakage_control"])
    assert {r["unit"] for r in rows} == {"distance"}
    assert all(float(r["score_native"]) < float(r["tau_native"]) for r in rows)  # distances match below tau
    for pl in m["plots"].values():
        assert (out / pl).exists()
    gal = rep["gallery"]
    assert [g["role"] for g in gal].count("members") == [g["role"] for g in gal].count("nonmembers") == 16
    assert all(g["syn_name"].startswith("syn_") and "/" not in g["syn_name"] for g in gal)  # relative to the root
    # the terminal summary: the card with the control counts, and the demo's non-member face-check warning
    words = " ".join(p.stdout.split())  # the summary's long lines are wrapped for the terminal
    assert "[dlib_resnet_v1] verdict: leakage detected" in p.stdout
    assert re.search(r"non-members \(control\) \d+/50 = ", words)
    warned = [role for role in ("synthetic", "members", "nonmembers")
              if rep["datasets"][role]["face_check"]["status"] in ("warn", "fail")]
    assert len([x for x in p.stdout.splitlines() if x.startswith("!! face check ")]) == len(warned)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (CI installs it)")
def test_html_gallery_renders_in_headless_chromium(demo, tmp_path):
    out, _, _ = demo
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "index.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120).stdout
    rep = json.loads((out / "report.json").read_text())
    n = rep["gallery"]
    assert dom.count('class="pair"') == len(n) == 32  # 16 against the members, 16 against the control
    assert f'data-pairs-rendered="{len(n)}"' in dom
    assert f'data-images-loaded="{2 * len(n)}"' in dom  # every thumbnail decoded
    assert 'data-member-images-loaded="32"' in dom and 'data-control-images-loaded="32"' in dom  # both galleries
    assert f'data-plots-loaded="{len(rep["matchers"][0]["plots"])}"' in dom
    # the card, rendered at the top: one per matcher, with its verdict, test, membership and epsilon
    assert 'data-cards-rendered="1"' in dom
    card_at = dom.index('<section class="card detected" data-matcher="dlib_resnet_v1"')
    assert card_at < dom.index("Data as given") < dom.index('class="gallery"')
    card = dom[card_at:dom.index("</section>", card_at)]
    assert "leakage detected" in card and "boschloo p =" in card and 'data-figure="membership"' in card
    assert "n/a (needs &gt;= 100 non-members; have 50)" in card and 'data-figure="epsilon"' in card
    assert "What the numbers cannot say" in card
    assert "DEMO" in dom and "FACE CHECK WARN for the nonmembers images" in dom  # the demo's own check
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                   timeout=120)
    im = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert im.shape == (1600, 1200)
    assert im.std() > 10 and (im < 128).mean() > 0.01  # text and tables drawn, not a blank page
    # the top of the page is the card: its tinted box fills much of the first screen
    top = np.asarray(Image.open(shot).convert("RGB"), np.int16)[:1600]
    tint = (np.abs(top - np.array([0xfd, 0xf1, 0xf0])).sum(axis=2) <= 6).mean()
    assert tint > 0.1, tint


def test_rerun_resumes_from_stages(demo, tmp_path):
    out, _, _ = demo
    p = _audit(f"--config.output_dir={out}")
    log = p.stderr
    assert "demo data: reusing" in log
    for stage in ("calibration", "real_vs_synthetic", "nonmembers_x_synthetic", "synthetic_dlib150",
                  "members_dlib150", "nonmembers_dlib150"):  # analyses and face checks
        assert f"stage {stage}: reusing" in log
    assert "0 of its" in log or "chunks_computed': []" in log  # embedding stores reused


def test_emit_filtered_list_and_export(demo, tmp_path):
    out, _, _ = demo
    out2 = tmp_path / "out2"
    shutil.copytree(out / "demo_data", out2 / "demo_data")
    _audit(f"--config.output_dir={out2}", "--emit_filtered_list", "--config.remedy.export=copy",
           "--config.remedy.fmr=0.001", f"--config.stores_dir={out}/stores")
    rep = json.loads((out2 / "report.json").read_text())
    rem = rep["remedy"]
    lk = [x for x in rep["matchers"][0]["leakage"] if x["target_fmr"] == 0.001][0]
    kept = [json.loads(line) for line in (out2 / "filtered_synthetic.jsonl").read_text().splitlines()]
    assert rem["removed"] == lk["synthetic_matched"] > 0 and rem["kept"] == len(kept) == 200 - rem["removed"]
    assert sorted(os.listdir(out2 / "filtered_synthetic")) == sorted(os.path.basename(k) for k in kept)


def test_clear_errors(tmp_path):
    p = _audit("--config.demo.enabled=False", "--config.matchers=dlib_resnet_v1",
               f"--config.data.synthetic.path={tmp_path / 'missing'}", f"--config.output_dir={tmp_path}", check=False)
    assert p.returncode != 0 and "--config.data.synthetic.path" in p.stderr and "no such directory" in p.stderr
    p = _audit("--config.demo.enabled=False", "--config.matchers=adaface_ir101",
               f"--config.data.synthetic.path={tmp_path}", f"--config.data.members.path={tmp_path}",
               f"--config.output_dir={tmp_path}", check=False)
    assert p.returncode != 0 and "--config.weights.adaface_ir101" in p.stderr


def test_impossible_fmr_is_explained(demo, tmp_path):
    out, _, _ = demo
    out2 = tmp_path / "o"
    shutil.copytree(out / "demo_data", out2 / "demo_data")
    p = _audit(f"--config.output_dir={out2}", "--config.attack.fmrs=(1e-2,1e-6)", f"--config.stores_dir={out}/stores",
               check=False)
    assert p.returncode != 0
    assert "FMR 1e-06 cannot be calibrated" in p.stderr and "1,000,000" in p.stderr and "4,950" in p.stderr


def _write_png(path, gray_u8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(gray_u8, mode="L").save(path)


def test_planted_image_copies_found_at_fmr_1e3_with_identity_relation(tmp_path):
    """Image-level planted leak through the whole audit with the real dlib matcher: a labelled synthetic set of
    transformed copies (noise, 1-pixel shifts, flips) of member images, plus non-face images. Every planted
    (copy, original) pair must be listed at FMR 1e-3; the identity relation must see same-label pairs closer."""
    import skimage.data

    from synleak_jax.config import base_config
    from synleak_jax.audit import run_audit

    lfw = np.round(np.asarray(skimage.data.lfw_subset()) * 255).astype(np.uint8)
    faces, nonfaces = lfw[:100], lfw[100:]
    rng = np.random.default_rng(0)
    for i in range(100):  # 20 pseudo-identities x 5 images (labels are arbitrary groups: a plumbing test)
        _write_png(str(tmp_path / "members" / f"c{i // 5:02d}" / f"{i:03d}.png"), faces[i])
    planted = rng.choice(100, 12, replace=False)
    kinds = ["noise", "shift", "flip"]
    for j, i in enumerate(planted):
        im = faces[i].astype(np.int16)
        kind = kinds[j % 3]
        if kind == "noise":
            im = im + rng.normal(0, 3, im.shape).round().astype(np.int16)
        elif kind == "shift":
            im = np.roll(im, 1, axis=1)
        else:
            im = im[:, ::-1]
        _write_png(str(tmp_path / "syn" / f"c{i // 5:02d}" / f"copy{j:02d}.png"), np.clip(im, 0, 255).astype(np.uint8))
    for j in range(20):
        _write_png(str(tmp_path / "syn" / f"c{j:02d}" / f"other{j:02d}.png"), nonfaces[j])
    cfg = base_config()
    cfg.output_dir = str(tmp_path / "out")
    cfg.matchers = "dlib_resnet_v1"
    cfg.data.synthetic.path = str(tmp_path / "syn")
    cfg.data.members.path = str(tmp_path / "members")
    cfg.attack.fmrs = (1e-2, 1e-3)
    cfg.embed.flip = False
    cfg.report.gallery_n = 5
    cfg.remedy.emit_filtered_list = True
    cfg.remedy.fmr = 1e-3
    cfg.remedy.export = "recordio"
    rep = run_audit(cfg)
    writer.validate(rep)
    (m,) = rep["matchers"]
    assert m["calibration"]["n_impostor_pairs"] == 4950 - 20 * 10 and m["calibration"]["n_genuine_pairs"] == 200
    assert not m["membership"]["available"] and "non-members" in m["membership"]["reason"]
    # The colour-order check ran on the labelled members (grey faces: both orders alike, nothing switched) and is
    # in the report; the synthetic classes hold under 5 images each: not run, said so.
    co = rep["datasets"]["members"]["channel_order_check"]
    assert (co["n_images"], co["other_clearly_better"], co["requested"], co["applied"]) == (100, False, "auto", "rgb")
    assert rep["datasets"]["members"]["channel_order"] == "rgb"
    assert "not_run" in rep["datasets"]["synthetic"]["channel_order_check"]
    # every planted pair is in pairs.csv at FMR 1e-3
    import csv
    rows = [r for r in csv.DictReader(open(tmp_path / "out" / "pairs.csv"))
            if r["threshold"] == "FMR 0.001" and r["role"] == "members"]
    found = {(os.path.basename(r["syn_id"]), os.path.basename(r["real_id"])) for r in rows}
    for j, i in enumerate(planted):
        assert (f"copy{j:02d}.png", f"{i:03d}.png") in found, (j, i, kinds[j % 3])
    lk = [x for x in m["leakage"] if x["target_fmr"] == 0.001][0]
    assert lk["synthetic_matched"] >= 12 and lk["real_identities_matched"] >= 1
    assert lk["per_synthetic_class_top"] and lk["per_real_identity_top"]
    rel = m["identity_relation"]
    assert rel is not None and rel["n_genuine_pairs"] > 0
    assert rel["genuine_mean_native"] < rel["impostor_mean_native"]  # distances: same label closer
    assert 0 <= rel["rank1_identification"]["rank1"] <= 1
    # remedy as RecordIO: exactly the kept images, none of the planted copies
    from synleak_jax.data.recordio import RecordIOSource
    rem = rep["remedy"]
    assert rem["removed"] == lk["synthetic_matched"] and rem["kept"] + rem["removed"] == 32
    rec = RecordIOSource(str(tmp_path / "out" / "filtered_synthetic" / "train"))
    assert len(rec) == rem["kept"]
    kept = [json.loads(line) for line in (tmp_path / "out" / "filtered_synthetic.jsonl").read_text().splitlines()]
    assert not any("copy" in os.path.basename(k) for k in kept)


@pytest.mark.slow  # ~1 min on 2 cores (MobileFaceNet compile)
def test_two_matchers_agreement(tmp_path):
    """Multi-matcher path (Tinsley style): dlib plus a second matcher given as an orbax weights directory (a
    random-initialised MobileFaceNet — meaningless as a face matcher, used only to exercise the plumbing)."""
    import jax
    import jax.numpy as jnp
    import skimage.data

    from synleak_jax.config import base_config
    from synleak_jax.audit import run_audit
    from synleak_jax.models import registry
    from synleak_jax.weights import save_variables

    spec = registry.get_spec("mobilefacenet")
    v = registry.get_model("mobilefacenet").init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, spec.height, spec.width, 3), jnp.float32))
    v = jax.tree_util.tree_map(np.asarray, v)
    wdir = save_variables(str(tmp_path / "mfn"), v, {"model_name": "mobilefacenet", "input_spec": spec.to_dict(),
                                                     "source_file": "random-init", "source_sha256": "", "format": "test"})
    lfw = np.round(np.asarray(skimage.data.lfw_subset()) * 255).astype(np.uint8)
    for i in range(60):
        _write_png(str(tmp_path / "real" / f"{i:03d}.png"), lfw[i])
    for j in range(20):
        _write_png(str(tmp_path / "syn" / f"s{j:02d}.png"), lfw[j] if j < 10 else lfw[100 + j])
    cfg = base_config()
    cfg.output_dir = str(tmp_path / "out")
    cfg.matchers = "dlib_resnet_v1,mobilefacenet"
    cfg.weights.mobilefacenet = str(wdir)
    for role, path in (("synthetic", "syn"), ("members", "real")):
        cfg.data[role].kind = "flat_folder"
        cfg.data[role].labelled = False
        cfg.data[role].path = str(tmp_path / path)
    cfg.attack.fmrs = (1e-2,)
    cfg.embed.flip = False
    cfg.embed.batch_size = 32
    cfg.report.gallery_n = 3
    rep = run_audit(cfg)
    writer.validate(rep)
    assert [m["name"] for m in rep["matchers"]] == ["dlib_resnet_v1", "mobilefacenet"]
    assert rep["matchers"][1]["metric"] == "cosine"
    ag = rep["agreement"]
    assert ag["fmr"] == 0.01 and len(ag["synthetic_images"]) == 1 and len(ag["pairs"]) == 1
    row = ag["synthetic_images"][0]
    lk = {m["name"]: [x for x in m["leakage"] if x["source"] == "calibrated"][0] for m in rep["matchers"]}
    assert row["flagged_a"] == lk["dlib_resnet_v1"]["synthetic_matched"]
    assert row["flagged_b"] == lk["mobilefacenet"]["synthetic_matched"]
    assert row["both"] <= min(row["flagged_a"], row["flagged_b"])
    # dlib finds the 10 exact copies
    assert lk["dlib_resnet_v1"]["synthetic_matched"] >= 10
    assert len(rep["gallery"]) == 6 and (tmp_path / "out" / "plots" / "mobilefacenet_scores.png").exists()
    assert rep["summary_lines"][0].startswith("2 matchers: dlib_resnet_v1: ")
    assert [m["unit"] for m in rep["matchers"]] == ["distance", "cosine"]


def test_calibration_from_verification_bin(tmp_path):
    """calibration.source=verification_bin: thresholds from the bin's pairs equal numpy's exact quantile of the
    impostor pair scores computed from the stored embeddings."""
    import io

    import skimage.data

    from synleak_jax.config import base_config
    from synleak_jax.audit import run_audit
    from synleak_jax.data.verification import write_bin
    from synleak_jax.embed.store import EmbeddingStore

    lfw = np.round(np.asarray(skimage.data.lfw_subset()) * 255).astype(np.uint8)[:100]

    def png(a):
        b = io.BytesIO()
        Image.fromarray(a, mode="L").convert("RGB").save(b, format="PNG")
        return b.getvalue()

    rng = np.random.default_rng(1)
    images, issame = [], []
    for p in range(240):
        if p < 40:  # genuine: an image and its mirror
            i = p
            images += [png(lfw[i]), png(lfw[i][:, ::-1].copy())]
            issame.append(True)
        else:
            i, j = rng.choice(100, 2, replace=False)
            images += [png(lfw[i]), png(lfw[j])]
            issame.append(False)
    write_bin(str(tmp_path / "pairs.bin"), images, issame)
    for i in range(30):
        _write_png(str(tmp_path / "real" / f"{i:03d}.png"), lfw[i])
        _write_png(str(tmp_path / "syn" / f"{i:03d}.png"), lfw[99 - i])
    cfg = base_config()
    cfg.output_dir = str(tmp_path / "out")
    cfg.matchers = "dlib_resnet_v1"
    for role, path in (("synthetic", "syn"), ("members", "real")):
        cfg.data[role].kind = "flat_folder"
        cfg.data[role].labelled = False
        cfg.data[role].path = str(tmp_path / path)
    cfg.calibration.source = "verification_bin"
    cfg.calibration.path = str(tmp_path / "pairs.bin")
    cfg.attack.fmrs = (1e-2,)
    cfg.embed.flip = False
    cfg.report.gallery_n = 2
    rep = run_audit(cfg)
    cal = rep["matchers"][0]["calibration"]
    assert cal["n_impostor_pairs"] == 200 and cal["n_genuine_pairs"] == 40
    st = EmbeddingStore.open(rep["matchers"][0]["stores"]["calibration"]["path"])
    e = np.asarray(st.embeddings[:], np.float64)
    d = np.linalg.norm(e[0::2] - e[1::2], axis=1)
    imp = -d[~np.asarray(issame)]
    tau = np.quantile(imp, 1 - 1e-2, method="inverted_cdf")
    assert cal["thresholds"][0]["tau_native"] == pytest.approx(-tau, abs=1e-12)
    assert cal["thresholds"][0]["fnmr"] == pytest.approx((-d[np.asarray(issame)] <= tau).mean())
    with pytest.raises(Exception, match="FMR 0.0001 cannot be calibrated.*10,000 impostor pairs.*only 200"):
        cfg.attack.fmrs = (1e-4,)
        run_audit(cfg)


PRESETS = ["demo", "dcface_vs_casia", "idiff_uniform_vs_ffhq", "idiff_twostage_vs_ffhq", "gandiffface_vs_ffhq",
           "sface_vs_casia", "idnet_vs_casia", "tinsley_style"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_are_consistent(name):
    import importlib.util

    from synleak_jax.config import DATA_KINDS
    from synleak_jax.models import registry

    from synleak_jax.configs import PRESET_DIR as root  # the presets moved into the package
    spec = importlib.util.spec_from_file_location(f"preset_{name}", os.path.join(root, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    doc = open(os.path.join(root, f"{name}.py")).read()
    for m in c.matchers.split(","):
        assert m in registry.available()
        if m != "dlib_resnet_v1":
            assert f"--config.weights.{m}=" in doc  # says where the weights go
    for role in ("synthetic", "members", "nonmembers"):
        assert c.data[role].kind in DATA_KINDS and c.data[role].align in ("none", "mtcnn")
    assert c.attack.identity_relation in ("auto", "on", "off")
    assert c.calibration.source in ("members", "nonmembers", "real_all", "verification_bin")
    assert all(0 < f < 1 for f in c.attack.fmrs) and c.output_dir.startswith("synleak_out/")
    if name != "demo":
        assert "--config.data.synthetic.path" in doc and "--config.data.members.path" in doc


def test_label_from_folder_names(tmp_path):
    """SFace/IDnet class folders are named by CASIA label ("0", "1", "10", "2" sort as strings): label_from=name
    maps every image to the integer in its folder name."""
    import types

    from synleak_jax.audit import AuditError, _labels
    from synleak_jax.config import base_config
    from synleak_jax.embed import door

    img = np.zeros((8, 8), np.uint8)
    for name in ("0", "1", "10", "2"):
        for k in range(2):
            _write_png(str(tmp_path / "syn" / name / f"{k}.png"), img)
    cfg = base_config()
    cfg.data.synthetic.path = str(tmp_path / "syn")
    cfg.data.synthetic.label_from = "name"
    ds = door.open_data(cfg.data.synthetic, "--config.data.synthetic")
    src_labels = ds.source.labels()
    got = _labels(types.SimpleNamespace(labels=src_labels), ds)
    want = [int(ds.source.class_names[c]) for c in src_labels]
    np.testing.assert_array_equal(got, want)
    assert sorted(set(got.tolist())) == [0, 1, 2, 10]
    _write_png(str(tmp_path / "syn" / "x" / "0.png"), img)
    ds = door.open_data(cfg.data.synthetic, "--config.data.synthetic")
    with pytest.raises(AuditError, match="class folder 'x' is not an integer id"):
        _labels(types.SimpleNamespace(labels=ds.source.labels()), ds)
