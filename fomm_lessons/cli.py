"""The ``fomm-lessons`` command: one entry point, a sub-command per job."""

import argparse
import sys


class CommandError(Exception):
    """An error that ends the command with one clear line and exit status 2."""


def _cmd_bench(args):
    from fomm_lessons import bench

    return bench.main([args.workload, *args.rest])


def _cmd_data_sample(args):
    from fomm_lessons.data import sample

    sample.make_sample_dataset(args.out, size=args.size, seed=args.seed, identities=args.identities)
    return 0


def _cmd_data_puppets(args):
    from fomm_lessons.data import puppets

    puppets.make_puppets_dataset(args.out, size=args.size, identities=args.identities,
                                 videos_per_identity=args.videos_per_identity,
                                 test_identities=args.test_identities, num_frames=args.frames,
                                 seed=args.seed)
    return 0


def _cmd_data_voxceleb(args):
    from fomm_lessons.data import voxceleb

    return voxceleb.main(args)


def _cmd_convert(args):
    from fomm_lessons import checkpoint

    return checkpoint.convert_main(args)


def _cmd_train(args):
    from fomm_lessons import train_command

    return train_command.main(args)


def _cmd_animate(args):
    from fomm_lessons import animate

    return animate.main(args)


def _cmd_crop(args):
    from fomm_lessons.data import crop

    return crop.main(args)


def _cmd_reconstruct(args):
    from fomm_lessons import evaluate

    return evaluate.main(args)


def _cmd_models(args):
    from fomm_lessons import pretrained

    return pretrained.models_main(args)


def _resolve_checkpoint(args):
    """``--checkpoint NAME`` (a model of ``fomm-lessons models list``) -> its weights, and its config by default."""
    kind = getattr(args, "checkpoint_kind", None)  # "weights" or "torch": set by the commands that load one
    if kind is not None:
        from fomm_lessons import pretrained

        args.checkpoint, args.config = pretrained.resolve(args.checkpoint, args.config, kind)


CONFIG_HELP = "FOMM YAML config (or a built-in name: vox-256, vox-adv-256, cpu-64)"
MODEL_CONFIG_HELP = CONFIG_HELP + "; optional with a model name, whose own config is the default"


def _add_model_arguments(parser):
    """``--config`` and ``--checkpoint``: the networks a command runs."""
    parser.add_argument("--config", default=None, help=MODEL_CONFIG_HELP)
    parser.add_argument("--checkpoint", required=True,
                        help=".pth.tar, a converted weights folder, a training run folder, "
                             "or a model name (fomm-lessons models list)")
    parser.set_defaults(checkpoint_kind="weights")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fomm-lessons",
        description="The First Order Motion Model for Image Animation, in TensorFlow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = commands.add_parser("bench", help="time a workload (sampler, animate, data)")
    bench.add_argument("workload", help="sampler, animate or data")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of that workload")
    bench.set_defaults(func=_cmd_bench)

    data = commands.add_parser("data", help="make or fetch a dataset")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    sample = data_commands.add_parser("sample", help="offline real faces moved by known motions")
    sample.add_argument("--out", required=True, help="folder to write the dataset to")
    sample.add_argument("--size", type=int, default=64, choices=(64, 128, 256), help="frame size")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--identities", choices=("faces", "extended"), default="faces",
                        help="photographs used: the 3+1 faces of the chapters, or 8 training images")
    sample.set_defaults(func=_cmd_data_sample)

    puppet = data_commands.add_parser(
        "puppets", help="procedural jointed figures with their true motion, occlusion and parts")
    puppet.add_argument("--out", required=True, help="folder to write the dataset to")
    puppet.add_argument("--size", type=int, default=64, choices=(64, 128, 256), help="frame size")
    puppet.add_argument("--identities", type=int, default=300, help="training identities")
    puppet.add_argument("--test-identities", type=int, default=16,
                        help="test identities (never in the training split)")
    puppet.add_argument("--videos-per-identity", type=int, default=1, help="videos of each identity")
    puppet.add_argument("--frames", type=int, default=24, help="frames per video")
    puppet.add_argument("--seed", type=int, default=0, help="random seed (another seed: other motions)")
    puppet.set_defaults(func=_cmd_data_puppets)

    vox = data_commands.add_parser("voxceleb", help="a real VoxCeleb2 subset (downloads)")
    vox.add_argument("--out", required=True, help="folder to write the dataset to")
    vox.add_argument("--identities", type=int, default=20, help="number of identities")
    vox.add_argument("--clips-per-identity", type=int, default=4, help="clips per identity")
    vox.add_argument("--size", type=int, default=256, help="frame size")
    vox.add_argument("--seed", type=int, default=0, help="random seed")
    vox.add_argument("--zip", default=None, help="a local copy of the VoxCeleb2 test zip")
    vox.add_argument("--videos", default=None, help="a folder of mp4 files to use instead")
    vox.add_argument("--crop", action="store_true",
                     help="crop each clip around its face (fomm-lessons crop) instead of the centre square")
    vox.set_defaults(func=_cmd_data_voxceleb)

    convert = commands.add_parser("convert", help="convert a published .pth.tar to Keras weights")
    convert.add_argument("--config", default=None, help=MODEL_CONFIG_HELP)
    convert.add_argument("--checkpoint", required=True,
                         help="the .pth.tar file, or a published model's name (vox-256, vox-adv-256)")
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(func=_cmd_convert, checkpoint_kind="torch")

    train = commands.add_parser(
        "train", help="train the models on a dataset",
        epilog="One run at a time per --out folder (train.lock). Ctrl-C or SIGTERM saves a checkpoint and exits "
               "130 or 143, printing the command that resumes.")
    train.add_argument("--config", required=True, help=CONFIG_HELP)
    train.add_argument("--data", required=True, help="dataset root with train/ and test/")
    train.add_argument("--out", required=True, help="run folder: checkpoints, log.csv, TensorBoard")
    train.add_argument("--steps", type=int, default=None, help="stop at this step (a positive number, counted "
                       "from the run's start)")
    train.add_argument("--minutes", type=float, default=None,
                       help="time budget: stop after the first step that ends past it, with a checkpoint "
                            "(--resume continues); the first step's tracing counts")
    train.add_argument("--init-from", default=None, metavar="NAME_OR_PATH",
                       help="fine-tune: start the networks from a model name (fomm-lessons models list) or a "
                            ".pth.tar / weights folder / run folder of this --config's architecture; "
                            "optimizers and step start anew (ignored with --resume)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in --out that reads whole and finite")
    train.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                       help="compile the steps with XLA (default: on for GPUs/TPUs, off on CPU)")
    train.add_argument("--mixed-precision", choices=("auto", "off", "float16", "bfloat16"), default="auto",
                       help="compute dtype (default auto: float16 on GPUs, bfloat16 on TPUs and on CPUs with native "
                            "bfloat16 where a probe measures it faster, else off; train.log says which)")
    train.add_argument("--checkpoint-every", type=int, default=None,
                       help="steps between checkpoints (default: one an epoch)")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument("--no-progress", action="store_true",
                       help="no progress bar (the losses still go to log.csv and TensorBoard)")
    train.add_argument("--vgg", default="auto",
                       help="VGG19 weights for the perceptual loss: torchvision (the original's ImageNet VGG19, "
                            "downloaded once), auto ($FOMM_LESSONS_VGG19, else torchvision), imagenet (Keras' "
                            "Caffe-trained VGG19), random (tests only) or a file")
    train.add_argument("--strategy", choices=("auto", "one", "mirrored", "multi-worker"), default="auto",
                       help="how to spread the steps (default auto: multi-worker when TF_CONFIG lists several "
                            "workers, mirrored over several GPUs, else one device)")
    train.set_defaults(func=_cmd_train)

    animate = commands.add_parser("animate", help="animate a source image with a driving video")
    _add_model_arguments(animate)
    animate.add_argument("--source", required=True, help="source image")
    animate.add_argument("--driving", required=True, help="driving video (mp4, gif, PNG folder)")
    animate.add_argument("--out", required=True,
                         help="output video (mp4, mov, gif) or a new folder for PNG frames")
    animate.add_argument("--overwrite", action="store_true",
                         help="replace an existing --out video file (an input is never replaced)")
    animate.add_argument("--relative", action=argparse.BooleanOptionalAction, default=True,
                         help="relative motion (default) or --absolute keypoints")
    animate.add_argument("--absolute", dest="relative", action="store_false", help="same as --no-relative")
    animate.add_argument("--adapt-scale", action="store_true", help="adapt the movement scale (convex hulls)")
    initial = animate.add_mutually_exclusive_group()
    initial.add_argument("--find-best-frame", action="store_true",
                         help="start from the driving frame that best matches the source")
    initial.add_argument("--best-frame", type=int, default=None, metavar="N",
                         help="start from driving frame N (relative motion is measured from it)")
    animate.add_argument("--audio", action="store_true", help="keep the driving video's audio")
    animate.add_argument("--crop", action="store_true",
                         help="crop the source and driving video around the face first (as `fomm-lessons crop`)")
    animate.add_argument("--source-box", default=None, metavar="X,Y,W,H",
                         help="crop the source to this box (pixels of the file) instead of finding the face")
    animate.add_argument("--driving-box", default=None, metavar="X,Y,W,H",
                         help="crop every driving frame to this box instead of finding the face")
    animate.set_defaults(func=_cmd_animate)

    crop = commands.add_parser("crop", help="crop a video or photo around the face, as the training data was")
    crop_input = crop.add_mutually_exclusive_group(required=True)
    crop_input.add_argument("--video", default=None, help="video to cut into square face clips")
    crop_input.add_argument("--image", default=None, help="photo to crop around its largest face")
    crop.add_argument("--out", required=True, help="folder for the clips (--video) or the image file (--image)")
    crop.add_argument("--size", type=int, default=256, help="side of the crops in pixels (the model's size)")
    crop.add_argument("--increase", type=float, default=0.1,
                      help="margin on each side of the face, as a fraction of its size")
    crop.add_argument("--min-frames", type=int, default=25, help="drop clips with fewer frames")
    crop.add_argument("--box", default=None, metavar="X,Y,W,H", help="use this box instead of finding the face")
    crop.add_argument("--print-commands", action="store_true",
                      help="print the equivalent ffmpeg commands instead of writing the clips")
    crop.add_argument("--overwrite", action="store_true",
                      help="replace an existing --out image file (an input is never replaced)")
    crop.set_defaults(func=_cmd_crop)

    reconstruct = commands.add_parser("reconstruct", help="reconstruct the test videos and report L1")
    _add_model_arguments(reconstruct)
    reconstruct.add_argument("--data", required=True, help="dataset root with test/")
    reconstruct.add_argument("--out", required=True, help="folder for the reconstructions and metrics")
    reconstruct.set_defaults(func=_cmd_reconstruct)

    models = commands.add_parser("models", help="trained models by name: list, describe, fetch")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_commands.add_parser("list", help="the known models, and whether their weights are here")
    models_info = models_commands.add_parser("info", help="one model's card: source, sha256, licence, quality")
    models_info.add_argument("name", help="a model name (fomm-lessons models list)")
    models_fetch = models_commands.add_parser(
        "fetch", help="download, check and convert a model once",
        epilog="A download leaves a mirror that keeps under 1 KiB/s for a minute "
               "(FOMM_LESSONS_DOWNLOAD_MIN_RATE, bytes/s), and gives up after 4 hours for all mirrors "
               "(FOMM_LESSONS_DOWNLOAD_TIMEOUT_S, seconds). FOMM_LESSONS_MIRROR=URL is tried first by every "
               "command, as --mirror is here.")
    models_fetch.add_argument("name", help="a model name (fomm-lessons models list)")
    models_fetch.add_argument("--checkpoint", default=None, help="a copy of the published .pth.tar you already have")
    models_fetch.add_argument("--mirror", default=None, metavar="URL",
                              help="try URL/FILENAME (e.g. vox-cpk.pth.tar) before the published sources "
                                   "(default: $FOMM_LESSONS_MIRROR)")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv=None):
    """Run one command; a user error ends with one line on stderr and exit status 2, never a traceback.

    Set ``FOMM_LESSONS_DEBUG=1`` to see the traceback of an unexpected error.
    """
    import os

    def one_line(error, limit=400):  # ffmpeg and Keras write whole pages
        text = " ".join(str(error).split()) or type(error).__name__
        if getattr(error, "untruncated", False):  # e.g. a download error naming each URL tried
            return text
        return text if len(text) <= limit else text[:limit] + " ..."

    parser = build_parser()
    args = parser.parse_args(argv)
    from fomm_lessons.notebook import import_tensorflow_quietly

    import_tensorflow_quietly()  # TensorFlow's start-up notices are not the command's output
    try:
        _resolve_checkpoint(args)
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"fomm-lessons {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, OSError, ValueError) as error:  # OSError: missing, unreadable, unwritable paths
        print(f"fomm-lessons {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if os.environ.get("FOMM_LESSONS_DEBUG"):
            raise
        print(f"fomm-lessons {args.command}: unexpected error: {type(error).__name__}: {one_line(error)} "
              f"(set FOMM_LESSONS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
