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
    from synleak_jax.audit import AuditError, dry_run, run_audit
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


def run():
    common.run_program(main, doc=__doc__, config=_CONFIG, schema=base_config, presets="audit")


if __name__ == "__main__":
    run()
