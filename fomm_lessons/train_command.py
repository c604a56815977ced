"""``fomm-lessons train``: a run folder, a strategy and a :class:`~fomm_lessons.training.Trainer`.

One run at a time per run folder (a lock), ``--resume`` from the newest checkpoint that reads
whole and finite, exit 130/143 with the command that continues the run when stopped by
SIGINT/SIGTERM, and under several workers one line when a worker is lost.
"""

import contextlib
import math
import shlex
import signal
import sys
from pathlib import Path

import tensorflow as tf

from fomm_lessons.distribute import WorkerLost, describe as describe_strategy, make_strategy, peer_failure, task_of
from fomm_lessons.data.media import check_output_folder, claim_output_folder, refuse_input_as_output
from fomm_lessons.run_folder import LOG_FILE, LOCK_FILE, DiskFull, check_writable, lock_run_folder, log_line
from fomm_lessons.training import Trainer, TrainingDiverged, _loss_weight_on


def _resume_command(args):
    """The command line that continues this run."""
    words = ["fomm-lessons", "train", "--config", args.config, "--data", args.data, "--out", args.out]
    for option, value, default in (("--steps", args.steps, None), ("--seed", args.seed, 0),
                                   ("--checkpoint-every", args.checkpoint_every, None),
                                   ("--minutes", getattr(args, "minutes", None), None),
                                   ("--mixed-precision", args.mixed_precision, "auto"),
                                   ("--vgg", getattr(args, "vgg", "auto"), "auto"),
                                   ("--strategy", getattr(args, "strategy", "auto"), "auto")):
        if value != default:
            words += [option, str(value)]
    if args.xla is not None:
        words.append("--xla" if args.xla else "--no-xla")
    return shlex.join(words + ["--resume"])


def _positive(value, option):
    if value is not None and value < 1:
        raise ValueError(f"{option} must be a positive number of steps, got {value}")


def main(args):
    """``fomm-lessons train``: one run at a time per run folder; exit 130/143 when stopped by SIGINT/SIGTERM.

    Under several workers (``--strategy multi-worker`` and ``TF_CONFIG``, see
    :mod:`fomm_lessons.distribute`) only the chief locks and writes ``--out``;
    the lock does not keep the other workers of its job out. A lost worker
    ends every worker with one line; all restart with ``--resume``.
    """
    from fomm_lessons.config import load_config
    from fomm_lessons.data.loader import FramesDataset
    from fomm_lessons.pretrained import vgg19_weights

    _positive(args.steps, "--steps")
    _positive(args.checkpoint_every, "--checkpoint-every")
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not (minutes > 0 and math.isfinite(minutes)):
        raise ValueError(f"--minutes must be a positive time budget, got {minutes}")
    config = load_config(args.config, command="train")
    # torchvision's weights by name become a cache path, downloaded if need be: a failed download
    # stops here, before the run folder is touched, unless --vgg random was asked for.
    vgg = getattr(args, "vgg", "auto")
    if _loss_weight_on(config["train_params"].get("loss_weights", {}), "perceptual"):
        vgg = vgg19_weights(vgg)
    strategy = make_strategy(getattr(args, "strategy", "auto"))  # before other TensorFlow work
    start = _start_weights(args, config)
    print(describe_strategy(strategy))
    worker, workers = task_of(strategy)
    chief = strategy is None or bool(strategy.extended.should_checkpoint)
    frames = FramesDataset.from_config(args.data, config.get("dataset_params", {}), "train")
    out = Path(args.out)
    if args.resume and not (out / "checkpoints").is_dir():
        raise ValueError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    note = (lambda text: log_line(out, text)) if chief else (lambda text: None)
    inputs = {"--data": args.data, "--config": args.config}
    legacy = (out / "checkpoints").is_dir() and (out / LOG_FILE).is_file()  # a run from before the mark
    if chief:  # new, empty or an earlier run's: never a folder of the user's files, never the data
        refuse_input_as_output(out, inputs) if legacy else check_output_folder(out, "train", inputs, (LOCK_FILE,))
        out.mkdir(parents=True, exist_ok=True)
    trainer = None
    try:
        with lock_run_folder(out) if chief else contextlib.nullcontext():
            if (out / "checkpoints").exists() and not args.resume and any((out / "checkpoints").iterdir()):
                raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, "
                                 "or choose another --out")
            if chief:
                if not legacy:
                    claim_output_folder(out, "train", inputs, (LOCK_FILE,))
                check_writable(out)  # a read-only folder is found now, not at the first save
            trainer = Trainer(config, out, strategy=strategy, xla=args.xla, mixed_precision=args.mixed_precision,
                              seed=args.seed, checkpoint_every=args.checkpoint_every,
                              vgg_weights=vgg)
            try:
                return _train(args, trainer, frames, out, note, start)
            except BaseException as error:  # whatever ends the run, train.log says so
                if isinstance(error, tf.errors.OpError) and workers > 1 and peer_failure(error):
                    raise  # a lost worker: said below
                if isinstance(error, (TrainingDiverged, DiskFull)):
                    note(f"stopped: {error}")
                else:
                    note(f"stopped by {type(error).__name__}: {' '.join(str(error).split())[:300]}")
                if isinstance(error, TrainingDiverged):
                    raise ValueError(str(error)) from None
                raise
    except tf.errors.OpError as error:
        cause = peer_failure(error) if workers > 1 else None
        if cause is None:
            raise
        last = tf.train.latest_checkpoint(str(out / "checkpoints"))
        message = (f"worker {worker} of {workers} stops: another worker is gone ({cause}); restart every "
                   f"worker with --resume to continue from {last or 'the start (no checkpoint yet)'}")
        note(f"stopped: {message}")
        raise WorkerLost(message) from None
    finally:
        if trainer is not None:
            trainer.close()


def _start_weights(args, config):
    """The networks ``--init-from`` names, read now (before the run folder is touched), or None."""
    name = getattr(args, "init_from", None)
    if name is None or args.resume:
        return None
    from fomm_lessons.pretrained import load

    models, _ = load(name, config=config)  # a path is read with this run's config
    return models


def _train(args, trainer, frames, out, note, start=None):
    """The run of :func:`main` once its folder is locked and its trainer built."""
    print(f"VGG19 weights for the perceptual loss: {trainer.vgg_description}")
    precision = "float32" if trainer.precision == "off" else f"mixed {trainer.precision}"
    print(f"compute precision: {precision} ({trainer.precision_reason})")
    note(f"compute precision: {precision} ({trainer.precision_reason})")
    if args.resume:
        restored = trainer.restore()
        for path, problem in trainer.skipped:
            print(f"fomm-lessons train: warning: skipping the checkpoint {path}: {problem}", file=sys.stderr)
            note(f"skipped the checkpoint {path}: {problem}")
        if restored is None:
            raise ValueError(f"--resume: no checkpoint in {out / 'checkpoints'} can be used"
                             + (f" ({len(trainer.skipped)} skipped, see above)" if trainer.skipped else ""))
        print(f"resuming from {restored} (step {int(trainer.step.numpy())})")
    elif start is not None:
        copied = trainer.init_from(start)
        print(f"starting from the weights of {args.init_from} ({', '.join(copied)}); new optimizers, step 0")
        note(f"initialized from {args.init_from}: {', '.join(copied)}")
    if args.resume and getattr(args, "init_from", None) is not None:
        print(f"--init-from {args.init_from} is not used: the run resumes from its own checkpoint")
    step = int(trainer.step.numpy())
    note(f"start at step {step}: config {args.config}, data {args.data}, seed {args.seed}, "
         f"VGG19 weights {trainer.vgg_description}")
    if args.steps is not None and args.steps <= step:
        print(f"nothing to train: the run is at step {step} and --steps is {args.steps}")
        return 0
    minutes = getattr(args, "minutes", None)
    trainer.fit(frames, steps=args.steps, seconds=None if minutes is None else 60 * minutes,
                progress=not getattr(args, "no_progress", False))  # what stops it is logged by main
    step = int(trainer.step.numpy())
    if trainer.out_of_time and trainer.interrupted is None:
        note(f"stopped at the time budget ({minutes:g} min) at step {step}")
        print(f"stopped at the time budget of {minutes:g} minutes at step {step}; the checkpoint "
              f"{trainer.manager.latest_checkpoint if trainer.chief else 'is saved'}; continue with: "
              f"{_resume_command(args)}")
        return 0
    if trainer.interrupted is not None:
        name = signal.Signals(trainer.interrupted).name
        note(f"interrupted by {name} at step {step}")
        saved = trainer.manager.latest_checkpoint if trainer.chief else tf.train.latest_checkpoint(
            str(out / "checkpoints"))  # a worker's own copies are removed
        print(f"fomm-lessons train: interrupted by {name} at step {step}; the checkpoint "
              f"{saved} is saved; continue with: {_resume_command(args)}",
              file=sys.stderr)
        return 128 + int(trainer.interrupted)
    note(f"done at step {step}")
    print(f"trained to step {step}; checkpoints in {out / 'checkpoints'}, models in {out / 'models'}")
    return 0
