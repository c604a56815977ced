"""Choosing how training is spread: one device, the GPUs of one machine, or several machines.

:func:`make_strategy` picks a ``tf.distribute`` strategy by name. ``"auto"``
takes ``MultiWorkerMirroredStrategy`` when the ``TF_CONFIG`` environment
variable describes a cluster of more than one worker (as a cluster scheduler
or Vertex AI sets it), else ``MirroredStrategy`` when more than one GPU is
visible, else none (TensorFlow's default strategy, one device).

Two machines train one run when each starts the same command with its own
``TF_CONFIG``; the cluster lists every worker, ``task`` says which one this is::

    # on the first machine (worker 0, the chief: it writes the run folder)
    TF_CONFIG='{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        fomm-lessons train --strategy multi-worker --config cpu-64 --data DATA --out RUN
    # on the second machine: the same, with "index": 1

Every worker reads the whole dataset and takes its own slice of each global
batch (:meth:`fomm_lessons.training.Trainer.epoch_dataset`), so the run is the
one a single process would train with the same ``batch_size``. ``RUN`` must be
a folder every worker can read (a shared file system) for ``--resume``; only
the chief writes there.

A worker that dies is noticed by the others: a killed chief breaks their
connections at once (measured: about 3 s until the others exit), a killed
worker stops sending heartbeats to the chief's coordination service, which
aborts the collectives after its heartbeat timeout (TensorFlow's default, 10 s;
measured: 7 to 11 s). The collective operations also have a timeout of their
own, :data:`COLLECTIVE_TIMEOUT_S`, for a worker that lives but hangs.
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one", "mirrored", "multi-worker")
COLLECTIVE_TIMEOUT_S = 600  # longer than the slowest first step (tracing) or checkpoint seen
WORKER_JOBS = ("chief", "worker")  # the jobs that train; "evaluator" and "ps" do not


def read_tf_config(text=None):
    """``TF_CONFIG`` (or ``text``) checked: ``{"cluster": {job: [address, ...]}, "task": {"type", "index"}}``.

    Returns None when it is unset or empty. Raises one ValueError line naming what is wrong.
    """
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error.msg} at character {error.pos}): {text[:120]!r}") from None
    expected = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not config["cluster"]:
        raise ValueError(f"TF_CONFIG has no cluster: expected {expected}, got {text[:120]!r}")
    for job, addresses in config["cluster"].items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f"TF_CONFIG cluster job {job!r} must list 'host:port' addresses, got {addresses!r}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG has no task with a type and an index: expected {expected}, got {text[:120]!r}")
    job, index = task["type"], task["index"]
    if job not in config["cluster"]:
        raise ValueError(f"TF_CONFIG task type {job!r} is not a job of its cluster {sorted(config['cluster'])}")
    count = len(config["cluster"][job])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range: the cluster has {count} {job!r} "
                         f"task{'s' if count != 1 else ''} (index 0 to {count - 1})")
    return config


def worker_count(config):
    """How many processes train in the cluster of a :func:`read_tf_config` result (1 without one)."""
    if config is None:
        return 1
    return sum(len(config["cluster"].get(job, [])) for job in WORKER_JOBS)


def make_strategy(name="auto"):
    """The ``tf.distribute`` strategy called ``name`` (one of :data:`STRATEGIES`), or None for one device.

    Create it before any other TensorFlow work: a multi-worker strategy sets up
    the cluster's connections when TensorFlow starts. It waits until every
    worker of ``TF_CONFIG`` has joined.
    """
    if name not in STRATEGIES:
        raise ValueError(f"expected a strategy in {', '.join(STRATEGIES)}, got {name!r}")
    config = read_tf_config()
    if name == "auto":
        if worker_count(config) > 1:
            name = "multi-worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return None
    if name == "one":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def task_of(strategy):
    """(worker index, number of workers) of this process under ``strategy`` (None: (0, 1))."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    jobs = [job for job in WORKER_JOBS if job in spec]
    order = [(job, i) for job in jobs for i in range(len(spec[job]))]  # the chief first, then the workers
    if not order:  # no TF_CONFIG: one local worker
        return 0, 1
    return order.index((resolver.task_type, resolver.task_id)), len(order)


def describe(strategy):
    """One line: which strategy and how many replicas, for the log of a run."""
    if strategy is None:
        return "strategy: one device (1 replica)"
    replicas = strategy.num_replicas_in_sync
    several = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    name = "MultiWorkerMirroredStrategy" if several else type(strategy).__name__  # not its alias's name
    text = f"strategy: {name}, {replicas} replica{'s' if replicas != 1 else ''}"
    if several:
        index, workers = task_of(strategy)
        role = "the chief, which writes the run folder" if strategy.extended.should_checkpoint else "not the chief"
        text += f" on {workers} worker{'s' if workers != 1 else ''} (this is worker {index}, {role})"
    return text


def distribute_batches(strategy, dataset, batch_size):
    """``dataset`` of global batches of ``batch_size`` items, split over the replicas of ``strategy``.

    Replica r of the R in sync gets items [r * b, (r + 1) * b) of every global
    batch, b = batch_size / R, on one machine or many: each worker reads the
    whole dataset and keeps the rows of its own replicas, so the run does not
    depend on how the replicas are spread over workers.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} does not split evenly over {replicas} replicas: "
                         f"expected a multiple of {replicas}")
    per_replica = batch_size // replicas

    def worker_dataset(context):
        workers, worker = context.num_input_pipelines, context.input_pipeline_id
        per_worker = batch_size // workers
        rows = slice(worker * per_worker, (worker + 1) * per_worker)
        share = dataset.map(lambda batch: tf.nest.map_structure(lambda t: t[rows], batch))  # (B / workers, ...)
        # One element per local replica, in order: (b, ...) each.
        return share.unbatch().batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(worker_dataset)


class WorkerLost(ConnectionError):
    """Another worker of the cluster died or cannot be reached; every worker must be restarted."""


# How TensorFlow reports a lost peer: its connections fail, its heartbeats stop, a collective times out.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError)


def peer_failure(error):
    """The cause, in a few words, when ``error`` says that another worker is gone; else None."""
    if not isinstance(error, _PEER_ERRORS):
        return None
    text = " ".join(str(error).split())
    for marker in ("Collective ops is aborted by: ", "Error reported from "):
        if marker in text:
            text = text.split(marker, 1)[1]
    for end in (" Additional GRPC", " The tasks have crashed", " [type.googleapis", " Check the task logs"):
        text = text.split(end, 1)[0]
    return f"{type(error).__name__}: {text[:200]}"
