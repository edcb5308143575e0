"""The quality gate for quantised serving: a quantised model against its unquantised self.

Two measures on fixed held-out text (written for this project, in none of the training sources),
each passage read in one forward pass:
- perplexity of the passages (token-weighted), quantised against the reference;
- top-1 agreement: the share of positions where both models rank the same next token first.

The gate (tests/test_quantize_quality.py, bench/serve_speed.py): perplexity within 3% of the
reference and top-1 agreement of at least 95%.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PPL_TOLERANCE = 0.03
MIN_TOP1 = 0.95

HELD_OUT = (
    """### Lesson: How Bread Rises
### Introduction
Bread rises because of yeast, a tiny living thing that feeds on the sugar in flour. As the yeast
eats, it makes a gas called carbon dioxide. The gas forms small bubbles in the dough, and the
dough grows larger. When the bread is baked, the heat kills the yeast and the bubbles are set in
place, which is why a slice of bread is full of little holes.

### Why Kneading Matters
Kneading the dough stretches a protein called gluten. The gluten forms long strands that trap the
gas, so the dough can rise without the bubbles escaping. A dough that is not kneaded enough will
stay flat, while a dough that is kneaded well will be light and soft after baking.
""",
    """### Lesson: The Roman Roads
### Introduction
The Romans built more than eighty thousand kilometres of paved roads. A road began as a trench
dug down to firm ground. Workers filled it with layers: large stones at the bottom, then gravel
and sand, and on top flat stones fitted closely together. The surface was curved so that rain ran
off into ditches at each side.

### Why the Roads Mattered
Soldiers could march twenty or thirty kilometres a day on these roads, so the army could reach a
distant province quickly. Traders used the same roads to carry olive oil, wine and pottery, and
messengers changed horses at stations along the way. Many modern roads in Europe still follow
the routes that Roman engineers chose two thousand years ago.
""",
    """### Recipe: Simple Tomato Soup
### Ingredients
- 6 ripe tomatoes
- 1 onion, chopped
- 2 cloves of garlic
- 500 ml of vegetable stock
- a spoonful of olive oil, salt and pepper

### Method
1. Warm the oil in a large pot and cook the onion until it is soft and golden.
2. Add the garlic and cook for one more minute.
3. Cut the tomatoes into pieces, add them to the pot and pour in the stock.
4. Let the soup simmer for twenty minutes, then blend it until it is smooth.
5. Taste it, add salt and pepper, and serve it hot with a slice of bread.
""",
    """Once upon a time, in a small village by a river, there lived a girl named Lena who loved to
build boats out of bark and leaves. Every morning she set a new boat on the water and watched it
float away. One day an old fisherman asked her where the boats went. Lena did not know, so the two
of them followed the river all afternoon. At the bend by the mill they found a quiet pool, and in
it, turning slowly, were all of her boats. The fisherman laughed and said that the river had been
keeping them safe for her. From then on, Lena visited the pool every week to count her fleet.
""",
    """### Lesson: Fractions
### Introduction
A fraction describes a part of a whole. In the fraction three quarters, the bottom number tells
us that the whole is cut into four equal parts, and the top number tells us that we have three of
them. Two fractions are equal when they describe the same amount: one half is the same as two
quarters, and the same as four eighths.

### Adding Fractions
To add two fractions, first make their bottom numbers the same. To add one half and one third,
write both as sixths: one half is three sixths and one third is two sixths, so the sum is five
sixths. Once the bottom numbers match, add the top numbers and keep the bottom number as it is.
""",
    """### Lesson: The Water Cycle
### Introduction
Water on Earth moves in a never-ending cycle. The sun warms the oceans, lakes and rivers, and some
of the water turns into vapour and rises into the air. High above the ground the air is cold, so
the vapour cools and forms tiny droplets that gather into clouds. When the droplets grow heavy
they fall back down as rain or snow. The water then flows into streams and rivers, soaks into the
soil, or is taken up by plants, and sooner or later it returns to the sea to begin again.
""",
)


@dataclass(frozen=True)
class GateResult:
    ppl_reference: float
    ppl_quantised: float
    top1_agreement: float
    positions: int

    @property
    def ppl_change(self) -> float:
        return (self.ppl_quantised - self.ppl_reference) / self.ppl_reference

    @property
    def passed(self) -> bool:
        return abs(self.ppl_change) <= PPL_TOLERANCE and self.top1_agreement >= MIN_TOP1

    def as_dict(self) -> dict:
        return {"ppl_reference": round(self.ppl_reference, 3), "ppl_quantised": round(self.ppl_quantised, 3),
                "ppl_change": round(self.ppl_change, 4), "top1_agreement": round(self.top1_agreement, 4),
                "positions": self.positions, "passed": self.passed}


def passage_ids(tokenizer, texts=HELD_OUT) -> list[torch.Tensor]:
    """Each passage as (1, n) ids: <s> and the text, as the Space encodes a prompt."""
    return [torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(t, add_special_tokens=False)]) for t in texts]


@torch.inference_mode()
def compare(reference, quantised, tokenizer, texts=HELD_OUT) -> GateResult:
    """Both models are plain causal LMs (a PreTrainedModel, or anything returning .logits)."""
    nll_ref = nll_q = 0.0
    agree = positions = 0
    for ids in passage_ids(tokenizer, texts):
        a = reference(ids).logits[0, :-1].float()
        b = quantised(ids).logits[0, :-1].float()
        target = ids[0, 1:]
        nll_ref += torch.nn.functional.cross_entropy(a, target, reduction="sum").item()
        nll_q += torch.nn.functional.cross_entropy(b, target, reduction="sum").item()
        agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
        positions += len(target)
    return GateResult(math.exp(nll_ref / positions), math.exp(nll_q / positions), agree / positions, positions)
