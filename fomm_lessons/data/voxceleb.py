"""A real VoxCeleb2 subset in the FOMM format, fetched clip by clip from the test zip.

Source: ``vox2/vox2_test_mp4.zip`` (about 9 GB, ``mp4/idXXXXX/<youtube id>/NNNNN.mp4``,
CC BY 4.0, Chung, Nagrani and Zisserman 2018) in the Hugging Face dataset
``ProgramComputer/voxceleb``. Only the chosen clips are downloaded, with HTTP range
requests (:mod:`fomm_lessons.data.remote_zip`). Fallbacks, in order: a full download of
the same zip when the server ignores ``Range``; a local zip (``--zip``); a folder of
videos (``--videos``). Frames are centre-cropped to a square and resized; the face
crop of the original preprocessing is not reproduced. A clip that fails its CRC or
does not decode is skipped and listed under ``bad`` in the run manifest (ffmpeg's log
in ``meta/logs/``); the fetch goes on. The sources and the choice of clips are in
:mod:`fomm_lessons.data.voxceleb_sources` (re-exported here).
"""

import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import zipfile

import numpy as np

from fomm_lessons.data import remote_zip, voxceleb_sources
from fomm_lessons.data.crop import face_crop_frames
from fomm_lessons.data.media import claim_output_folder, refuse_input_as_output
from fomm_lessons.data.voxceleb_sources import (  # noqa: F401 (re-exported: they lived here)
    TEST_FRACTION, VIDEO_SUFFIXES, BadClip, Clip, LocalZipSource, RemoteZipSource, VideoFolderSource,
    VoxCelebError, choose_clips, clips_from_names)

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
PNG_LEVEL = 1  # zlib level: 4x faster to write than the default 6, files about 6% larger


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
    """SHA-256 and size of the clips listed in the package's pinned manifest, when reading the pinned URL."""
    if url != URL:
        return {}
    if not REPO_MANIFEST.is_file():
        raise VoxCelebError(f"the pinned manifest {REPO_MANIFEST} is missing: expected it inside the "
                            "installed fomm_lessons package, so clips cannot be checked; reinstall fomm-lessons")
    manifest = json.loads(REPO_MANIFEST.read_text())
    if manifest.get("revision") != REVISION:
        raise VoxCelebError(f"{REPO_MANIFEST} pins revision {manifest.get('revision')!r}, "
                            f"expected {REVISION!r} (fomm_lessons.data.voxceleb.REVISION)")
    return {name: entry for name, entry in manifest.get("clips", {}).items()}  # {"sha256", "bytes"}


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
        refuse_input_as_output(out, {"--zip": zip_path, "--videos": videos})  # an earlier run's folder
    else:  # new, empty or an earlier (unfinished) run's: a user's folder is never written into
        claim_output_folder(out, "data voxceleb", {"--zip": zip_path, "--videos": videos})
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


def _directory_entry(source, clip):
    """``(bytes, CRC-32 as 8 hex digits)`` of the clip in its zip's central directory; None for a folder."""
    if isinstance(clip.ref, remote_zip.ZipMember):
        return clip.ref.size, f"{clip.ref.crc32:08x}"
    archive = getattr(source, "zip", None)
    if isinstance(archive, zipfile.ZipFile):
        info = archive.getinfo(clip.ref)
        return info.file_size, f"{info.CRC:08x}"
    return None


def _fetch_clip(out, split, clip, size_px, source, pinned, crop=False):
    """Read, verify, decode and write one clip, then its done marker.

    A clip of the pinned manifest is checked twice: its size and CRC-32 in the zip's directory
    before a byte of it is read (an upstream file that changed is noticed at once), then the
    SHA-256 of what was read.
    """
    known = pinned.get(clip.member, {})
    directory = _directory_entry(source, clip)
    if known and directory is not None and (known.get("bytes", directory[0]) != directory[0]
                                            or known.get("crc32", directory[1]) != directory[1]):
        raise VoxCelebError(f"{clip.member}: the zip's directory gives {directory[0]} bytes with CRC-32 "
                            f"{directory[1]}, {REPO_MANIFEST} recorded {known.get('bytes')} bytes with CRC-32 "
                            f"{known.get('crc32')}: the file changed upstream")
    limit = known.get("bytes") or voxceleb_sources.MAX_CLIP_BYTES
    tmp = out / "meta" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp, suffix=pathlib.Path(clip.member).suffix or ".mp4") as video:
        try:  # streamed to disk: a clip is never whole in memory, and one over the limit is not inflated
            size = source.copy(clip, video, limit)
        except remote_zip.RemoteZipError as error:
            raise VoxCelebError(str(error)) from None
        video.flush()
        sha256 = _sha256(video.name)
        if known and known["sha256"] != sha256:
            raise VoxCelebError(f"{clip.member}: SHA-256 {sha256} differs from {known['sha256']} "
                                f"recorded in {REPO_MANIFEST}")
        try:
            frames = (face_crop_frames if crop else square_frames)(video.name, size_px)
        except Exception as error:  # imageio raises several kinds for a bad video
            raise _decode_error(out, clip, error) from None
    log_path = out / "meta" / "logs" / f"{clip.name}.log"
    log_path.unlink(missing_ok=True)  # the log of an earlier failure on this clip
    folder, partial = out / split / clip.name, out / split / f"{clip.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    write_png_folder(frames, partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    record = {"name": clip.name, "split": split, "member": clip.member, "bytes": size,
              "sha256": sha256, "frames": len(frames), "size": size_px, "png_bytes": _folder_bytes(folder)}
    if directory is not None:
        record["crc32"] = directory[1]
    _write_json(out / "meta" / "clips" / f"{clip.name}.json", record)
    return record


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


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
        entry = {"bytes": record["bytes"], "sha256": record["sha256"],
                 **({"crc32": record["crc32"]} if "crc32" in record else {})}
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
