"""Videos in and out: the original's on-disk format, the ``tf.data`` loader, the
offline sample dataset with known motion, and the VoxCeleb fetcher.

Submodules load on first use, so ``import fomm_lessons.data`` imports neither
TensorFlow nor the network code of the VoxCeleb fetcher:

* :mod:`fomm_lessons.data.frames` - read and write videos (NumPy only);
* :mod:`fomm_lessons.data.stream` - long videos read and written a chunk at a time, large photos shrunk;
* :mod:`fomm_lessons.data.media` - frame rates, audio, output paths and output-folder marks;
* :mod:`fomm_lessons.data.crop` - faces cropped as the training data was (``fomm-lessons crop``);
* :mod:`fomm_lessons.data.face_detect` - faces found in one frame (the detector the crop uses);
* :mod:`fomm_lessons.data.loader` - :class:`~fomm_lessons.data.loader.FramesDataset`,
  training pairs and whole videos as ``tf.data``;
* :mod:`fomm_lessons.data.sample` - :func:`~fomm_lessons.data.sample.make_sample_dataset`,
  :func:`~fomm_lessons.data.sample.ground_truth_flow`;
* :mod:`fomm_lessons.data.voxceleb` - the VoxCeleb2 subset;
* :mod:`fomm_lessons.data.voxceleb_sources` - where its clips come from, and which are taken.
"""

import importlib

_SUBMODULES = {"frames", "loader", "sample", "voxceleb", "voxceleb_sources", "stream", "media", "crop", "face_detect"}
_EXPORTS = {
    "read_video": "frames", "write_video": "frames", "VideoError": "frames",
    "FramesDataset": "loader", "make_dataset": "loader",
    "make_sample_dataset": "sample", "ground_truth_flow": "sample",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_EXPORTS))
