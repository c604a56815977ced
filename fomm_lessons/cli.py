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

    sample.make_sample_dataset(args.out, size=args.size, seed=args.seed)
    return 0


def _cmd_data_voxceleb(args):
    from fomm_lessons.data import voxceleb

    return voxceleb.main(args)


def _cmd_convert(args):
    from fomm_lessons import checkpoint

    return checkpoint.convert_main(args)


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
    sample.set_defaults(func=_cmd_data_sample)

    vox = data_commands.add_parser("voxceleb", help="a real VoxCeleb2 subset (downloads)")
    vox.add_argument("--out", required=True, help="folder to write the dataset to")
    vox.add_argument("--identities", type=int, default=20, help="number of identities")
    vox.add_argument("--clips-per-identity", type=int, default=4, help="clips per identity")
    vox.add_argument("--size", type=int, default=256, help="frame size")
    vox.add_argument("--seed", type=int, default=0, help="random seed")
    vox.add_argument("--zip", default=None, help="a local copy of the VoxCeleb2 test zip")
    vox.add_argument("--videos", default=None, help="a folder of mp4 files to use instead")
    vox.set_defaults(func=_cmd_data_voxceleb)

    convert = commands.add_parser("convert", help="convert a published .pth.tar to Keras weights")
    convert.add_argument("--config", required=True, help="FOMM YAML config (or a built-in name)")
    convert.add_argument("--checkpoint", required=True, help="the .pth.tar file")
    convert.add_argument("--out", required=True, help="output folder")
    convert.set_defaults(func=_cmd_convert)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (CommandError, FileNotFoundError, ValueError) as error:
        print(f"fomm-lessons {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
