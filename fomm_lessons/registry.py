"""The models this package knows by name: one :class:`Entry` each, registered at import.

An entry says what a model is (its config, what it was trained on, its licence,
its measured quality) and where its weights are: shipped in the package, or
published by the authors at the URLs of its sources, tried in order.
:mod:`fomm_lessons.pretrained` fetches, checks, converts and loads them.
"""

import dataclasses
import urllib.parse

from fomm_lessons.download import Source


@dataclasses.dataclass(frozen=True)
class Entry:
    """A model by name: shipped Keras weights (``shipped``) or a published file (``sources``)."""

    name: str
    config: str  # a built-in config name or a YAML path
    summary: str
    trained_on: str
    licence: str
    shipped: str = None  # folder under fomm_lessons/weights/
    sources: tuple = ()  # Source, tried in order
    filename: str = None  # of the published file, in the cache
    size: int = None  # bytes of the published file, once known
    sha256: str = None  # of the published file, once known; None: unverified
    sha256_sources: tuple = ()  # the independent uploads where this size and sha256 were read
    quality: dict = None  # measured quality of a published model (shipped ones: quality.json)


def _huggingface(repo, path):
    """The URL that serves ``path`` of a Hugging Face repository (a Space's: ``repo`` = "spaces/OWNER/NAME")."""
    return f"https://huggingface.co/{repo}/resolve/main/{path}"


def _yandex(public_key, path):
    """The Yandex Disk API call that answers with a download link for ``path`` in a public folder."""
    query = urllib.parse.urlencode({"public_key": public_key, "path": path})
    return f"https://cloud-api.yandex.net/v1/disk/public/resources/download?{query}"


# Where the published checkpoints are (from the READMEs and scripts of public repositories; links
# die, so every known one is listed, the authors' own first):
# * The authors' README (AliaksandrSiarohin/first-order-model) links a Google Drive folder,
#   drive.google.com/open?id=1PyQJmkdCsAkOYwUyaj_l-l0as-iLDgeH, and a Yandex Disk folder,
#   yadi.sk/d/lEw8uRm140L_eQ. Drive folders cannot be listed without an API key, so only the
#   Yandex folder is tried (its public API gives a direct link to one file of the folder).
# * graphemecluster/first-order-model-demo, whose Colab demo the authors' README points to,
#   mirrors both files as assets of its GitHub release "checkpoints".
# * Hugging Face: the Space abhishek/first-order-motion-model (linked from the authors' README)
#   holds weights/vox-adv-cpk.pth.tar; the model repository ashpexx/my-models holds another upload
#   of it; MCMLXXXVII/thinplatesv1 holds vox-cpk.pth.tar. The path inside the last two repositories
#   was not recorded with their hashes: the file name at the root is tried (a 404 falls through).
# * Avatarify (alievk/avatarify-python) mirrors a vox-adv-cpk.pth.tar on S3 and Google Drive and
#   publishes its md5, 8a45a24037871c045fbb8a6a8aa95ebc. That copy is 228 MB, not the 751 MB file
#   below: another file under the same name, so it is checked against its md5 alone (Source.md5 makes
#   it a mirror's own copy, see fomm_lessons.download) and never against the recorded sha256.
# The sizes and sha256 below are those of the Hugging Face uploads named, as this project's issue 24
# records them (Hugging Face shows both for a file kept in Git LFS):
# * vox-adv-cpk.pth.tar: 750,926,934 bytes, sha256 6792d681..., the same pair in two independent
#   uploads (the Space above and ashpexx/my-models): verified by two sources.
# * vox-cpk.pth.tar: about 729 MB (its exact byte count was not recorded, so the size is not checked;
#   the sha256 decides), sha256 abb41ab1..., from MCMLXXXVII/thinplatesv1 alone: a single source,
#   until a second upload with the same sha256 is found.
# A download whose size or sha256 differs is refused and moved aside, and the next mirror is tried.
_AUTHORS_YANDEX = "https://yadi.sk/d/lEw8uRm140L_eQ"
_DEMO_RELEASE = "https://github.com/graphemecluster/first-order-model-demo/releases/download/checkpoints"
_HF_SPACE = "spaces/abhishek/first-order-motion-model"
_HF_ASHPEXX = "ashpexx/my-models"
_HF_THINPLATES = "MCMLXXXVII/thinplatesv1"
_AVATARIFY_MD5 = "8a45a24037871c045fbb8a6a8aa95ebc"
VOX_ADV_SIZE = 750_926_934
VOX_ADV_SHA256 = "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3"
VOX_SHA256 = "abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23"
_VOX_TRAINED_ON = ("VoxCeleb1 (Nagrani, Chung and Zisserman 2017): face videos from YouTube interviews, "
                   "cropped to 256x256 by the authors' video-preprocessing")
_VOX_LICENCE = ("published by the FOMM authors beside their code (CC BY-NC 4.0 until 2023, MIT since), "
                "with no separate licence stated for the weights; the training videos come from YouTube")
_VOX_QUALITY = {"note": "not measured here: it needs the VoxCeleb test set (fomm-lessons reconstruct)"}

_REGISTRY = {}


def register(entry, replace=False):
    """Add ``entry`` to the names :func:`~fomm_lessons.pretrained.load` knows; returns it.

    Tests and mirrors add their own.
    """
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"a model named {entry.name!r} is already registered (pass replace=True)")
    if bool(entry.shipped) == bool(entry.sources):
        raise ValueError(f"model {entry.name!r}: expected either shipped weights or sources, not both or none")
    if entry.sources and not entry.filename:
        raise ValueError(f"model {entry.name!r}: a downloaded model needs a filename")
    if entry.sha256_sources and entry.sha256 is None:
        raise ValueError(f"model {entry.name!r}: sha256_sources {list(entry.sha256_sources)} name where a "
                         "sha256 was read, but no sha256 is recorded")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name):
    """Remove a name added with :func:`register`; returns its entry."""
    return _REGISTRY.pop(lookup(name).name)


register(Entry(
    "sample-64", config="sample-64", shipped="sample-64",
    summary="the cpu-64 networks trained by this project on the offline sample faces, 64x64",
    trained_on=("the offline sample set with the 'extended' identities: 8 training images from scikit-image "
                "and matplotlib sample data moved by known motions, the unseen test face grace_hopper "
                "(fomm-lessons data sample --size 64 --identities extended --seed 0)"),
    licence="MIT (this project); the training photographs are public domain or CC0 "
            "(fomm_lessons.data.sample.SOURCES)"))
register(Entry(
    "puppets-64", config="puppets-64", shipped="puppets-64",
    summary="a First Order Motion Model trained by this project on the procedural puppets world, 64x64",
    trained_on=("the puppets world: 400 jointed figures (torso, head, two arms; blinking eyes, a mouth that "
                "opens) with their true motion, occlusion and parts (fomm-lessons data puppets --size 64 "
                "--identities 400 --seed 0); tested on unseen figures and motions (--seed 1)"),
    licence="MIT (this project); the training data is procedural, made by this project's code"))
register(Entry(
    "sample-64-v2", config="sample-64-v2", shipped="sample-64-v2",
    summary="sample-64 trained again (issue 22): puppets-64's networks, losses and weights as the start, on "
            "the same offline sample faces, 64x64",
    trained_on=("the offline sample set with the 'extended' identities, as sample-64 (fomm-lessons data sample "
                "--size 64 --identities extended --seed 0), fine-tuned from puppets-64 (--init-from)"),
    licence="MIT (this project); the training photographs are public domain or CC0 "
            "(fomm_lessons.data.sample.SOURCES); the starting weights are puppets-64's (procedural data)"))
register(Entry(
    "vox-256", config="vox-256", filename="vox-cpk.pth.tar",
    summary="the authors' published VoxCeleb model without the adversarial loss (vox-cpk.pth.tar), 256x256",
    trained_on=_VOX_TRAINED_ON, licence=_VOX_LICENCE, quality=_VOX_QUALITY,
    sha256=VOX_SHA256, sha256_sources=(f"huggingface.co/{_HF_THINPLATES}",),
    sources=(Source(_yandex(_AUTHORS_YANDEX, "/vox-cpk.pth.tar"), "yandex", "the authors (Yandex Disk)"),
             Source(f"{_DEMO_RELEASE}/vox-cpk.pth.tar", publisher="graphemecluster/first-order-model-demo"),
             Source(_huggingface(_HF_THINPLATES, "vox-cpk.pth.tar"), publisher=f"Hugging Face {_HF_THINPLATES}"))))
register(Entry(
    "vox-adv-256", config="vox-adv-256", filename="vox-adv-cpk.pth.tar",
    summary="the authors' published VoxCeleb model with the adversarial loss (vox-adv-cpk.pth.tar), 256x256",
    trained_on=_VOX_TRAINED_ON, licence=_VOX_LICENCE, quality=_VOX_QUALITY,
    size=VOX_ADV_SIZE, sha256=VOX_ADV_SHA256,
    sha256_sources=(f"huggingface.co/{_HF_SPACE} (weights/vox-adv-cpk.pth.tar)", f"huggingface.co/{_HF_ASHPEXX}"),
    sources=(Source(_yandex(_AUTHORS_YANDEX, "/vox-adv-cpk.pth.tar"), "yandex", "the authors (Yandex Disk)"),
             Source(f"{_DEMO_RELEASE}/vox-adv-cpk.pth.tar", publisher="graphemecluster/first-order-model-demo"),
             Source(_huggingface(_HF_SPACE, "weights/vox-adv-cpk.pth.tar"), publisher=f"Hugging Face {_HF_SPACE}"),
             Source(_huggingface(_HF_ASHPEXX, "vox-adv-cpk.pth.tar"), publisher=f"Hugging Face {_HF_ASHPEXX}"),
             Source("https://openavatarify.s3.amazonaws.com/weights/vox-adv-cpk.pth.tar",
                    publisher="avatarify (S3)", md5=_AVATARIFY_MD5),
             Source("https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar",
                    publisher="avatarify (S3)", md5=_AVATARIFY_MD5),
             Source("https://drive.usercontent.google.com/download?id=1coUCdyRXDbpWnEkA99NLNY60mb9dQ_n3"
                    "&export=download&confirm=t", publisher="avatarify (Google Drive)", md5=_AVATARIFY_MD5))))


def names():
    """The model names :func:`~fomm_lessons.pretrained.load` accepts."""
    return list(_REGISTRY)


def lookup(name):
    """The registered :class:`Entry` called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {names()}")
    return _REGISTRY[name]

