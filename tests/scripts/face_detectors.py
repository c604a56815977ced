"""Which offline face detector finds faces more reliably: scikit-image's LBP cascade or OpenCV's Haar cascade.

    python tests/scripts/face_detectors.py [--size 128] [--every 4]

Inputs: the photographs astronaut, cameraman and grace_hopper (their
hand-set face boxes are ``fomm_lessons.data.sample.SOURCES[name]["fallback"]``)
and every ``--every``-th frame of the offline sample set at ``--size`` (the
face box there is the central 1/1.8 of the frame; the cat's frames must show
no face), each as it is, rotated about the face by +-10, 20, 30 degrees, and
scaled by 0.5 and 2. A face is found when the largest box overlaps the true
one with IoU >= 0.3; a false box overlaps it with IoU < 0.1 (any box on the
cat). Prints one JSON line per detector and case. The numbers are quoted in
``fomm_lessons/data/crop.py``.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image


def lbp_detector():
    from skimage import data, feature

    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())

    def detect(gray):  # the settings of fomm_lessons.data.sample.detect_face
        small = max(24, min(gray.shape) // 10)
        found = cascade.detect_multi_scale(img=gray.astype(np.float32) / 255, scale_factor=1.2, step_ratio=1,
                                           min_size=(small, small), max_size=gray.shape)
        return [(d["c"], d["r"], d["width"], d["height"]) for d in found]

    return detect


def haar_detector(name="haarcascade_frontalface_alt2.xml"):
    import cv2

    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))

    def detect(gray):  # the settings of fomm_lessons.data.crop.detect_faces, with sample's smallest face
        small = max(24, min(gray.shape) // 10)
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(small, small))
        return [tuple(map(float, box)) for box in np.reshape(found, (-1, 4))]

    return detect


def iou(a, b):
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def transformed(image, box, angle, scale):
    """``image`` (uint8) rotated by ``angle`` degrees about the centre of ``box`` and scaled; the new box."""
    x, y, w, h = box
    centre = (x + w / 2, y + h / 2)
    out = Image.fromarray(image).rotate(angle, resample=Image.Resampling.BILINEAR, center=centre)
    if scale != 1:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(out.convert("L")), (centre[0] * scale - w * scale / 2, centre[1] * scale - h * scale / 2,
                                          w * scale, h * scale)


def inputs(size, every):
    """(uint8 image, true face box or None for the cat, kind) for the photographs and the sample frames."""
    from fomm_lessons.data import sample
    from fomm_lessons.data.frames import read_video

    for name in ("astronaut", "cameraman", "grace_hopper"):
        row, col, side = sample.SOURCES[name]["fallback"]
        image = np.asarray(Image.fromarray(np.asarray(sample.SOURCES[name]["load"]())).convert("RGB"))
        yield image, (col - side / 2, row - side / 2, side, side), "photos"
    with tempfile.TemporaryDirectory() as root:
        sample.make_sample_dataset(root, size=size, seed=0)
        face = size / 1.8
        for video in sorted(sample.load_meta(root)["videos"]):
            for frame in read_video(os.path.join(root, video))[::every]:
                box = None if "chelsea" in video else ((size - face) / 2, (size - face) / 2, face, face)
                yield np.round(frame * 255).astype(np.uint8), box, f"sample-{size}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    detectors = {"skimage-lbp": lbp_detector(), "opencv-haar-alt2": haar_detector()}
    cases = [(angle, 1.0) for angle in (-30, -20, -10, 0, 10, 20, 30)] + [(0, 0.5), (0, 2.0)]
    images = list(inputs(args.size, args.every))
    for name, detect in detectors.items():
        for angle, scale in cases:
            tally = {}
            for image, box, kind in images:
                reference = box or (image.shape[1] / 2, image.shape[0] / 2, 1, 1)
                gray, truth = transformed(image, reference, angle, scale)
                start = time.perf_counter()
                found = detect(gray)
                seconds = time.perf_counter() - start
                counts = tally.setdefault(kind if box else "cat", [0, 0, 0, 0.0])
                counts[1] += 1
                counts[3] += seconds
                if box is None:
                    counts[2] += bool(found)
                    continue
                largest = max(found, key=lambda b: b[2] * b[3]) if found else None
                counts[0] += largest is not None and iou(largest, truth) >= 0.3
                counts[2] += any(iou(b, truth) < 0.1 for b in found)
            print(json.dumps({"detector": name, "rotation": angle, "scale": scale, **{
                kind: {"found": f"{c[0]}/{c[1]}", "with_false_box": c[2], "ms": round(1000 * c[3] / c[1], 1)}
                for kind, c in tally.items()}}), flush=True)


if __name__ == "__main__":
    main()
