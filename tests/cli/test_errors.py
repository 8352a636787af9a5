"""One-line user errors in every CLI (cli/common.run_program): real mistakes, run as the console scripts run,
end in exactly one stderr line ``synleak-<prog>: error: <message>`` naming the file or flag, exit status 2,
no traceback, and no output directory left behind; --debug / SYNLEAK_DEBUG=1 brings the traceback back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.cli.test_help import run_cli


def one_line_error(p, prog: str) -> str:
    """Asserts the one-line error contract and returns the message."""
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith(f"synleak-{prog}: error: "), lines[0]
    return lines[0][len(f"synleak-{prog}: error: "):]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    (root / "garbage.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "not_a_store").mkdir()
    (root / "not_a_store" / "readme.txt").write_text("hello")
    np.save(root / "q.npy", np.zeros((4, 8), np.float32))
    np.save(root / "db3d.npy", np.zeros((4, 8, 2), np.float32))
    return root


def test_convert(files, tmp_path):
    msg = one_line_error(run_cli("synleak_jax.cli.convert", f"--weights={files / 'missing.pth'}",
                                 f"--out={tmp_path / 'out'}"), "convert")
    assert str(files / "missing.pth") in msg
    msg = one_line_error(run_cli("synleak_jax.cli.convert", f"--weights={files / 'garbage.pth'}",
                                 f"--out={tmp_path / 'out'}"), "convert")
    assert str(files / "garbage.pth") in msg
    assert one_line_error(run_cli("synleak_jax.cli.convert", f"--out={tmp_path / 'out'}"),
                          "convert") == "--weights is required"
    assert not (tmp_path / "out").exists()


def test_embed(files, tmp_path):
    out = tmp_path / "stores" / "x"
    msg = one_line_error(run_cli("synleak_jax.cli.embed", f"--config.data.path={files / 'no_such_data'}",
                                 f"--config.output={out}", "--config.random_init=true"), "embed")
    assert str(files / "no_such_data") in msg
    msg = one_line_error(run_cli("synleak_jax.cli.embed", "--config=nope"), "embed")
    assert msg.startswith("flag --config=nope: unknown preset 'nope'; known presets: embed")
    assert not (tmp_path / "stores").exists()


def test_knn(files, tmp_path):
    out = tmp_path / "knn"
    msg = one_line_error(run_cli("synleak_jax.cli.knn", f"--config.queries={files / 'q.npy'}",
                                 f"--config.database={files / 'not_a_store'}", f"--config.output={out}"), "knn")
    assert msg.startswith("--config.database:") and str(files / "not_a_store") in msg
    msg = one_line_error(run_cli("synleak_jax.cli.knn", f"--config.queries={files / 'q.npy'}",
                                 f"--config.database={files / 'db3d.npy'}", f"--config.output={out}"), "knn")
    assert "must be [n, D]" in msg
    msg = one_line_error(run_cli("synleak_jax.cli.knn", "--config.knn.kk=3"), "knn")
    assert msg == "--config.knn.kk: no such config field (--show_config lists every field)"
    assert not out.exists()


def test_prepare_fetch_and_bench(files, tmp_path):
    with ThreadPoolExecutor(max_workers=3) as pool:
        prepare = pool.submit(run_cli, "synleak_jax.cli.prepare", "--dataset=sface",
                              f"--manual_dir={files / 'no_such_dir'}", f"--data_dir={tmp_path / 'tfds'}")
        fetch = pool.submit(run_cli, "synleak_jax.cli.fetch_mtcnn", f"--wheel={files / 'missing.whl'}",
                            f"--cache_dir={tmp_path / 'cache'}")
        bench = pool.submit(run_cli, "synleak_jax.cli.bench_knn", "--params={not json")
    assert str(files / "no_such_dir") in one_line_error(prepare.result(), "prepare")
    assert str(files / "missing.whl") in one_line_error(fetch.result(), "fetch-mtcnn")
    assert one_line_error(bench.result(), "bench-knn").startswith("--params is not valid JSON")
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "cache").exists()


def test_flag_mistakes_are_one_line():
    msg = one_line_error(run_cli("synleak_jax.cli.prepare", "--no_such_flag=1"), "prepare")
    assert msg == "Unknown command line flag 'no_such_flag' (see synleak-prepare --help)"
    msg = one_line_error(run_cli("synleak_jax.cli.bench_knn", "--nq=many"), "bench-knn")
    assert msg.startswith("flag --nq=many: ")
    msg = one_line_error(run_cli("synleak_jax.cli.convert", "--weights=x", "--out=y", "stray"), "convert")
    assert msg == "unexpected arguments: stray"


def test_audit(files, tmp_path):
    out = tmp_path / "audit_out"
    msg = one_line_error(run_cli("synleak_jax.cli.audit", "--config=dcface_vs_casia",
                                 f"--config.output_dir={out}"), "audit")
    assert "--config.weights.adaface_ir101" in msg
    msg = one_line_error(run_cli("synleak_jax.cli.audit", "--config=demo", "--config.demo.enabled=false",
                                 f"--config.data.synthetic.path={files / 'no_such_dataset'}",
                                 f"--config.output_dir={out}"), "audit")
    assert "--config.data.synthetic.path" in msg and str(files / "no_such_dataset") in msg
    # garbage matcher weights: one line naming the file (was a 26-40 line traceback)
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(flat / f"{i}.png")
    msg = one_line_error(run_cli(
        "synleak_jax.cli.audit", "--config=demo", "--config.demo.enabled=false",
        *(f"--config.data.{role}.path={flat}" for role in ("synthetic", "members", "nonmembers")),
        f"--config.weights.dlib_resnet_v1={files / 'garbage.pth'}", "--config.attack.fmrs=(0.1,)",
        f"--config.output_dir={out}"), "audit")
    assert str(files / "garbage.pth") in msg and "--config.weights.dlib_resnet_v1" in msg
    assert not out.exists()  # the failed run left no (empty) output directory


def test_debug_shows_the_traceback(files, tmp_path):
    args = [f"--weights={files / 'missing.pth'}", f"--out={tmp_path / 'out'}"]
    p = run_cli("synleak_jax.cli.convert", *args, "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr and "FileNotFoundError" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("synleak-convert: error: ")
    p = run_cli("synleak_jax.cli.knn", f"--config.queries={files / 'q.npy'}",
                f"--config.database={files / 'not_a_store'}", f"--config.output={tmp_path / 'k'}",
                env={"SYNLEAK_DEBUG": "1"})
    assert p.returncode == 2 and "Traceback" in p.stderr and "UsageError" in p.stderr
    p = run_cli("synleak_jax.cli.knn", f"--config.queries={files / 'q.npy'}",
                f"--config.database={files / 'not_a_store'}", f"--config.output={tmp_path / 'k'}",
                env={"SYNLEAK_DEBUG": "0"})
    one_line_error(p, "knn")
