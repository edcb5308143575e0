"""nucleus/topp.py against transformers' TopPLogitsWarper, and its tie rule counted by hand."""
import math

import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from nucleus.topp import ValueSortTopP


def test_same_kept_set_as_transformers_on_many_distributions():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(600):
        scale = (0.5, 1, 2, 3, 5, 8)[trial % 6]                 # flat (random 1.13B) to peaked (trained)
        x = torch.randn(3 if trial % 5 == 0 else 1, 32000, generator=g) * scale
        if trial % 7 == 0:                                       # -inf already there, as after top-k
            x = TopKLogitsWarper(int(torch.randint(1, 500, (1,), generator=g)))(None, x)
        top_p = (0.05, 0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999)[trial % 8]
        ours, theirs = ValueSortTopP(top_p)(None, x), TopPLogitsWarper(top_p)(None, x)
        assert torch.equal(ours, theirs), (trial, scale, top_p)
        checked += 1
    assert checked == 600


def test_min_tokens_to_keep_and_a_cut_before_everything():
    x = torch.tensor([[10.0, 0.0, -1.0, -2.0]])
    for keep in (1, 2, 3):
        ours = ValueSortTopP(0.5, min_tokens_to_keep=keep)(None, x)
        assert torch.equal(ours, TopPLogitsWarper(0.5, min_tokens_to_keep=keep)(None, x))
        assert int(torch.isfinite(ours).sum()) == keep           # the 10 holds > 0.99 of the mass alone


def test_ties_at_the_cut_are_kept_together():
    # probabilities by hand: exp([2, 1, 1, 1, 0]) / sum; the 2 holds 0.448, each 1 holds 0.165
    x = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    p = torch.softmax(x, -1)[0].tolist()
    assert math.isclose(p[0], math.exp(2) / (math.exp(2) + 3 * math.e + 1), rel_tol=1e-6)
    # top_p 0.5: ascending running sums 0.061, 0.226, 0.391, 0.552, 1: the first three are <= 0.5,
    # so the rule removes the 0 and two of the three tied 1s; which two is the sort's choice
    ours = ValueSortTopP(0.5)(None, x)
    assert torch.isfinite(ours).tolist() == [[True, True, True, True, False]]   # the tied 1s stay together
    assert int(torch.isfinite(TopPLogitsWarper(0.5)(None, x)).sum()) == 2       # transformers keeps one of them


def test_other_dtypes_take_transformers_path():
    x = (torch.randn(1, 1000) * 3).to(torch.bfloat16)
    assert torch.equal(ValueSortTopP(0.9)(None, x), TopPLogitsWarper(0.9)(None, x))
