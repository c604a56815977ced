"""Where VoxCeleb clips come from, and which of them a fetch takes.

A source lists its clips (:class:`Clip`: identity, YouTube id, clip number) and
reads the bytes of one: :class:`RemoteZipSource` by HTTP range requests,
:class:`LocalZipSource` from a zip on disk, :class:`VideoFolderSource` from a
folder of videos. :func:`choose_clips` picks identities and clips for the train
and test splits. :mod:`fomm_lessons.data.voxceleb` fetches what they give.
"""

import dataclasses
import pathlib
import random
import re
import zipfile
import zlib

from fomm_lessons.data import remote_zip

TEST_FRACTION = 0.2  # share of identities held out for the test split
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
# The most bytes one clip may hold, inflated, where the pinned manifest records no size (a VoxCeleb2
# clip is seconds of 224x224 video): a larger member is refused before it is inflated, so that a
# crafted zip fills neither the memory nor the disk.
MAX_CLIP_BYTES = 64 << 20
# mp4/id00017/01dfn2spqyE/00001.mp4, with any prefix before the identity folder.
_VOX_PATH = re.compile(r"(?:^|/)(id\d+)/([^/]+)/([^/]+)\.mp4$")


class VoxCelebError(RuntimeError):
    """A clip could not be fetched, decoded or verified; the message names it and why."""


class BadClip(VoxCelebError):
    """One clip's bytes fail their CRC or are not a video: it is skipped, the others go on."""

    def __init__(self, reason, log=None):
        super().__init__(reason)
        self.reason, self.log = reason, log


@dataclasses.dataclass(frozen=True)
class Clip:
    """One source video: its identity, YouTube id, clip number and where it lives."""

    identity: str
    video: str
    number: str
    member: str  # path inside the zip or the folder, recorded in the manifest
    ref: object  # what the source reads: ZipMember, zip member name or file path

    @property
    def name(self):
        """The FOMM folder name, identity first: ``id00017#01dfn2spqyE#00001.mp4``."""
        return f"{self.identity}#{self.video}#{self.number}.mp4"


class RemoteZipSource:
    """Clips read by range requests from the zip at ``url``."""

    def __init__(self, url):
        self.zip = remote_zip.RemoteZip(url)
        self.url = url

    def clips(self):
        return clips_from_names(self.zip.members(), lambda member: member.name)

    def read(self, clip):
        try:
            return self.zip.read(clip.ref)
        except remote_zip.BadMemberError as error:
            raise BadClip(str(error).removeprefix(f"{self.url}: ")) from None

    def copy(self, clip, file, limit):
        """Inflate one clip into ``file`` as it comes; a member larger than ``limit`` is refused unread."""
        try:
            return self.zip.copy(clip.ref, file, limit)
        except remote_zip.BadMemberError as error:
            raise BadClip(str(error).removeprefix(f"{self.url}: ")) from None

    def describe(self):
        http = self.zip.http
        return {"kind": "http-range", "url": self.url, "zip_bytes": http.size,
                "downloaded_bytes": http.bytes_received,
                **{key.lower().replace("-", "_"): value for key, value in http.redirect_headers.items()}}


class LocalZipSource:
    """Clips of a zip on disk (the official archive or a downloaded copy)."""

    def __init__(self, path, kind="zip", url=None):
        self.path, self.kind, self.url = pathlib.Path(path), kind, url
        if not self.path.is_file():
            raise FileNotFoundError(f"--zip {self.path}: no such file")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as error:
            raise VoxCelebError(f"{self.path}: not a readable zip ({error})") from None

    def clips(self):
        return clips_from_names(self.zip.namelist(), lambda name: name)

    def read(self, clip):
        try:
            return self.zip.read(clip.ref)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as error:
            raise BadClip(f"{clip.ref}: {error}") from None  # CRC, deflate data, method, encryption
        except OSError as error:
            raise VoxCelebError(f"{self.path}: cannot read {clip.ref} ({error})") from None

    def copy(self, clip, file, limit):
        """Inflate one clip into ``file`` in blocks; a member larger than ``limit`` is refused unread."""
        info = self.zip.getinfo(clip.ref)
        if max(info.file_size, info.compress_size) > limit:
            raise BadClip(f"{clip.ref}: {info.file_size} bytes ({info.compress_size} compressed), more than "
                          f"the {limit} a clip may hold: refused before inflating it")
        try:  # zipfile stops at the entry's size and checks the CRC-32 at the end
            with self.zip.open(info) as member:
                return _copy_blocks(member, file)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as error:
            raise BadClip(f"{clip.ref}: {error}") from None  # CRC, deflate data, method, encryption
        except OSError as error:
            raise VoxCelebError(f"{self.path}: cannot read {clip.ref} ({error})") from None

    def describe(self):
        url = {"url": self.url} if self.url else {}
        return {"kind": self.kind, "path": str(self.path), **url, "zip_bytes": self.path.stat().st_size}


class VideoFolderSource:
    """Videos in a folder: ``idX/ytid/N.mp4``, ``idX#ytid#N.mp4``, or ``person/....mp4``."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"--videos {self.folder}: no such folder")

    def clips(self):
        clips = []
        for path in sorted(self.folder.rglob("*")):
            if path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(self.folder)
            vox = _VOX_PATH.search(relative.as_posix())
            if vox:
                identity, video, number = vox.groups()
            elif path.stem.count("#") == 2:
                identity, video, number = path.stem.split("#")
            elif len(relative.parts) > 1:
                identity, video, number = relative.parts[0], "-".join(relative.parts[1:-1]) or "v", path.stem
            else:
                identity, video, number = path.stem, "v", "0"
            clips.append(Clip(*(_clean(part) for part in (identity, video, number)),
                              member=relative.as_posix(), ref=path))
        if not clips:
            raise VoxCelebError(f"--videos {self.folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
        return clips

    def read(self, clip):
        return pathlib.Path(clip.ref).read_bytes()

    def copy(self, clip, file, limit):
        """Copy one video into ``file`` in blocks; one larger than ``limit`` is refused unread."""
        size = pathlib.Path(clip.ref).stat().st_size
        if size > limit:
            raise BadClip(f"{clip.member}: {size} bytes, more than the {limit} a clip may hold")
        with open(clip.ref, "rb") as video:
            return _copy_blocks(video, file)

    def describe(self):
        return {"kind": "videos", "path": str(self.folder)}


def _copy_blocks(source, file, block=1 << 20):
    """Copy an open binary file into ``file`` in 1 MiB blocks; returns the number of bytes."""
    count = 0
    while chunk := source.read(block):
        file.write(chunk)
        count += len(chunk)
    return count


def _clean(part):
    """Keep names usable in the FOMM format ('#' separates identity, video and clip)."""
    return re.sub(r"[#/\\\s]+", "_", part)


def clips_from_names(entries, name_of):
    """The :class:`Clip` of every entry whose name (``name_of(entry)``) is laid out as ``mp4/idX/ytid/N.mp4``."""
    clips = []
    for entry in entries:
        match = _VOX_PATH.search(name_of(entry))
        if match:
            clips.append(Clip(*match.groups(), member=name_of(entry), ref=entry))
    if not clips:
        raise VoxCelebError("the zip holds no clips laid out as mp4/idXXXXX/<youtube id>/NNNNN.mp4")
    return clips


def choose_clips(clips, identities, clips_per_identity, seed):
    """Pick identities and clips with ``random.Random(seed)``; return ``{"train": [...], "test": [...]}``.

    Clips of one identity alternate between its YouTube videos, so that few clips still
    show several sessions. Identities are disjoint between the splits.
    """
    if identities < 2:
        raise ValueError(f"--identities must be at least 2 (one for train, one for test), got {identities}")
    if clips_per_identity < 1:
        raise ValueError(f"--clips-per-identity must be at least 1, got {clips_per_identity}")
    by_identity = {}
    for clip in clips:
        by_identity.setdefault(clip.identity, {}).setdefault(clip.video, []).append(clip)
    if identities > len(by_identity):
        raise ValueError(f"--identities {identities} asked, the source has only {len(by_identity)}")
    rng = random.Random(seed)
    chosen = rng.sample(sorted(by_identity), identities)
    picked = {}
    for identity in chosen:
        videos = sorted(by_identity[identity])
        rng.shuffle(videos)
        queues = []
        for video in videos:
            queue = sorted(by_identity[identity][video], key=lambda clip: clip.number)
            rng.shuffle(queue)
            queues.append(queue)
        order = [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]
        picked[identity] = order[:clips_per_identity]
    n_test = max(1, round(TEST_FRACTION * identities))
    return {"test": [clip for identity in chosen[:n_test] for clip in picked[identity]],
            "train": [clip for identity in chosen[n_test:] for clip in picked[identity]]}
