"""The presets against the documented facts of their releases (issue #17, item 4): every audit preset has a row in
docs/audit.md's presets table and its dataset in docs/releases.md's table, each fact with a source; the colour
order the presets table states is what the preset asks for and what it resolves to."""

from __future__ import annotations

import importlib
import os
import re

from synleak_jax import configs
from synleak_jax.data import channels

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _table(path: str, header_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table whose header line starts with ``header_start``."""
    lines = open(os.path.join(REPO, path), encoding="utf-8").read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def _presets_of(first_cell: str) -> list[str]:
    return re.findall(r"`([a-z0-9_]+)`", first_cell)


def test_every_audit_preset_has_its_colour_order_and_open_facts_in_docs_audit():
    rows = _table("docs/audit.md", "| preset | synthetic set |")
    assert all(len(r) == 7 for r in rows)
    by_preset = {p: r for r in rows for p in _presets_of(r[0])}
    assert set(by_preset) == set(configs.available("audit"))

    class Release:  # what the synthetic source of a preset resolves "auto" with (recordio: DCFace's file.rec)
        def __init__(self, kind):
            self.release = "dcface_recordio" if kind == "recordio" else None

    for name, row in by_preset.items():
        cfg = importlib.import_module(f"synleak_jax.configs.{name}").get_config()
        colour, unconfirmed = row[5], row[6]
        assert unconfirmed, name  # what could not be confirmed is said, or "—"
        if name == "embeddings":
            assert colour == "—"
            continue
        requested = cfg.data.synthetic.channel_order
        resolved = channels.resolve_channel_order(requested, Release(cfg.data.synthetic.kind)).resolved
        want = f"auto -> {resolved}" if requested == "auto" else requested
        assert colour.split(" (")[0] == want, (name, colour, want)


def test_every_released_dataset_has_each_fact_and_its_source_in_docs_releases():
    rows = _table("docs/releases.md", "| preset / dataset |")
    assert all(len(r) == 6 and all(r) for r in rows)  # layout, labels, size/alignment, colour order, sources
    named = {p for r in rows for p in _presets_of(r[0])}
    named |= {"idiff_uniform_vs_ffhq", "idiff_twostage_vs_ffhq"} if "idiff_*_vs_ffhq" in " ".join(
        r[0] for r in rows) else set()
    presets = set(configs.available("audit")) - {"demo", "embeddings"}
    assert presets <= named
    for r in rows:
        order = r[4]
        # Each release's colour order is stated (bold rgb/bgr), or marked unconfirmed.
        assert order == "—" or re.match(r"\*\*(rgb|bgr)\*\*", order) or "Unconfirmed" in order, r[0]
    dcface = next(r for r in rows if r[0].startswith("`dcface_vs_casia` — **DCFace**"))
    assert "file.rec" in dcface[1] and "list.txt" in dcface[1] and "list.txt" in dcface[2]
    assert dcface[4].startswith(f"**{channels.KNOWN_RELEASES['dcface_recordio'][0]}**")
    assert "mk-minchul/dcface" in dcface[5] and "**Unconfirmed on the downloaded release**" in dcface[4]
