"""Media plumbing around the videos a command reads and writes: frame rates,
the audio track, the ``ffmpeg`` binary, and output paths.

An output folder is the program's only when it says so: every command that
writes a folder leaves :data:`OUTPUT_MARK` in it (a small JSON file naming the
command), and refuses a non-empty folder without that mark, or with another
command's, so that ``--out photos/`` never deletes a user's pictures. An
existing output *file* carries no mark, so it is replaced only when the user
passes ``--overwrite``; an output that is one of the command's inputs is refused
whatever the flags (:func:`refuse_input_as_output`).
Nothing here imports TensorFlow.
"""

import json
import os
import re
import subprocess
import tempfile

DEFAULT_FPS = 25.0
OUTPUT_SUFFIXES = (".mp4", ".mov", ".gif")
OUTPUT_MARK = ".fomm-lessons-output.json"  # in every output folder the program writes


def video_fps(path, default=DEFAULT_FPS):
    """Frames per second of a video file (``default`` for PNG folders and files that do not say)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return float(default)
    if path.lower().endswith(".gif"):
        from PIL import Image

        with Image.open(path) as image:
            duration = image.info.get("duration")
        return 1000.0 / duration if duration else float(default)
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        fps = reader.get_meta_data().get("fps")
    return float(fps) if fps else float(default)


def ffmpeg_exe():
    """The ffmpeg binary that imageio-ffmpeg ships."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def has_audio(path):
    """Whether the media file ``path`` has an audio stream (asks ffmpeg)."""
    if os.path.isdir(path):
        return False
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", os.fspath(path)], capture_output=True, text=True)
    return re.search(r"Stream #\S+.*: Audio:", probe.stderr) is not None


def mux_audio(video_path, audio_source, out_path):
    """Write ``out_path``: the video stream of ``video_path`` (copied) with the audio of ``audio_source`` (AAC)."""
    command = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-i", os.fspath(video_path),
               "-i", os.fspath(audio_source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
               "-c:a", "aac", "-shortest", os.fspath(out_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"ffmpeg could not add the audio of {audio_source} to {out_path}: {last}")
    return out_path


def is_folder_path(path):
    """Whether an output ``path`` names a folder of PNG frames: an existing folder or a name without a suffix."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.endswith(("/", os.sep)) or not os.path.splitext(path)[1]


def folder_owner(path):
    """The command that wrote the folder ``path`` (from its :data:`OUTPUT_MARK`), or None."""
    try:
        with open(os.path.join(os.fspath(path), OUTPUT_MARK)) as file:
            return json.load(file).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def same_path(first, second):
    """Whether two existing paths name one file or folder (links and ``..`` resolved: inodes compared)."""
    first, second = os.fspath(first), os.fspath(second)
    return os.path.exists(first) and os.path.exists(second) and os.path.samefile(first, second)


def refuse_input_as_output(path, inputs, option="--out"):
    """Refuse, in one line, an output ``path`` that is one of ``inputs`` (``{option: path or None}``).

    Only an existing path can be an input that is written over, so a missing one never matches.
    """
    for name, given in inputs.items():
        if given is not None and same_path(path, given):
            raise ValueError(f"{option} {os.fspath(path)} is the input {name} {os.fspath(given)}: an input "
                             f"is never written over; choose another {option}")
    return path


def check_output_file(path, overwrite=False, option="--out"):
    """Refuse, in one line, an existing file at ``path`` unless ``overwrite`` (the user's ``--overwrite``)."""
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path) and not overwrite:
        raise ValueError(f"refusing to replace the existing file {path} ({option}): pass --overwrite to "
                         f"replace it, or choose another {option}")
    return path


def check_output_folder(path, command, inputs=None, own=()):
    """Refuse, in one line, a non-empty folder that is not an earlier output of ``command``, or an input.

    ``own``: names that ``command`` may find there before it marks the folder (a run's lock file).
    """
    path = os.fspath(path)
    refuse_input_as_output(path, inputs or {})
    if not os.path.isdir(path):
        return path
    names = sorted(name for name in os.listdir(path) if name not in own)
    if names and folder_owner(path) != command:
        foreign = [name for name in names if name != OUTPUT_MARK]
        example = f" (such as {foreign[0]!r})" if foreign else ""
        raise ValueError(f"refusing to write into {path}: the folder holds files that fomm-lessons {command} "
                         f"did not write{example}; choose an empty or new folder")
    return path


def claim_output_folder(path, command, inputs=None, own=()):
    """Create the folder ``path`` (after :func:`check_output_folder`) and mark it as ``command``'s output."""
    path = check_output_folder(path, command, inputs, own)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, OUTPUT_MARK), "w") as file:
        json.dump({"command": command, "written_by": "fomm-lessons"}, file)
        file.write("\n")
    return path


def check_output_path(path, folder=False, audio=False, command="animate", inputs=None, overwrite=False):
    """Fail early, with the path, if ``path`` cannot be written (parent folders are created).

    A folder output must be new, empty, or an earlier output of ``command``
    (:func:`check_output_folder`); an existing file is replaced only with
    ``overwrite`` (:func:`check_output_file`); an output that is one of
    ``inputs`` (``{option: path}``) is refused.
    """
    path = os.fspath(path)
    refuse_input_as_output(path, inputs or {})
    suffix = os.path.splitext(path)[1].lower()
    if not folder and suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"expected an output path ending in {'/'.join(OUTPUT_SUFFIXES)} "
                         f"(or a folder for PNG frames), got {path!r}")
    if audio and suffix not in (".mp4", ".mov"):
        raise ValueError(f"keeping the audio needs an .mp4 or .mov output, got {path!r}")
    if folder:
        check_output_folder(path, command)
    else:
        check_output_file(path, overwrite)
    target = path if folder else os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        raise OSError(f"cannot write the output {path}: the folder {target} cannot be created or written "
                      f"({error.strerror or error})") from None
    return path
