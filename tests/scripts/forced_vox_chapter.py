"""Run a chapter as Colab would with ``USE_VOX``, offline: vox-256 from 127.0.0.1, a local clip.

    python tests/scripts/forced_vox_chapter.py [--chapter book/11_animating_a_face.ipynb]
        [--work /tmp/forced-vox] [--cell-timeout 900]

What it stands in for, and how:
* the published ``vox-cpk.pth.tar``: a file of the same structure (the kp_detector,
  generator and discriminator state_dicts of the vox-256 config, Adam states, the
  epoch) written by torch with random weights, served by a thread of the kernel on
  127.0.0.1 as the only source of the registry's ``vox-256``, with its own size
  and sha256 (the real file's pair cannot match);
* the VoxCeleb2 test zip: two clips written to ``.mp4`` from the offline sample
  photographs (astronaut, grace_hopper) moved by a slow pan, handed to
  ``voxceleb.fetch_subset`` as ``videos=`` so that its face crop runs on them.
The chapter's ``USE_VOX = ...`` line is replaced by ``USE_VOX = True``; every
cell is run (errors allowed) and one line per code cell says its time and its
error, if any. ``--skip`` leaves cells out (a later cell that needs their
names fails with a NameError, reported as such). The weights are random, so an assertion about what a trained
model does may fail for that reason alone: the report says which.
"""

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def write_checkpoint(path, config_name="vox-256", seed=0):
    """A .pth.tar in the published structure with random weights; returns (size, sha256)."""
    import torch

    from fomm_lessons.checkpoint import PARTS, build_models
    from fomm_lessons.config import load_config

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_state import random_torch_state

    models = build_models(load_config(config_name)["model_params"])
    rng = np.random.default_rng(seed)

    def weight(name, field, shape):
        if field == "running_mean" or name.endswith(".bias"):
            return rng.normal(0.0, 0.01, shape)
        if len(shape) == 4:  # He-scaled convolutions keep the activations finite
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        return 1.0 + rng.normal(0.0, 0.01, shape)  # batch-norm scales

    payload = random_torch_state(models, rng, weight)
    for part in PARTS:
        payload[f"optimizer_{part}"] = {"state": {}, "param_groups": [
            {"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
             "initial_lr": 2e-4, "params": list(range(len(payload[part])))}]}
    payload["epoch"] = 99
    torch.save(payload, path)
    data = Path(path).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def write_clips(folder, size=256, frames=96):
    """Two clips ``idNAME/local/00001.mp4`` of a photograph panning slowly, the face about half the frame."""
    from fomm_lessons.data.frames import write_video
    from fomm_lessons.data.sample import base_crop, render

    for name in ("astronaut", "grace_hopper"):
        image, margin, _ = base_crop(name, size, face_scale=2.4)
        k = np.arange(frames) / (frames - 1)
        theta = np.zeros((frames, 2, 3), np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 + 0.05 * np.sin(np.pi * k)
        theta[:, 0, 2] = 0.1 * np.sin(2 * np.pi * k)
        theta[:, 1, 2] = -0.05 * k
        video = render(image, margin, theta, np.zeros((frames, 25), np.float32))
        path = Path(folder) / f"id{name}" / "local" / "00001.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, np.clip(np.asarray(video), 0, 1), as_folder=False, fps=25)


SETUP = '''# Injected by tests/scripts/forced_vox_chapter.py: vox-256 from 127.0.0.1, a local VoxCeleb folder.
import functools, os, sys
sys.path.insert(0, {tests!r})
os.environ["FOMM_LESSONS_CACHE"] = {cache!r}
from test_pretrained import FileServer
from fomm_lessons import download as _download, registry as _registry
from fomm_lessons.data import voxceleb as _voxceleb
_server = FileServer({{"/vox-cpk.pth.tar": open({checkpoint!r}, "rb").read()}}).__enter__()
_entry = _registry.lookup("vox-256")
import dataclasses as _dc
_registry.register(_dc.replace(
    _entry, size={size}, sha256={sha256!r}, sha256_sources=("a random-weight stand-in",),
    sources=(_download.Source(_server.url("/vox-cpk.pth.tar"), publisher="127.0.0.1"),)), replace=True)
_voxceleb.fetch_subset = functools.partial(_voxceleb.fetch_subset, videos={videos!r})
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default=str(ROOT / "book" / "11_animating_a_face.ipynb"))
    parser.add_argument("--work", default="/tmp/forced-vox")
    parser.add_argument("--cell-timeout", type=int, default=900)
    parser.add_argument("--skip", default="", help="comma-separated cell ids not to run (reported as skipped): "
                        "to reach later cells within a time limit once earlier ones were reported")
    args = parser.parse_args()
    import nbformat
    from nbclient import NotebookClient

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "vox-cpk.pth.tar"
    start = time.perf_counter()
    if not (work / "checkpoint.json").is_file():
        size, sha256 = write_checkpoint(checkpoint)
        (work / "checkpoint.json").write_text(json.dumps({"size": size, "sha256": sha256}))
    found = json.loads((work / "checkpoint.json").read_text())
    if not (work / "videos").is_dir():
        write_clips(work / "videos")
    print(f"checkpoint {found['size']:,} bytes and clips ready in {time.perf_counter() - start:.0f} s", flush=True)

    nb = nbformat.read(args.chapter, as_version=4)
    switched = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and "USE_VOX = " in cell.source:
            lines = [("USE_VOX = True  # forced" if line.startswith("USE_VOX = ") else line)
                     for line in cell.source.splitlines()]
            cell.source, switched = "\n".join(lines), switched + 1
    if switched != 1:
        sys.exit(f"{args.chapter}: expected one line starting 'USE_VOX = ', found {switched}")
    setup = SETUP.format(tests=str(ROOT / "tests"), cache=str(work / "cache"), checkpoint=str(checkpoint),
                         size=found["size"], sha256=found["sha256"], videos=str(work / "videos"))
    nb.cells.insert(1, nbformat.v4.new_code_cell(setup))
    book = Path(args.chapter).resolve().parent
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    client = NotebookClient(nb, timeout=args.cell_timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(book)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if cell.get("id") in args.skip.split(","):
                print(f"cell {index - 1:>2} ({cell.id}) skipped", flush=True)
                continue
            began = time.perf_counter()
            client.execute_cell(cell, index)
            seconds = time.perf_counter() - began
            errors = [o for o in cell.outputs if o.output_type == "error"]
            text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            cell_id = cell.get("id", "injected")
            verdict = (f"FAILED {errors[0].ename}: {errors[0].evalue}".splitlines()[0][:300]
                       if errors else "ok")
            print(f"cell {index - 1:>2} ({cell_id}) {seconds:6.1f} s  {verdict}", flush=True)
            if errors:
                print("    " + "\n    ".join(errors[0].traceback[-3:]).replace("\x1b", "")[:1500], flush=True)
            if text.strip():
                print("    | " + "\n    | ".join(text.strip().splitlines()[:12]), flush=True)
    nbformat.write(nb, work / "executed.ipynb")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
