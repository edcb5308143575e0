"""The Score tab's handlers: any text scored by the model, token by token (nucleus/score.py), coloured
by rank as GLTR colours it, with the perplexity, the most surprising tokens and, for a selected
token, the logit lens: what each layer would have predicted there."""
from __future__ import annotations

import math

import gradio as gr

from nucleus.settings import SettingsError

from . import handlers, views
from .session import Space

RANK_COLORS = {"top 10": "#bbf7d0", "top 100": "#fef08a", "top 1000": "#fecaca", "beyond": "#e9d5ff"}
LENS_HEADERS = ["layer", "the token's %", "its rank", "top candidates"]
SAMPLE = ("### Recipe: Classic Banana Bread\n### Ingredients\n- 3 ripe bananas\n- 1/3 cup melted butter\n"
          "- 1 teaspoon baking soda\n")


def score_text(space: Space, label, text):
    """Outputs: the coloured tokens, the summary, the surprising tokens' table, the scored text (state)."""
    try:
        text = handlers.check_prompt(text, "text")
        result = handlers.backend(space, label).score(text, top=5)
    except SettingsError as e:
        return gr.skip(), f"⚠️ {e}", gr.skip(), gr.skip()
    except gr.Error as e:
        return gr.skip(), f"⚠️ {e.message}", gr.skip(), gr.skip()
    from nucleus.score import bucket

    entries, index, at = [], [], result.prompt_start
    if result.prompt_start:
        entries, index = [("[…] ", None)], [-1]
    for i, rank in enumerate(result.ranks):
        end = result.text_offset[i + 1] if i + 1 < len(result.text_offset) else len(text)
        entries.append((text[at:end], bucket(rank)))      # the text as written, from where the last one ended
        index.append(i)
        at = end
    summary = (f"**Perplexity {result.perplexity:,.2f}** over {views.plural(len(result.tokens), 'token')} "
               f"({label}). Colour: the token's rank among the model's predictions, as GLTR counts it.")
    if result.warning:
        summary += f"\n\n⚠️ {result.warning}"
    worst = [[views.visible(result.tokens[i]), float(f"{100 * math.exp(result.token_logprobs[i]):.3g}"), result.ranks[i],
              ", ".join(views.visible(t) for t in list(result.top_logprobs[i])[:3])] for i in result.surprising]
    state = {"text": text, "model": label, "index": index}      # entry -> token (-1: the cut mark)
    return entries, summary, worst, state


def lens(space: Space, state, evt: gr.SelectData):
    """The logit lens for the selected token."""
    if not state or not isinstance(evt.index, int) or not 0 <= evt.index < len(state["index"]) \
            or state["index"][evt.index] < 0:
        return gr.skip(), gr.skip()
    position = state["index"][evt.index]
    try:
        got = handlers.backend(space, state["model"]).logit_lens(state["text"], position, top=3)
    except SettingsError as e:
        return f"⚠️ {e}", []
    rows = [[row["layer"], float(f"{100 * row['probability']:.3g}"), row["rank"],
             ", ".join(f"{views.visible(t)} {100 * p:.1f}%" for t, p in row["top"])] for row in got["layers"]]
    first = got["first_top_layer"]
    where = (f"it is the top prediction from layer {first} on" if first is not None and
             all(r["rank"] == 1 for r in got["layers"][first:]) else
             f"it is the top prediction at layer {first}" if first is not None else "no layer has it on top")
    return (f"Logit lens for token {position}, {views.code_span(views.visible(got['token']))}: the final norm and "
            f"output layer applied after each layer (0 = the embeddings; the last is the model's own "
            f"distribution); {where}."), rows
