"""Benchmarks: ``python -m fomm_lessons.bench WORKLOAD [options]``.

Each workload prints one JSON line per measurement with the median and the
minimum wall-clock seconds over the timed repeats (after warm-up runs).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def time_call(fn, repeats=10, warmup=2):
    """Run ``fn`` ``warmup`` times, then time it ``repeats`` times: (median, min) seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def report(**fields):
    print(json.dumps(fields), flush=True)


def peak_rss_mb():
    """The largest resident memory of this process so far, in MB (Linux and macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KB on Linux


# Dense motion warps B*(K+1) = 8*11 copies of a 64x64 RGB source; the
# generator warps 8 feature maps of 64x64x256 (vox-256 at 256x256).
SAMPLER_WORKLOADS = {
    "dense_motion": (88, 64, 64, 3),
    "generator": (8, 64, 64, 256),
}


def _sampler_inputs(shape, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    batch, height, width, channels = shape
    images = rng.random(shape, dtype=np.float32)
    grid = rng.uniform(-1.05, 1.05, size=(batch, height, width, 2)).astype(np.float32)
    return images, grid


def bench_sampler(argv):
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench sampler")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from fomm_lessons.sampling import grid_sample

    modes = [("tf.function", False)] + ([("xla", True)] if args.xla else [])
    for name, shape in SAMPLER_WORKLOADS.items():
        images_np, grid_np = _sampler_inputs(shape)
        images, grid = tf.constant(images_np), tf.constant(grid_np)
        for mode, jit in modes:

            @tf.function(jit_compile=jit)
            def step(images, grid):
                with tf.GradientTape() as tape:
                    tape.watch([images, grid])
                    out = grid_sample(images, grid)
                    loss = tf.reduce_sum(out)
                return tape.gradient(loss, [images, grid])

            median, best = time_call(lambda: [t.numpy() for t in step(images, grid)], args.repeats)
            report(workload=f"sampler/{name}", shape=list(shape), impl=f"fomm_lessons ({mode})",
                   median_s=round(median, 5), min_s=round(best, 5))
        if args.no_torch:
            continue
        try:
            import torch
        except ImportError:
            report(workload=f"sampler/{name}", impl="torch", skipped="torch is not installed")
            continue
        torch.set_num_threads(os.cpu_count() or 1)
        timg = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        tgrid = torch.from_numpy(grid_np).requires_grad_(True)

        def torch_step():
            out = torch.nn.functional.grid_sample(timg, tgrid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=True)
            return torch.autograd.grad(out.sum(), [timg, tgrid])

        median, best = time_call(torch_step, args.repeats)
        report(workload=f"sampler/{name}", shape=list(shape), impl=f"torch {torch.__version__}",
               median_s=round(median, 5), min_s=round(best, 5))
    return 0


def bench_animate(argv):
    """Keypoint detection of the driving frames plus generation, at inference, per batch of frames."""
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench animate")
    parser.add_argument("--config", default="vox-256", help="FOMM YAML config or a built-in name")
    parser.add_argument("--size", type=int, default=256, help="frame size")
    parser.add_argument("--batch", type=int, default=1, help="frames per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    # Random weights: the time of a forward pass does not depend on their values.
    models = build_models(load_config(args.config)["model_params"], discriminator=False)
    rng = np.random.default_rng(0)
    source = tf.constant(rng.random((args.batch, args.size, args.size, 3), dtype=np.float32))
    driving = tf.constant(rng.random((args.batch, args.size, args.size, 3), dtype=np.float32))
    kp_source = models.kp_detector(source, training=False)  # once per source image, as in animation

    for mode, jit in [("tf.function", False)] + ([("xla", True)] if args.xla else []):

        @tf.function(jit_compile=jit)
        def step(source, driving, kp_source):
            kp_driving = models.kp_detector(driving, training=False)
            return models.generator(source, kp_source=kp_source, kp_driving=kp_driving, training=False)["prediction"]

        median, best = time_call(lambda: step(source, driving, kp_source).numpy(), args.repeats, args.warmup)
        report(workload="animate", config=args.config, size=args.size, batch=args.batch,
               impl=f"fomm_lessons ({mode}, tensorflow {tf.__version__})", threads=os.cpu_count(),
               median_s=round(median, 4), min_s=round(best, 4), frames_per_s=round(args.batch / median, 3),
               peak_rss_mb=peak_rss_mb())
    return 0


def bench_animate_video(argv):
    """Frames per second of the whole ``animate()`` of a driving video (batched detection, batched generation)."""
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench animate-video")
    parser.add_argument("--config", default="vox-256", help="FOMM YAML config or a built-in name")
    parser.add_argument("--size", type=int, default=256, help="frame size")
    parser.add_argument("--frames", type=int, default=16, help="driving frames per video")
    parser.add_argument("--batch", type=int, nargs="+", default=[4], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapt-scale", action="store_true")
    parser.add_argument("--file", action="store_true",
                        help="animate an .mp4 of --frames test-pattern frames to an .mp4, streamed as "
                             "`fomm-lessons animate` does (peak_rss_mb then shows memory does not grow with length)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from fomm_lessons.animate import animate
    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    # Random weights: the time of a forward pass does not depend on their values.
    models = build_models(load_config(args.config)["model_params"], discriminator=False)
    if args.file:
        return _bench_animate_file(args, models)
    rng = np.random.default_rng(0)
    driving = rng.random((args.frames, args.size, args.size, 3), dtype=np.float32)
    for batch in args.batch:
        def run():
            animate(driving[0], driving, models, adapt_movement_scale=args.adapt_scale, batch_size=batch)

        median, best = time_call(run, args.repeats, warmup=1)
        report(workload="animate-video", config=args.config, size=args.size, frames=args.frames, batch=batch,
               impl=f"fomm_lessons.animate.animate (tensorflow {tf.__version__})", threads=os.cpu_count(),
               median_s=round(median, 3), min_s=round(best, 3), frames_per_s=round(args.frames / median, 3),
               peak_rss_mb=peak_rss_mb())
    return 0


def _bench_animate_file(args, models):
    """One streamed animation of a test-pattern video file: seconds, frames per second, peak memory."""
    import subprocess
    import tempfile

    import numpy as np

    from fomm_lessons.animate import animate_file
    from fomm_lessons.data.media import ffmpeg_exe

    shape = (args.size, args.size, 3)
    with tempfile.TemporaryDirectory() as scratch:
        driving, out = os.path.join(scratch, "driving.mp4"), os.path.join(scratch, "out.mp4")
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc=size={args.size}x{args.size}:rate=25", "-frames:v", str(args.frames),
                        "-pix_fmt", "yuv420p", driving], check=True)
        source = np.random.default_rng(0).random(shape, dtype=np.float32)
        before = peak_rss_mb()
        start = time.perf_counter()
        animate_file(source, driving, out, models, shape, 25.0, batch_size=args.batch[0],
                     adapt_movement_scale=args.adapt_scale)
        seconds = time.perf_counter() - start
    report(workload="animate-video", config=args.config, size=args.size, frames=args.frames, batch=args.batch[0],
           impl="fomm_lessons.animate.animate_file (mp4 to mp4, streamed)", threads=os.cpu_count(),
           seconds=round(seconds, 2), frames_per_s=round(args.frames / seconds, 3),
           peak_rss_mb_before=before, peak_rss_mb=peak_rss_mb())
    return 0


def bench_data(argv):
    """Training pairs per second of the data pipeline (decode, resize, augment, batch)."""
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench data")
    parser.add_argument("--root", default=None, help="dataset folder (default: a fresh sample dataset)")
    parser.add_argument("--size", type=int, default=256, help="frame size H = W")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=1024, help="pairs to time after one warm-up batch")
    parser.add_argument("--id-sampling", action="store_true")
    args = parser.parse_args(argv)

    import tempfile

    from fomm_lessons.data.loader import FramesDataset

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if root is None:
            from fomm_lessons.data.sample import make_sample_dataset

            root = make_sample_dataset(scratch, size=args.size if args.size in (64, 128, 256) else 256)
        # vox-256's dataset_params
        augmentation = {"flip_param": {"horizontal_flip": True, "time_flip": True},
                        "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}}
        frames = FramesDataset(root, "train", frame_shape=(args.size, args.size, 3),
                               id_sampling=args.id_sampling, augmentation_params=augmentation)
        repeats = -(-(args.pairs + args.batch_size) // len(frames))
        batches = iter(frames.pairs(seed=0, num_repeats=repeats, batch_size=args.batch_size, drop_remainder=True))
        next(batches)  # warm-up: tracing, thread pools
        count, start = 0, time.perf_counter()
        while count < args.pairs:
            count += int(next(batches)["source"].shape[0])
        seconds = time.perf_counter() - start
    report(workload="data", root=args.root or "sample dataset", size=args.size, batch_size=args.batch_size,
           pairs=count, seconds=round(seconds, 3), pairs_per_s=round(count / seconds, 1), cpus=os.cpu_count())
    return 0


def _train_config(name):
    """An original YAML config (or built-in name), or the parity JSON's ``model_params`` with
    vox-adv-256's ``train_params`` (its model has the depth and wiring of vox-adv-256)."""
    import json

    from fomm_lessons.config import load_config

    if str(name).endswith(".json"):
        with open(name) as f:
            model_params = json.load(f)["model_params"]
        config = load_config("vox-adv-256")
        config["model_params"] = model_params
        return config
    return load_config(name)


def bench_train_step(argv):
    """Seconds per full training iteration (generator + keypoint step, then discriminator step)."""
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench train-step")
    parser.add_argument("--config", default="vox-adv-256", help="YAML config, built-in name or parity-128.json")
    parser.add_argument("--size", type=int, default=256, help="frame size")
    parser.add_argument("--batch", type=int, default=1, help="global batch size")
    parser.add_argument("--steps", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (tracing, compiling)")
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "off", "float16", "bfloat16"))
    args = parser.parse_args(argv)

    import resource
    import tempfile
    import warnings

    import numpy as np
    import tensorflow as tf

    from fomm_lessons.training import Trainer

    config = _train_config(args.config)
    config["train_params"]["batch_size"] = args.batch
    points = config["train_params"]["transform_params"].get("points_tps", 5)
    rng = np.random.default_rng(0)
    batch = {
        "source": tf.constant(rng.random((args.batch, args.size, args.size, 3), np.float32)),
        "driving": tf.constant(rng.random((args.batch, args.size, args.size, 3), np.float32)),
        "tps_theta": tf.constant(np.eye(2, 3) + rng.normal(0, 0.05, (args.batch, 2, 3)), tf.float32),
        "tps_params": tf.constant(rng.normal(0, 0.005, (args.batch, points**2)), tf.float32),
    }
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG19 weights time the same as ImageNet ones
        trainer = Trainer(config, out, xla=args.xla, mixed_precision=args.mixed_precision, vgg_weights="random")

        def run():
            losses, _ = trainer.train_step(batch)
            return {k: v.numpy() for k, v in losses.items()}

        median, best = time_call(run, args.steps, warmup=args.warmup)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    report(workload="train-step", config=str(args.config), size=args.size, batch=args.batch, device=device,
           xla=trainer.xla, mixed_precision=trainer.precision, median_s=round(median, 4), min_s=round(best, 4),
           images_per_s=round(args.batch / median, 3),
           peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return 0


def _is_puppets(root):
    try:
        from fomm_lessons.data.puppets import is_puppets_dataset
    except ImportError:  # the generator is not in this checkout: its metadata file tells
        return os.path.isfile(os.path.join(root, "meta", "puppets.json"))
    return is_puppets_dataset(root)


def bench_quality(argv):
    """Not a timing: the quality report of a model, as JSON lines.

    On a puppets dataset, one line with every measure of :func:`fomm_lessons.measures.puppets_quality`
    (one split, ``--split``); on an offline sample set, one line per split
    (:func:`fomm_lessons.evaluate.quality`).
    """
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench quality")
    parser.add_argument("--config", default=None, help="config of the model (default: the named model's)")
    parser.add_argument("--checkpoint", required=True, help="a model name, weights folder, run folder or .pth.tar")
    parser.add_argument("--data", required=True, help="a puppets dataset (fomm-lessons data puppets) or an "
                                                      "offline sample dataset (fomm-lessons data sample)")
    parser.add_argument("--max-videos", type=int, default=None, help="videos per split at most")
    parser.add_argument("--untrained", action="store_true", help="also the same networks, untrained (seed 0)")
    parser.add_argument("--frame-step", type=int, default=1, help="every n-th frame for the motion error (sample set)")
    parser.add_argument("--split", default="test", help="the split of a puppets dataset to measure")
    args = parser.parse_args(argv)

    import keras

    from fomm_lessons.checkpoint import build_models, load_checkpoint
    from fomm_lessons.config import load_config
    from fomm_lessons.evaluate import quality

    from fomm_lessons import pretrained

    checkpoint, config_name = pretrained.resolve(args.checkpoint, args.config)
    config = load_config(config_name)
    frame_shape = tuple(config.get("dataset_params", {}).get("frame_shape", (64, 64, 3)))
    models = load_checkpoint(checkpoint, config["model_params"], f"the config {config_name}")
    untrained = None
    if args.untrained:
        keras.utils.set_random_seed(0)
        untrained = build_models(config["model_params"], discriminator=False)
    where = dict(workload="quality", config=str(config_name), checkpoint=str(args.checkpoint), data=str(args.data))
    if _is_puppets(args.data):
        from fomm_lessons.measures import puppets_quality

        report(**where, **puppets_quality(args.data, models, untrained, split=args.split,
                                          max_videos=args.max_videos))
        return 0
    result = quality(args.data, models, untrained, max_videos=args.max_videos, frame_step=args.frame_step,
                     frame_shape=frame_shape)
    for split, entry in result.items():
        report(**where, split=split, **entry)
    return 0


def bench_collapse(argv):
    """Not a timing: signs of collapse without ground truth (:func:`fomm_lessons.measures.collapse_measures`),
    one JSON line per split, for the model and, with ``--untrained``, the same networks untrained."""
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench collapse")
    parser.add_argument("--config", default=None, help="config of the model (default: the named model's)")
    parser.add_argument("--checkpoint", required=True, help="a model name, weights folder, run folder or .pth.tar")
    parser.add_argument("--data", required=True, help="a dataset in the FOMM layout (train/ and test/)")
    parser.add_argument("--splits", nargs="+", default=["test"], help="splits to measure")
    parser.add_argument("--max-videos", type=int, default=None, help="videos per split at most")
    parser.add_argument("--untrained", action="store_true", help="also the same networks, untrained (seed 0)")
    args = parser.parse_args(argv)

    import keras

    from fomm_lessons.checkpoint import build_models, load_checkpoint
    from fomm_lessons.config import load_config
    from fomm_lessons.measures import collapse_measures

    from fomm_lessons import pretrained

    checkpoint, config_name = pretrained.resolve(args.checkpoint, args.config)
    config = load_config(config_name)
    frame_shape = tuple(config.get("dataset_params", {}).get("frame_shape", (64, 64, 3)))
    runs = {"model": load_checkpoint(checkpoint, config["model_params"], f"the config {config_name}")}
    if args.untrained:
        keras.utils.set_random_seed(0)
        runs["untrained"] = build_models(config["model_params"], discriminator=False)
    for split in args.splits:
        for which, models in runs.items():
            report(workload="collapse", config=str(config_name), checkpoint=str(args.checkpoint),
                   data=str(args.data), networks=which,
                   **collapse_measures(args.data, models, split, args.max_videos, frame_shape))
    return 0


def bench_gpu_suite(argv):
    from fomm_lessons import gpu_suite

    return gpu_suite.main(argv)


WORKLOADS = {"sampler": bench_sampler, "train-step": bench_train_step, "animate": bench_animate,
             "animate-video": bench_animate_video, "data": bench_data, "quality": bench_quality,
             "collapse": bench_collapse, "gpu-suite": bench_gpu_suite}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in WORKLOADS:
        print(f"usage: python -m fomm_lessons.bench {{{','.join(WORKLOADS)}}} [options]", file=sys.stderr)
        return 2
    return WORKLOADS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
