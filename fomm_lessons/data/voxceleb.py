"""A real VoxCeleb2 subset in the FOMM format, fetched clip by clip from the test zip.

Source: ``vox2/vox2_test_mp4.zip`` (about 9 GB, ``mp4/idXXXXX/<youtube id>/NNNNN.mp4``,
CC BY 4.0, Chung, Nagrani and Zisserman 2018) in the Hugging Face dataset
``ProgramComputer/voxceleb``. Only the chosen clips are downloaded, with HTTP range
requests (:mod:`fomm_lessons.data.remote_zip`). Fallbacks, in order: a full download of
the same zip when the server ignores ``Range``; a local zip (``--zip``); a folder of
videos (``--videos``). Frames are centre-cropped to a square and resized; the face
crop of the original preprocessing is not reproduced. A clip that fails its CRC or
does not decode is skipped and listed under ``bad`` in the run manifest (ffmpeg's log
in ``meta/logs/``); the fetch goes on.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import random
import re
import shutil
import sys
import tempfile
import zipfile
import zlib

import numpy as np

from fomm_lessons.data import remote_zip
from fomm_lessons.data.crop import face_crop_frames

DATASET = "ProgramComputer/voxceleb"
ZIP_PATH_IN_REPO = "vox2/vox2_test_mp4.zip"
# The pinned revision of DATASET. "main" is a placeholder until a commit id is read with
# network access (see data/VOXCELEB.md); each run records the commit the server reports.
REVISION = "main"
URL = f"https://huggingface.co/datasets/{DATASET}/resolve/{REVISION}/{ZIP_PATH_IN_REPO}"
URL_ENV = "FOMM_VOXCELEB_URL"  # overrides URL (tests, mirrors)
# Shipped inside the package (a wheel has no data/ folder); maintainers update it in the repository.
REPO_MANIFEST = pathlib.Path(__file__).resolve().with_name("voxceleb-manifest.json")
RUN_MANIFEST = "voxceleb-manifest.json"  # under OUT/meta/
TEST_FRACTION = 0.2  # share of identities held out for the test split
PNG_LEVEL = 1  # zlib level: 4x faster to write than the default 6, files about 6% larger
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
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
        return _clips_from_names(self.zip.members(), lambda member: member.name)

    def read(self, clip):
        try:
            return self.zip.read(clip.ref)
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
        return _clips_from_names(self.zip.namelist(), lambda name: name)

    def read(self, clip):
        try:
            return self.zip.read(clip.ref)
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

    def describe(self):
        return {"kind": "videos", "path": str(self.folder)}


def _clean(part):
    """Keep names usable in the FOMM format ('#' separates identity, video and clip)."""
    return re.sub(r"[#/\\\s]+", "_", part)


def _clips_from_names(entries, name_of):
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


def square_frames(video_path, size):
    """Decode a video with imageio-ffmpeg; centre-crop each frame to a square, resize to ``size``."""
    import imageio.v2 as imageio
    from PIL import Image

    frames = []
    with imageio.get_reader(video_path, format="FFMPEG") as reader:
        for frame in reader:  # (H, W, 3) uint8
            height, width = frame.shape[:2]
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            square = frame[top:top + side, left:left + side, :3]  # (side, side, 3)
            if side != size:
                square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
            frames.append(square)
    if not frames:
        raise ValueError("no frames decoded")
    return frames


def write_png_folder(frames, folder):
    """Write frames as ``0000000.png, 0000001.png, ...`` into a fresh ``folder``."""
    import imageio.v3 as imageio

    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        imageio.imwrite(folder / f"{index:07d}.png", frame, extension=".png", compress_level=PNG_LEVEL)


def _folder_bytes(folder):
    return sum(path.stat().st_size for path in folder.glob("*.png"))


def _is_done(out, split, clip, size):
    """A clip is done when its marker exists and the folder still holds what it recorded."""
    marker = out / "meta" / "clips" / f"{clip.name}.json"
    folder = out / split / clip.name
    if not marker.is_file() or not folder.is_dir():
        return None
    record = json.loads(marker.read_text())
    pngs = list(folder.glob("*.png"))
    if (record.get("size") != size or record.get("split") != split or record.get("member") != clip.member
            or record.get("frames") != len(pngs)
            or record.get("png_bytes") != _folder_bytes(folder)):
        return None
    return record


def _load_pinned_hashes(url):
    """SHA-256 of clips listed in the package's pinned manifest, when reading the pinned URL."""
    if url != URL:
        return {}
    if not REPO_MANIFEST.is_file():
        raise VoxCelebError(f"the pinned manifest {REPO_MANIFEST} is missing: expected it inside the "
                            "installed fomm_lessons package, so clips cannot be checked; reinstall fomm-lessons")
    manifest = json.loads(REPO_MANIFEST.read_text())
    if manifest.get("revision") != REVISION:
        raise VoxCelebError(f"{REPO_MANIFEST} pins revision {manifest.get('revision')!r}, "
                            f"expected {REVISION!r} (fomm_lessons.data.voxceleb.REVISION)")
    return {name: entry["sha256"] for name, entry in manifest.get("clips", {}).items()}


def open_source(out, zip_path=None, videos=None, log=print):
    """The first source that works: --videos, --zip, range requests, then a full download."""
    if videos:
        return VideoFolderSource(videos)
    if zip_path:
        return LocalZipSource(zip_path)
    url = os.environ.get(URL_ENV, URL)
    target = out / ".download" / pathlib.PurePosixPath(url.split("?")[0]).name
    if target.is_file():  # a full download by an earlier run
        return LocalZipSource(target, kind="http-full-download", url=url)
    source = RemoteZipSource(url)
    try:
        source.clips()
        return source
    except remote_zip.RangeNotSupported:
        pass
    except remote_zip.RemoteZipError as error:
        raise VoxCelebError(
            f"{error} (with a copy of the zip use --zip PATH; with videos, --videos DIR)") from None
    log(f"{url} ignores HTTP Range requests: downloading the whole zip to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, desc="zip") as progress:
        try:
            source.zip.http.download(target, progress)
        except remote_zip.RemoteZipError as error:
            raise VoxCelebError(f"{error} (with a copy of the zip use --zip PATH)") from None
    return LocalZipSource(target, kind="http-full-download", url=url)


def fetch_subset(out, identities, clips_per_identity, size, seed=0, zip_path=None, videos=None, log=print,
                 crop=False):
    """Write ``out/train`` and ``out/test`` (PNG folders) and ``out/meta``; return the run manifest.

    ``crop``: cut each clip by the box of its face track (:func:`fomm_lessons.data.crop.face_crop_frames`)
    instead of its centre square."""
    from tqdm import tqdm

    out = pathlib.Path(out)
    if size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {size}")
    options = {"identities": identities, "clips_per_identity": clips_per_identity, "size": size, "seed": seed,
               **({"crop": True} if crop else {})}
    manifest_path = out / "meta" / RUN_MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text()).get("options")
        if previous != options:
            raise ValueError(f"{out} already holds a subset made with {previous}; "
                             f"asked for {options}: use the same options or another --out")
    source = open_source(out, zip_path, videos, log)
    split_clips = choose_clips(source.clips(), identities, clips_per_identity, seed)
    pinned = _load_pinned_hashes(getattr(source, "url", None))
    commit = source.describe().get("x_repo_commit")
    if getattr(source, "url", None) == URL and REVISION == "main":
        log(f"note: revision 'main' of {DATASET} is not pinned; "
            f"the server reports commit {commit or 'unknown'}")
    for folder in (out / "meta" / "clips", out / "train", out / "test"):
        folder.mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, {"options": options, "source": source.describe(), "clips": []})
    records, bad, identities_written, skipped = [], [], {"train": set(), "test": set()}, 0
    jobs = [(split, clip) for split in ("train", "test") for clip in split_clips[split]]
    for split, clip in tqdm(jobs, desc="voxceleb clips", unit="clip"):
        record = _is_done(out, split, clip, size)
        if record is not None:
            skipped += 1
        else:
            try:
                record = _fetch_clip(out, split, clip, size, source, pinned, crop)
            except BadClip as error:  # this clip only: record it and go on
                bad.append({"name": clip.name, "split": split, "member": clip.member, "reason": error.reason,
                            **({"log": str(error.log)} if error.log else {})})
                continue
        records.append(record)
        identities_written[split].add(clip.identity)
    manifest = {"options": options, "source": source.describe(), "skipped_as_done": skipped,
                "splits": {split: sorted(identities_written[split]) for split in ("train", "test")},
                "clips": records, "bad": bad}
    _write_json(manifest_path, manifest)
    shutil.rmtree(out / "meta" / "tmp", ignore_errors=True)
    for split in ("train", "test"):
        if not identities_written[split]:
            lost = [entry for entry in bad if entry["split"] == split]
            raise VoxCelebError(f"no usable clip in the {split} split: all {len(lost)} of its chosen clips "
                                f"were bad (first: {lost[0]['reason']}), listed under 'bad' in {manifest_path}; "
                                "try another --seed or more --clips-per-identity")
    return manifest


def _fetch_clip(out, split, clip, size, source, pinned, crop=False):
    """Read, verify, decode and write one clip, then its done marker."""
    try:
        data = source.read(clip)
    except remote_zip.RemoteZipError as error:
        raise VoxCelebError(str(error)) from None
    sha256 = hashlib.sha256(data).hexdigest()
    if clip.member in pinned and pinned[clip.member] != sha256:
        raise VoxCelebError(f"{clip.member}: SHA-256 {sha256} differs from {pinned[clip.member]} "
                            f"recorded in {REPO_MANIFEST}")
    tmp = out / "meta" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp, suffix=pathlib.Path(clip.member).suffix or ".mp4") as video:
        video.write(data)
        video.flush()
        try:
            frames = (face_crop_frames if crop else square_frames)(video.name, size)
        except Exception as error:  # imageio raises several kinds for a bad video
            raise _decode_error(out, clip, error) from None
    log_path = out / "meta" / "logs" / f"{clip.name}.log"
    log_path.unlink(missing_ok=True)  # the log of an earlier failure on this clip
    folder, partial = out / split / clip.name, out / split / f"{clip.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_png_folder(frames, partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    record = {"name": clip.name, "split": split, "member": clip.member, "bytes": len(data),
              "sha256": sha256, "frames": len(frames), "size": size, "png_bytes": _folder_bytes(folder)}
    _write_json(out / "meta" / "clips" / f"{clip.name}.json", record)
    return record


def _decode_error(out, clip, error):
    """A :class:`BadClip` with one line of reason; ffmpeg's whole log goes to ``meta/logs``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = f"cannot decode {clip.member}: {type(error).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        reason += f" (ffmpeg: {lines[-1]})"
    log_path = out / "meta" / "logs" / f"{clip.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"{clip.member}: {type(error).__name__}\n{error}\n")
    return BadClip(reason, log_path)


def _write_json(path, value):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(partial, path)


def update_repo_manifest(out, manifest_path=None):
    """Add the clips of a run from the pinned URL to the pinned manifest, REPO_MANIFEST (maintainers)."""
    manifest_path = pathlib.Path(manifest_path or REPO_MANIFEST)
    run = json.loads((pathlib.Path(out) / "meta" / RUN_MANIFEST).read_text())
    pinned = json.loads(manifest_path.read_text())
    source = run["source"]
    if source.get("url") != URL or pinned.get("revision") != REVISION:
        raise ValueError(f"{out} was fetched from {source.get('url')!r}; only runs from {URL} "
                         f"(revision {REVISION}) are recorded in {manifest_path}")
    if pinned.get("zip_bytes") not in (None, source["zip_bytes"]):
        raise ValueError(
            f"the zip has {source['zip_bytes']} bytes, {manifest_path} says {pinned['zip_bytes']}")
    pinned["zip_bytes"] = source["zip_bytes"]
    pinned["zip_etag"] = pinned.get("zip_etag") or source.get("x_linked_etag", "").strip('"') or None
    pinned["observed_commit"] = source.get("x_repo_commit") or pinned.get("observed_commit")
    for record in run["clips"]:
        entry = {"bytes": record["bytes"], "sha256": record["sha256"]}
        known = pinned["clips"].setdefault(record["member"], entry)
        if known["sha256"] != record["sha256"]:
            raise ValueError(f"{record['member']}: SHA-256 {record['sha256']} differs from {known['sha256']}")
    pinned["clips"] = dict(sorted(pinned["clips"].items()))
    _write_json(manifest_path, pinned)
    return pinned


def main(args):
    """Entry point of ``fomm-lessons data voxceleb``; 0 on success, 2 with one error line."""
    try:
        manifest = fetch_subset(args.out, args.identities, args.clips_per_identity, args.size,
                                seed=args.seed, zip_path=args.zip, videos=args.videos,
                                crop=getattr(args, "crop", False))
    except (VoxCelebError, remote_zip.RemoteZipError) as error:
        print(f"fomm-lessons data voxceleb: error: {error}", file=sys.stderr)
        return 2
    counts = {split: sum(record["split"] == split for record in manifest["clips"])
              for split in ("train", "test")}
    bad = len(manifest["bad"])
    skipped_bad = (f"; {bad} bad clip{'s' * (bad != 1)} skipped, listed under 'bad' in the manifest"
                   if bad else "")
    print(f"wrote {counts['train']} train and {counts['test']} test clips to {args.out} "
          f"({manifest['skipped_as_done']} already done{skipped_bad}); "
          f"manifest: {pathlib.Path(args.out) / 'meta' / RUN_MANIFEST}")
    return 0


if __name__ == "__main__":  # python -m fomm_lessons.data.voxceleb record OUT
    if len(sys.argv) != 3 or sys.argv[1] != "record":
        sys.exit("usage: python -m fomm_lessons.data.voxceleb record OUT\n"
                 "  adds the clips of OUT (fetched from the pinned URL) to fomm_lessons/data/voxceleb-manifest.json")
    print(f"{len(update_repo_manifest(sys.argv[2])['clips'])} clips in {REPO_MANIFEST}")
