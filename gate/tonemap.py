"""The tone-map policy label of HDR (OpenEXR) input, stored with the runs that use it. Light, so the
producer can record it; the worker's `worker.hdr` applies it."""

TONEMAP_VERSION = "srgb-clamp-v1"  # exposure in stops, clamp to [0, 1], sRGB transfer curve
HDR_SUFFIXES = (".exr",)


def tonemap_policy(exposure: float) -> str:
    """The label stored with a result, e.g. `exr:srgb-clamp-v1:exposure=+0`."""
    return f"exr:{TONEMAP_VERSION}:exposure={exposure:+g}"
