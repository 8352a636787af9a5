"""Colour order of the stored pixels: a per-dataset input setting, resolved once, applied right after decoding.

``channel_order`` says in which order the channels a standard decoder (libjpeg-turbo, PIL) returns must be read to
get true RGB:

* ``"rgb"``: the stored image decodes to true colours (the normal case);
* ``"bgr"``: it decodes with red and blue swapped (a writer handed an RGB array to OpenCV's encoder, which takes
  arrays as BGR), so the pipeline reverses the channels back;
* ``"auto"``: the known order of a recognised release (:data:`KNOWN_RELEASES`, keyed by a source's ``release``
  attribute), else ``"rgb"``.

The pipeline applies the resolved order right after decoding (before face alignment, which needs true RGB, and
before the matcher's own :class:`InputSpec` channel order, which is about the network's input, not the file).
The resolved :class:`ChannelOrder` (requested, resolved, reason) is recorded by the pipeline
(``Pipeline.describe_preprocessing()``) so the embedding-store manifest can carry it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Accepted values of ``channel_order``.
CHANNEL_ORDERS = ("rgb", "bgr", "auto")

#: Recognised releases (a source's ``release`` attribute) -> (stored channel order, evidence). docs/releases.md has
#: the table with sources. DCFace: read from its published code (mk-minchul/dcface @ 1d2c523): the generator works
#: in RGB, ``sample_batch`` reverses the channels (returns BGR) before ``Writer.write`` hands the array to
#: ``mx.recordio.pack_img`` (OpenCV's encoder, which takes BGR), so the stored JPEGs hold true colours; the
#: official converter ``dcface/convert/record.py`` (``mx.image.imdecode`` -> RGB, reversed for ``cv2.imwrite``)
#: only writes correct images if that is so. Not checked on the downloaded release itself (offline here).
KNOWN_RELEASES: dict[str, tuple[str, str]] = {
    "dcface_recordio": (
        "rgb",
        "DCFace RecordIO release (file.rec + file.idx + list.txt): per its published writer chain "
        "(extra_visualization.sample_batch returns BGR -> Writer.write -> mx.recordio.pack_img/OpenCV) the JPEGs "
        "hold true colours; not verified on the downloaded release (docs/releases.md)",
    ),
}


@dataclasses.dataclass(frozen=True)
class ChannelOrder:
    """The colour order used for one dataset: what was asked, what it resolved to, and why."""

    requested: str
    resolved: str
    reason: str

    @property
    def swap(self) -> bool:
        """True when decoded pixels must have their channels reversed to be RGB."""
        return self.resolved == "bgr"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_channel_order(value: str) -> str:
    """Returns ``value`` lower-cased if it is one of :data:`CHANNEL_ORDERS`, else raises ValueError naming it."""
    v = str(value).strip().lower()
    if v not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order={value!r}: choose one of {', '.join(CHANNEL_ORDERS)}")
    return v


def resolve_channel_order(requested: str, source=None) -> ChannelOrder:
    """Resolves ``requested`` ("rgb" | "bgr" | "auto") for ``source`` (anything with an optional ``release``).

    ``auto`` takes the known order of a recognised release (:data:`KNOWN_RELEASES`), else ``rgb``. Wrappers that
    hide the source (e.g. a subset view) should pass the resolved order ("rgb"/"bgr"), not "auto".
    """
    requested = check_channel_order(requested)
    if requested != "auto":
        return ChannelOrder(requested, requested, "set explicitly")
    release = getattr(source, "release", None)
    if release in KNOWN_RELEASES:
        order, evidence = KNOWN_RELEASES[release]
        return ChannelOrder("auto", order, f"recognised release {release}: {evidence}")
    return ChannelOrder("auto", "rgb", "no recognised release: stored pixels are taken as RGB")


def to_rgb(pixels: np.ndarray, order: ChannelOrder | str) -> np.ndarray:
    """uint8 ``[..., 3]`` decoded pixels -> true RGB (a C-contiguous copy when channels are reversed)."""
    resolved = order.resolved if isinstance(order, ChannelOrder) else check_channel_order(order)
    if resolved == "auto":
        raise ValueError("resolve channel_order 'auto' with resolve_channel_order() before applying it")
    return np.ascontiguousarray(pixels[..., ::-1]) if resolved == "bgr" else pixels
