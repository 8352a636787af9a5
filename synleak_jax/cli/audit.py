r"""synleak-audit: audit a synthetic face dataset for identity leakage from its generator's real training images.

    synleak-audit                                   # the built-in demo (preset demo), offline
    synleak-audit --config=dcface_vs_casia --config.data.synthetic.path=/data/dcface \
        --config.data.members.path=/data/casia/train.rec --config.weights.adaface_ir101=/w/adaface_ir101_webface12m.ckpt
    synleak-audit --config=tinsley_style ... --emit_filtered_list
    synleak-audit --config=dcface_vs_casia --show_config  # every field, its value and what it means

--config takes a preset name (listed below) or a .py file with get_config(); override any field with
--config.<field>=<value>. Rerunning the same command resumes: finished embedding stores and analysis stages
are reused. See docs/audit.md and docs/cli.md.
"""

from __future__ import annotations

import os

from absl import app, flags

from synleak_jax.cli import common
from synleak_jax.config import base_config

_CONFIG = common.define_config_flag("config", "demo", "Audit config: a preset name (see the list below) or a "
                                   ".py file with get_config(); override fields with --config.<field>=<value>.",
                                   program="audit")
_EMIT = flags.DEFINE_bool("emit_filtered_list", None, "Write the synthetic set minus every image that matches a "
                          "real one at the chosen FMR (config remedy.*).")
_DRY = flags.DEFINE_bool("dry_run", False, "List the datasets (kinds, counts, sample rejects, face check), the stores "
                         "that would be reused or computed and the pairs of every stage, with a time and memory "
                         "estimate measured on this machine; embed nothing, write no store.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from synleak_jax.audit import AuditError, dry_run, format_plan, run_audit
    from synleak_jax.config import ConfigError
    from synleak_jax.embed.door import DoorError

    cfg = _CONFIG.value
    if _DRY.value:
        try:
            print(format_plan(dry_run(cfg)))
        except (AuditError, ConfigError, DoorError) as e:
            raise app.UsageError(str(e)) from None
        return
    try:
        with common.output_dir_guard(cfg.output_dir):  # a failed first run leaves no empty output directory
            rep = run_audit(cfg, emit_filtered_list=_EMIT.value)
    except (AuditError, ConfigError, DoorError) as e:
        raise app.UsageError(str(e)) from None
    out = os.path.abspath(cfg.output_dir)
    for line in rep.get("summary_lines", []):
        print(line)
    print(f"report: {os.path.join(out, 'index.html')}")


def run():
    common.run_program(main, doc=__doc__, config=_CONFIG, schema=base_config, presets="audit")


if __name__ == "__main__":
    run()
