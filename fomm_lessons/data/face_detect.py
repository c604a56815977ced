"""Faces in one frame, found by a detector that ships inside a wheel and works offline.

The detector is OpenCV's frontal-face Haar cascade ``haarcascade_frontalface_alt2``
(``opencv-python-headless`` < 5: OpenCV 5 no longer ships the cascades), chosen
by measurement against scikit-image's LBP frontal-face cascade (already a
dependency) with ``tests/scripts/face_detectors.py``: the photographs
astronaut, cameraman and grace_hopper, and 54 face frames (plus 18 of the cat)
of the offline sample set at 128x128, as they are, rotated and scaled. Faces
found (largest box with IoU >= 0.3 against the true one)::

                          photos        sample frames
                          LBP   Haar    LBP      Haar
    as they are           2/3   2/3     36/54    36/54
    rotated +-10 deg      4/6   4/6     52/108   66/108
    rotated +-20 deg      0/6   1/6      7/108   17/108
    rotated +-30 deg      0/6   0/6      0/108    0/108
    half the size         2/3   2/3     35/54    24/54
    twice the size        2/3   2/3     34/54    35/54
    false boxes, all cases  LBP 19 (5 on the cat), Haar 0
    time per 128x128 frame  LBP 187 ms, Haar 47 ms (2 busy cores)

Neither finds the cameraman (a three-quarter view): that is the missing
third. Haar finds more faces rotated, never a false one, and is four times
faster; it is weaker only on faces of about 36 pixels (half size), smaller
than a talking-head video's.
"""

import os

import numpy as np
from PIL import Image

DETECT_SIDE = 320  # frames are shrunk to this shorter side before detection
MIN_FACE = 1 / 8  # smallest face searched, as a fraction of the shorter side
CASCADE = "haarcascade_frontalface_alt2.xml"
_DETECTORS = {}


def _cascade():
    if CASCADE not in _DETECTORS:
        try:
            import cv2
        except ImportError:
            message = "the face crop needs OpenCV's Haar cascades: pip install 'opencv-python-headless<5'"
            raise ImportError(message) from None
        _DETECTORS[CASCADE] = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, CASCADE))
    return _DETECTORS[CASCADE]


def to_gray(frame):
    """A frame (H, W[, C]) as uint8 grayscale (H, W) in a Pillow image."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.round(np.clip(np.asarray(frame, np.float64), 0, 1) * 255).astype(np.uint8)
    if frame.ndim == 3:
        frame = frame[..., :3] if frame.shape[-1] >= 3 else frame[..., 0]
    return Image.fromarray(np.ascontiguousarray(frame)).convert("L")


def detect_faces(frame):
    """Frontal faces in ``frame`` (H, W[, 3], uint8 or float in [0, 1], or a Pillow image):
    a list of boxes (x, y, w, h) in its pixels, largest first."""
    gray = frame.convert("L") if isinstance(frame, Image.Image) else to_gray(frame)
    scale = min(1.0, DETECT_SIDE / min(gray.size))
    if scale < 1.0:
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
    small = max(24, int(MIN_FACE * min(gray.size)))
    found = _cascade().detectMultiScale(np.asarray(gray), scaleFactor=1.1, minNeighbors=5, minSize=(small, small))
    boxes = [tuple(float(v) / scale for v in box) for box in np.reshape(found, (-1, 4))]
    return sorted(boxes, key=lambda box: -box[2] * box[3])
