"""Trained models by name, the way ``keras.applications`` and ``torchvision`` offer them.

:func:`names` lists the models this package knows (their entries are in
:mod:`fomm_lessons.registry`), :func:`info` describes one
(its config, where its weights come from, their size and sha256, licence,
training data and measured quality) and :func:`load` returns ``(models,
config)``: the networks of :func:`fomm_lessons.checkpoint.build_models` with
their weights (``models.discriminator`` is None when none ships) and the FOMM
config dict they were built from. Where a name is accepted, a path (a
``.pth.tar``, a weights folder, a training run folder) is accepted too, with
its config.

Two kinds of weights:

* **shipped** in the package, ``fomm_lessons/weights/NAME/``: Keras weight
  files, ``digests.json`` (size and sha256 of each, checked at every load),
  ``MODEL_CARD.md``, ``quality.json`` and the training run's ``log.csv``. To
  replace them, copy the new ``*.weights.h5`` files in and run
  ``python -m fomm_lessons.pretrained --update-digests NAME``.
* **published** ``.pth.tar`` files of the original authors, fetched into the
  cache (``$FOMM_LESSONS_CACHE``, default ``~/.cache/fomm-lessons``) from the
  entry's URLs in order by :func:`fomm_lessons.download.fetch_file`: streamed
  with a progress bar, resumed with HTTP Range after an interruption, checked
  by size and sha256 where recorded (*verified*, by as many independent
  uploads as showed that pair; else printed: unverified), or by a mirror's
  own checksum for a mirror that serves another file, read with
  the torch-free reader when PyTorch is absent, and converted once to Keras
  weights in the cache (``NAME/keras/``), so that a second :func:`load` only
  reads those; their sizes and sha256 are recorded in ``converted.json`` when
  written and checked at every load, and files that differ are converted again
  from the cached ``.pth.tar``.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

from fomm_lessons.download import (DownloadError, Source, check_copy, check_file, fetch_file, file_digest,
                                   move_aside)
from fomm_lessons.registry import Entry, lookup, names, register, unregister

__all__ = ["Entry", "Source", "DownloadError", "names", "info", "load", "fetch", "resolve",
           "register", "unregister", "cache_dir", "update_digests", "verify_shipped",
           "torchvision_vgg19", "vgg19_weights"]

CACHE_ENV = "FOMM_LESSONS_CACHE"
MIRROR_ENV = "FOMM_LESSONS_MIRROR"  # a URL prefix tried before the registry's sources
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DIGESTS_FILE, QUALITY_FILE, CARD_FILE = "digests.json", "quality.json", "MODEL_CARD.md"
CONVERTED_MARKER = "converted.json"  # written last in NAME/keras/: the conversion is complete
UPDATE_HINT = "python -m fomm_lessons.pretrained --update-digests {name}"
# A torch.save file starts as a zip (torch >= 1.6) or as a protocol-2 pickle (the legacy layout).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02")
# torchvision's ImageNet VGG19, which the original's perceptual loss uses (modules/model.py, Vgg19:
# models.vgg19(pretrained=True)); torch.hub names a file by the first hex digits of its sha256.
TORCHVISION_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FOLDER = "vgg19"  # in the cache


# ---------------------------------------------------------------------------
# files, digests, the cache
# ---------------------------------------------------------------------------

def _read_json(path, default):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def _write_json(path, value):
    """Write ``value`` as JSON through a temporary file, so a reader never sees half of it."""
    partial = Path(f"{path}.tmp")
    partial.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def cache_dir():
    """``$FOMM_LESSONS_CACHE``, or ``~/.cache/fomm-lessons``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fomm-lessons").expanduser()


def shipped_folder(name):
    """The package folder of a shipped model's files."""
    entry = lookup(name)
    if not entry.shipped:
        raise ValueError(f"{name} is downloaded ({entry.filename}), not shipped in the package; "
                         f"expected one of {[n for n in names() if lookup(n).shipped]}")
    return WEIGHTS_DIR / entry.shipped


def training_log(name):
    """Path of the ``log.csv`` (one row per epoch) of a shipped model's training run."""
    path = shipped_folder(name) / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{name} ships no training log: {path} is missing")
    return path


def update_digests(name):
    """Record size and sha256 of every ``*.weights.h5`` of a shipped model in its ``digests.json``.

    The one step after replacing shipped weights; returns the new ``{file: {size, sha256}}``.
    """
    folder = shipped_folder(name)
    files = {}
    for path in sorted(folder.glob("*.weights.h5")):
        size, digests = file_digest(path)
        files[path.name] = {"size": size, "sha256": digests["sha256"]}
    if not files:
        raise FileNotFoundError(f"no *.weights.h5 files in {folder}")
    _write_json(folder / DIGESTS_FILE, {"files": files})
    return files


def verify_shipped(name):
    """The folder of a shipped model after checking each weight file's size and sha256 (ValueError if off)."""
    folder = shipped_folder(name)
    hint = f"if you replaced the weights on purpose, run `{UPDATE_HINT.format(name=name)}`"
    recorded = _read_json(folder / DIGESTS_FILE, {}).get("files")
    if not recorded:
        raise ValueError(f"{folder / DIGESTS_FILE} is missing or lists no files; {hint}")
    present = sorted(path.name for path in folder.glob("*.weights.h5"))
    if present != sorted(recorded):
        raise ValueError(f"{folder} holds {present}, but {DIGESTS_FILE} lists {sorted(recorded)}; {hint}")
    for filename, want in recorded.items():
        size, digests = file_digest(folder / filename)
        if (size, digests["sha256"]) != (want["size"], want["sha256"]):
            raise ValueError(f"{folder / filename}: {size} bytes with sha256 {digests['sha256']}, expected "
                             f"{want['size']} bytes with sha256 {want['sha256']} ({DIGESTS_FILE}); {hint}")
    return folder


def info(name):
    """A dict describing model ``name``: config, weights (where, size, sha256, verified), licence, quality."""
    entry = lookup(name)
    out = {"name": entry.name, "kind": "shipped" if entry.shipped else "download", "config": entry.config,
           "summary": entry.summary, "trained_on": entry.trained_on, "licence": entry.licence}
    if entry.shipped:
        folder = shipped_folder(name)
        files = _read_json(folder / DIGESTS_FILE, {}).get("files", {})
        card = folder / CARD_FILE
        out.update(folder=str(folder), files=files, size=sum(f["size"] for f in files.values()),
                   verified=bool(files), card=str(card) if card.exists() else None,
                   quality=_read_json(folder / QUALITY_FILE, {}))
        return out
    folder = cache_dir() / entry.name
    out.update(filename=entry.filename, size=entry.size, sha256=entry.sha256, verified=entry.sha256 is not None,
               verified_by=len(entry.sha256_sources), sha256_sources=list(entry.sha256_sources),
               sources=[dict(url=s.url, kind=s.kind, publisher=s.publisher, md5=s.md5, size=s.size,
                             sha256=s.sha256, own_copy=s.own) for s in entry.sources],
               cache=str(folder), converted=(folder / "keras" / CONVERTED_MARKER).exists(),
               cached=_read_json(folder / "keras" / CONVERTED_MARKER, {}).get("check"),
               quality=dict(entry.quality or {}))
    if entry.sha256 is None:
        out["note"] = ("unverified: the registry records no sha256 for this file yet, so any file that reads as "
                       "a checkpoint of this config is accepted; a download prints the sha256 it computed")
    else:
        count = len(entry.sha256_sources)
        what = "size and sha256" if entry.size is not None else "sha256 (its exact size is not recorded)"
        out["note"] = (f"verified: a copy is used only if its {what} match the {entry.filename} recorded from "
                       f"{count} independent source{'s' if count != 1 else ''}"
                       + (" (a single source: a second upload with the same sha256 would confirm it)"
                          if count == 1 else ""))
    own = sorted({s.publisher or s.url for s in entry.sources if s.own})
    if own:
        out["note"] += (f"; {', '.join(own)} serve{'s' if len(own) == 1 else ''} another file under this name, "
                        "checked by the checksum that mirror publishes, never against the recorded sha256")
    return out


def _verdict(entry, match):
    """How far a copy of ``entry``'s file is checked, in words; ``match``: the own-copy Source it matched."""
    if match is not None:
        known = ", ".join(f"{key} {value}" for key, value in (("size", match.size), ("sha256", match.sha256),
                                                              ("md5", match.md5)) if value is not None)
        return (f"{match.publisher or match.url}'s own copy, checked by its {known} only "
                f"(another file than the {entry.filename} of the recorded sha256)")
    if entry.sha256 is None:
        return "unverified (no sha256 is recorded)"
    count = len(entry.sha256_sources)
    what = "size and sha256" if entry.size is not None else "sha256"
    return f"verified: {what} match the pair recorded from {count} source{'s' if count != 1 else ''}"


def _still_accepted(entry, done):
    """Whether the file a conversion marker ``done`` records is still a copy the entry accepts."""
    def matches(size, sha256, md5):
        return all(want is None or done.get(key) == want
                   for key, want in (("size", size), ("sha256", sha256), ("md5", md5)))

    return matches(entry.size, entry.sha256, None) or any(s.own and matches(*s.expected()) for s in entry.sources)


# ---------------------------------------------------------------------------
# published files in the cache
# ---------------------------------------------------------------------------

def mirror_sources(entry, mirror=None):
    """The copy of ``entry``'s file on a mirror (``mirror``, else ``$FOMM_LESSONS_MIRROR``), tried first:
    ``MIRROR/FILENAME``, a URL prefix such as ``https://example.org/fomm`` or ``http://127.0.0.1:8000``."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if not mirror:
        return ()
    if not mirror.startswith(("https://", "http://")):
        raise ValueError(f"{MIRROR_ENV} or --mirror {mirror!r}: expected a URL starting with https:// or http://")
    return (Source(f"{mirror.rstrip('/')}/{entry.filename}", publisher=f"the mirror {mirror}"),)


def _fetch(entry, checkpoint=None, progress=True, mirror=None):
    """``(path, digests, match)`` of a checked copy of a published entry's file (see :func:`fetch`).

    ``digests``: its size, sha256 and md5; ``match``: None for the recorded file,
    else the mirror whose own copy it is (:func:`fomm_lessons.download.check_copy`).
    """
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {path}: no such file (expected {entry.filename} of {entry.name})")
        problem, digests, match = check_copy(path, entry.size, entry.sha256, entry.sources, _TORCH_MAGIC)
        if problem is not None:
            raise ValueError(f"{path} is not {entry.filename} of {entry.name}: {problem}")
        if entry.sha256 is None and match is None:
            print(f"fomm-lessons: {entry.name}: {path} has sha256 {digests['sha256']} (no sha256 is recorded for "
                  f"{entry.filename}: unverified)", file=sys.stderr)
        return path, digests, match
    target = cache_dir() / entry.name / entry.filename
    try:
        fetch_file(target, mirror_sources(entry, mirror) + entry.sources, entry.size, entry.sha256, _TORCH_MAGIC,
                   progress, label=f"{entry.name} ({entry.filename})")
    except DownloadError as error:
        raise DownloadError(
            f"{error} If you have {entry.filename}, pass it with --checkpoint PATH --config {entry.config}, "
            f"or convert it into the cache with `fomm-lessons models fetch {entry.name} --checkpoint PATH`"
        ) from None
    problem, digests, match = check_copy(target, entry.size, entry.sha256, entry.sources, _TORCH_MAGIC)
    if problem is not None:  # fetch_file has just checked it: only a file changed meanwhile gets here
        raise ValueError(f"{target} changed after its download: {problem}")
    return target, digests, match


def fetch(name, checkpoint=None, progress=True):
    """The path of a checked copy of a published model's ``.pth.tar``: in the cache, else downloaded.

    ``checkpoint``: a file you already have, checked (never changed) and used instead.
    A file that fails its checks is renamed aside and the next URL is tried.
    """
    entry = lookup(name)
    if entry.shipped:
        raise ValueError(f"{name} ships Keras weights in {shipped_folder(name)}; there is no .pth.tar to fetch")
    return _fetch(entry, checkpoint, progress)[0]


def converted_folder(name, checkpoint=None, progress=True, mirror=None):
    """The cache folder of a published model in Keras weight files, converted on first use."""
    from fomm_lessons.checkpoint import load_checkpoint, save_models
    from fomm_lessons.config import load_config

    entry = lookup(name)
    folder = cache_dir() / entry.name / "keras"
    marker = folder / CONVERTED_MARKER
    done = _read_json(marker, None)
    if checkpoint is None and done and _still_accepted(entry, done):
        problem = _converted_problem(folder, done.get("files"))
        if problem is None:
            return folder
        print(f"fomm-lessons: {problem}: converting again", file=sys.stderr)
    path, digests, match = _fetch(entry, checkpoint, progress, mirror)
    check = _verdict(entry, match)
    print(f"fomm-lessons: converting {path} ({check}) to Keras weights in {folder} (once)", file=sys.stderr)
    config = load_config(entry.config)
    try:
        models = load_checkpoint(path, config["model_params"], f"the config {entry.config}")
    except ValueError as error:
        if checkpoint is not None:  # the caller's own file: never moved
            raise
        raise ValueError(f"{error}; the download is moved to {move_aside(path)}") from None
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    files = {}
    for written in save_models(models, folder):
        size, written_digests = file_digest(written)
        files[Path(written).name] = {"size": size, "sha256": written_digests["sha256"]}
    _write_json(marker, {"name": entry.name, "config": entry.config, "from": str(path), "check": check,
                         "size": digests["size"], "sha256": digests["sha256"], "md5": digests["md5"],
                         "files": files})
    return folder


def _converted_problem(folder, files):
    """Why the converted weight files in ``folder`` are not those recorded when written, or None."""
    if not files:
        return f"{folder / CONVERTED_MARKER} records no digests (written by an older version)"
    present = sorted(path.name for path in folder.glob("*.weights.h5"))
    if present != sorted(files):
        return f"{folder} holds {present}, expected {sorted(files)}"
    for filename, want in files.items():
        size, digests = file_digest(folder / filename)
        if (size, digests["sha256"]) != (want["size"], want["sha256"]):
            return (f"{folder / filename} has {size} bytes with sha256 {digests['sha256']}, not the {want['size']} "
                    f"bytes with sha256 {want['sha256']} written")
    return None


# ---------------------------------------------------------------------------
# the perceptual loss's VGG19
# ---------------------------------------------------------------------------

def torchvision_vgg19(progress=True):
    """Path of torchvision's VGG19 convolutions in Keras' layout (an ``.npz`` in the cache), made once.

    Read from the torch hub cache when torchvision put the file there, else
    downloaded from :data:`TORCHVISION_VGG19_URL` into ``CACHE/vgg19/``; either
    way its sha256 must start with the hex digits of its name. Raises
    :class:`DownloadError` (one line, naming the URL) when it cannot be had.
    """
    from fomm_lessons.perceptual import find_torchvision_vgg19, keras_weights_from_torch, save_keras_layout
    from fomm_lessons.torchfile import read_torch_file

    filename = TORCHVISION_VGG19_URL.rsplit("/", 1)[-1]  # vgg19-dcbb9e9d.pth
    prefix = re.fullmatch(r"[\w.]+-([0-9a-f]{8,64})\.pth", filename)
    if prefix is None:
        raise ValueError(f"{TORCHVISION_VGG19_URL}: expected a file named NAME-SHA256PREFIX.pth, as torch.hub names them")
    folder = cache_dir() / VGG19_FOLDER
    converted = folder / f"{filename[:-len('.pth')]}.keras.npz"
    if converted.is_file():
        return converted
    hub = find_torchvision_vgg19()
    if hub is not None and os.path.basename(hub) == filename:
        problem, sha256 = check_file(hub, sha256=prefix.group(1), magic=_TORCH_MAGIC)
        if problem is not None:
            raise ValueError(f"{hub} (the torch hub cache) is not torchvision's {filename}: {problem}")
        path = Path(hub)
    else:
        path = folder / filename
        sha256 = fetch_file(path, (Source(TORCHVISION_VGG19_URL, publisher="torchvision"),), sha256=prefix.group(1),
                            magic=_TORCH_MAGIC, progress=progress, label=f"torchvision's VGG19 ({filename})")
    print(f"fomm-lessons: converting {path} to Keras' layout in {converted} (once)", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    weights = keras_weights_from_torch(read_torch_file(path))
    return save_keras_layout(weights, converted, f"torchvision's ImageNet VGG19 ({filename}, sha256 {sha256})")


def vgg19_weights(choice="auto", progress=True):
    """What ``--vgg CHOICE`` hands :class:`~fomm_lessons.perceptual.Vgg19Features`: torchvision's by path.

    ``torchvision`` and ``auto`` become the path of :func:`torchvision_vgg19`
    (``auto`` takes ``$FOMM_LESSONS_VGG19`` first); a failed download is one
    line that names the other choices, never a silent fallback. ``imagenet``
    (Keras' Caffe-trained VGG19), ``random`` and a file path pass unchanged.
    """
    from fomm_lessons.perceptual import WEIGHTS_ENV

    if choice == "auto" and os.environ.get(WEIGHTS_ENV):
        return os.environ[WEIGHTS_ENV]
    if choice not in ("auto", "torchvision"):
        return choice
    try:
        return str(torchvision_vgg19(progress))
    except DownloadError as error:
        raise DownloadError(f"--vgg {choice}: {error} The original's perceptual loss uses these weights; "
                            "pass --vgg imagenet for Keras' Caffe-trained VGG19 (other feature values), a weights "
                            "file, or --vgg random (a meaningless perceptual loss, for tests)") from None


# ---------------------------------------------------------------------------
# names and paths -> networks
# ---------------------------------------------------------------------------

def resolve(checkpoint, config=None, kind="weights", progress=True):
    """``(path, config)`` for a checkpoint given as a path (with its ``config``) or as a model name.

    ``kind="weights"``: a name gives a folder of Keras weight files (shipped, or
    converted in the cache); ``kind="torch"``: the published ``.pth.tar``. A
    name's config is the entry's unless ``config`` is given. An existing path
    wins over a name, as a config file wins over a built-in config's name.
    """
    text = os.fspath(checkpoint)
    if os.path.exists(text):
        if config is None:
            raise ValueError(f"the checkpoint path {text} needs its config (--config): only a model name "
                             f"brings its own ({', '.join(names())})")
        return text, config
    if text not in names():
        raise FileNotFoundError(f"no checkpoint {text!r}: it is not a file or folder, and not a model name "
                                f"(expected a path or one of {names()})")
    entry = lookup(text)
    config = entry.config if config is None else config
    if entry.shipped:
        if kind == "torch":
            raise ValueError(f"{text} ships Keras weights, not a .pth.tar, so there is nothing to convert: "
                             f"pass --checkpoint {text} to the other commands")
        return str(verify_shipped(text)), config
    if kind == "torch":
        return str(fetch(text, progress=progress)), config
    return str(converted_folder(text, progress=progress)), config


def load(name, config=None, progress=True):
    """``(models, config)``: the networks of model ``name`` with their weights, and their FOMM config dict.

    ``name`` is one of :func:`names` or a path (``.pth.tar``, weights folder or
    training run folder), which then needs ``config`` (a built-in name, a YAML
    path or a config dict). ``models.discriminator`` is None when no
    discriminator weights exist.
    """
    from fomm_lessons.checkpoint import load_checkpoint
    from fomm_lessons.config import load_config, validate_config

    path, config = resolve(name, config, "weights", progress)
    if isinstance(config, dict):
        config, label = validate_config(config), "the given config"
    else:
        config, label = load_config(config), f"the config {config}"
    return load_checkpoint(path, config["model_params"], label), config


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------

def _size_text(size):
    return "?" if size is None else f"{size / 2 ** 20:.1f} MiB"


def models_main(args):
    """``fomm-lessons models list | info NAME | fetch NAME [--checkpoint PATH]``."""
    if args.models_command == "list":
        print(f"{'NAME':<14}{'KIND':<10}{'CONFIG':<13}{'SIZE':<11}{'SHA256':<13}READY")
        for name in names():
            entry = info(name)
            ready = "shipped" if entry["kind"] == "shipped" else ("converted" if entry["converted"] else "no")
            verified = "unverified" if not entry["verified"] else (
                "verified" if entry["kind"] == "shipped" else f"verified({entry['verified_by']})")
            print(f"{name:<14}{entry['kind']:<10}{entry['config']:<13}{_size_text(entry['size']):<11}"
                  f"{verified:<13}{ready}")
        return 0
    if args.models_command == "info":
        print(json.dumps(info(args.name), indent=2))
        return 0
    entry = lookup(args.name)
    if entry.shipped:
        if args.checkpoint is not None:
            raise ValueError(f"{args.name} ships its weights; --checkpoint is only for downloaded models")
        print(verify_shipped(args.name))
    else:
        print(converted_folder(args.name, args.checkpoint, mirror=getattr(args, "mirror", None)))
    return 0


def write_float16_weights(source, target):
    """Copy a Keras ``.weights.h5`` with its float32 arrays stored as gzip'd float16; returns ``target``.

    Keras casts them back to float32 when it loads them into a model's
    variables, so such a file loads as any other. It is about half the size:
    the way a shipped model stays small (the weights move by at most 2^-11 of
    their size, which the shipped model's measures are taken after).
    """
    import h5py
    import numpy as np

    # HDF5's 1.10 object format (readable by HDF5 1.10 and newer) and one chunk per array: the
    # default format's headers and chunk indices took a fifth of the file (108 arrays).
    with h5py.File(source, "r") as old, h5py.File(target, "w", libver=("v110", "latest")) as new:
        def copy(name, item):
            if isinstance(item, h5py.Dataset):
                data = item[()]
                if data.dtype == np.float32:
                    new.create_dataset(name, data=data.astype(np.float16), compression="gzip",
                                       compression_opts=9, shuffle=True, chunks=data.shape or None)
                else:
                    new.create_dataset(name, data=data)
            else:
                new.require_group(name)
            new[name].attrs.update(dict(item.attrs))

        old.visititems(copy)
        new.attrs.update(dict(old.attrs))
    return target


def ship(run_models, name):
    """Write a run's ``kp_detector`` and ``generator`` weights (``RUN/models/``) as model ``name``'s
    shipped files, in float16 (:func:`write_float16_weights`), and record their digests."""
    folder = WEIGHTS_DIR / name
    run_models = Path(run_models)
    sources = [run_models / f"{net}.weights.h5" for net in ("kp_detector", "generator")]
    for path in sources:
        if not path.is_file():
            raise FileNotFoundError(f"expected a run's models folder holding {path.name}, got {run_models}")
    folder.mkdir(parents=True, exist_ok=True)
    for path in sources:
        write_float16_weights(path, folder / path.name)
    return update_digests(name)


def main(argv=None):
    """``python -m fomm_lessons.pretrained --update-digests NAME`` (after replacing shipped weights)."""
    parser = argparse.ArgumentParser(prog="python -m fomm_lessons.pretrained", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--update-digests", metavar="NAME", help="record size and sha256 of the shipped files")
    action.add_argument("--verify", metavar="NAME", help="check the shipped files against digests.json")
    action.add_argument("--ship", nargs=2, metavar=("RUN_MODELS", "NAME"),
                        help="write a run's models (RUN/models) as NAME's shipped files, in float16")
    args = parser.parse_args(argv)
    try:
        if args.ship:
            for filename, digest in ship(*args.ship).items():
                print(f"{filename}: {digest['size']} bytes, sha256 {digest['sha256']}")
        elif args.update_digests:
            for filename, digest in update_digests(args.update_digests).items():
                print(f"{filename}: {digest['size']} bytes, sha256 {digest['sha256']}")
        else:
            print(f"{verify_shipped(args.verify)}: every file matches {DIGESTS_FILE}")
    except (OSError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
