"""What the two distributed-step scripts share: SGD at rate 1 in a Trainer, and weight names.

With plain SGD at rate 1 a weight's change is minus its gradient, so comparing weights compares
gradients. (Adam's first step is lr * sign(g), which turns float noise in a near-zero gradient
into a full +-lr difference and says nothing about the distributed code path.) SGD keeps no
state but its step count, so setting the weights back starts a step afresh.
"""

import keras


def use_sgd(trainer):
    """Replace the trainer's optimizers by SGD at rate 1, built in its strategy's scope."""
    with trainer.strategy.scope():
        for name in trainer.optimizers:
            trainer.optimizers[name] = keras.optimizers.SGD(learning_rate=1.0)
            trainer.optimizers[name].build(getattr(trainer.models, name).trainable_variables)


def weight_names(trainer):
    """The path of every weight in get_weights' order; statistics (not trained) marked ``stat:``."""
    return [w.path if w.trainable else "stat:" + w.path for net in trainer._all_networks() for w in net.weights]
