"""Pictures a caller hands in (Predictor.set_image, Session.process) -> HxWx3 uint8 RGB.

Sources convert whatever they read themselves (runtime.sources); this is the stricter
door for pictures that come from a caller's own code, where a silent guess would hide a
bug: the channel order is said, not assumed (OpenCV captures are BGR), and alpha is
dropped because it is named, not because a fourth channel happened to be there.
"""

from __future__ import annotations

import cv2
import numpy as np

from medsam_edge.errors import InputError

FORMATS = ("RGB", "BGR", "RGBA", "BGRA", "GRAY")


def to_rgb(image, image_format: str = "RGB") -> np.ndarray:
    """image: HxW or HxWx1 grey, HxWx3 in `image_format` ("RGB" or "BGR"), HxWx4 with
    alpha ("RGBA"/"BGRA", or "RGB"/"BGR" for a picture that carries an alpha channel it
    does not use); uint8. Returns a contiguous HxWx3 uint8 RGB copy or view."""
    fmt = str(image_format).upper()
    if fmt not in FORMATS:
        raise InputError(f"image_format {image_format!r}: expected one of {', '.join(FORMATS)}")
    a = np.asarray(image)
    if a.dtype != np.uint8:
        hint = ("scale floats to 0..255 and convert with .astype(np.uint8)" if a.dtype.kind == "f" else
                "convert masks with .astype(np.uint8) * 255" if a.dtype == np.bool_ else
                "window 16-bit data to 8 bits first (a DICOM source does this for you)")
        raise InputError(f"image dtype {a.dtype}: expected uint8; {hint}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2], default=0) == 0:
        raise InputError(f"image shape {a.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if a.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2RGB)
    if fmt == "GRAY":
        raise InputError(f"image shape {a.shape} with image_format GRAY: a grey picture is HxW")
    a = np.ascontiguousarray(a[:, :, :3])
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB) if fmt.startswith("BGR") else a
