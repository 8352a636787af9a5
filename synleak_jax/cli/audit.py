"""synleak-audit: audit a synthetic face dataset for identity leakage from its generator's real training images.

    synleak-audit                                   # the built-in demo (configs/demo.py), offline
    synleak-audit --config=configs/dcface_vs_casia.py --config.data.synthetic.path=/data/dcface \
        --config.data.members.path=/data/casia/train.rec --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt
    synleak-audit --config=configs/tinsley_style.py ... --emit_filtered_list

Rerunning the same command resumes: finished embedding stores and analysis stages are reused. See docs/audit.md.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags


def _default_config() -> str:
    # The repository's configs/demo.py when run from a checkout; the packaged demo config otherwise.
    here = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.py"))
    if os.path.exists(here):
        return here
    return os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "demo", "config.py"))


_CONFIG = config_flags.DEFINE_config_file("config", _default_config(), "Audit config (configs/<preset>.py).")
_EMIT = flags.DEFINE_bool("emit_filtered_list", None, "Write the synthetic set minus every image that matches a "
                          "real one at the chosen FMR (config remedy.*).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from synleak_jax.attack.run import AuditError, run_audit

    cfg = _CONFIG.value
    try:
        rep = run_audit(cfg, emit_filtered_list=_EMIT.value)
    except AuditError as e:
        raise app.UsageError(str(e)) from None
    out = os.path.abspath(cfg.output_dir)
    for m in rep["matchers"]:
        for lk in m["leakage"]:
            thr = f"FMR {lk['fmr']:g}" if lk["source"] == "calibrated" else lk["source"]
            logging.info("%s @ %s (tau %.4f): %d/%d synthetic images match %d/%d real images", m["name"], thr,
                         lk["tau_native"], lk["synthetic_matched"], lk["n_synthetic"], lk["real_images_matched"],
                         lk["n_real"])
        for r in m["membership"]["results"]:
            logging.info("%s membership (%s): AUC %.3f, balanced acc %.3f, TPR@FPR %s", m["name"], r["score"],
                         r["auc"], r["balanced_accuracy"], r["tpr_at_fpr"])
    print(f"report: {os.path.join(out, 'index.html')}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
