"""Random state_dicts in the published checkpoints' structure, written with torch (the test oracle).

Shared by tests/test_pretrained.py and tests/scripts/forced_vox_chapter.py: every entry the
original's networks save, with the values the converter must carry over (the anti-aliasing
Gaussian as stored, ``num_batches_tracked`` as int64, positive running variances).
"""

import numpy as np


def random_torch_state(models, rng, weight):
    """``{part: {name: torch tensor}}`` for the networks of ``models`` (fomm_lessons.checkpoint.PARTS).

    ``weight(name, field, shape)`` draws every other entry (weights, biases, running means) with ``rng``.
    """
    import torch

    from fomm_lessons.checkpoint import CONSTANT, IGNORED, PARTS, torch_entries, torch_state_shapes

    state = {}
    for part in PARTS:
        model = getattr(models, part)
        if model is None:
            continue
        shapes = torch_state_shapes(model)
        entries = {}
        for name, layer, field, target in torch_entries(model):
            if target is IGNORED:
                entries[name] = torch.tensor(40, dtype=torch.int64)  # num_batches_tracked
                continue
            if target is CONSTANT:  # the anti-aliasing Gaussian, as the original stores it
                value = np.broadcast_to(layer.kernel_2d, shapes[name]).copy()
            elif field == "running_var":
                value = rng.uniform(0.5, 1.5, shapes[name])
            else:
                value = weight(name, field, shapes[name])
            entries[name] = torch.from_numpy(np.asarray(value, np.float32))
        state[part] = entries
    return state
