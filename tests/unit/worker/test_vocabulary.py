"""The engine speaks the gate's vocabulary: the choices offered by Settings and the CLI are what it computes."""

from gate import vocabulary
from worker.perceptual import PRESETS
from worker.perceptual.metric import PRECISIONS
from worker.perceptual.stats import layer_stats


def test_every_net_and_precision_named_by_the_gate_is_one_the_engine_has():
    assert set(PRESETS) == set(vocabulary.NETS)
    assert set(PRECISIONS) == set(vocabulary.PRECISIONS)


def test_layer_statistics_carry_the_stored_keys_in_order():
    import torch

    assert tuple(layer_stats(torch.ones(1, 2, 3, 3))[0]) == vocabulary.STAT_KEYS
