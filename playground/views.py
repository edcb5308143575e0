"""What the page draws: pure functions from data (updates, records, settings) to component values.
Nothing here touches Gradio state or a model, so each is tested on its own (tests/test_views.py)."""
from __future__ import annotations

import math
import re

# ---- texts ----------------------------------------------------------------------------------------
TITLE = "Nucleus playground"
INTRO = ("Nucleus is a small base language model that continues your text. It was trained to write "
         "textbook-style lessons, recipes and stories, and is weak at questions and code. Pick a preset or "
         "write a prompt, then press **Generate**.")
DEMO_NOTICE = ("**You are trying Nucleus-Nano**, the 20M-parameter demo model bundled so this Space runs offline "
               "(or its stage-1 model): it was trained for under an hour on a CPU, so its text is not meaningful. To serve the real "
               "Nucleus-1B, start the Space where the Hugging Face Hub is reachable, or run "
               "`python app.py --model NucleusOrg/Nucleus-1B-alpha-1`.")
FINISH_REASONS = {"eos": "end of text", "length": "max new tokens reached", "stop": "stop string found",
                  "cancelled": "stopped", "time": "time limit reached"}
STAGE_NAMES = {"penalties": "the repetition penalty / no-repeat n-gram", "top-k": "top-k", "top-p": "top-p",
               "min-p": "min-p"}
INSPECTOR_HEADERS = ["token (␣ space, ⏎ newline)", "model %", "after penalties %", "after temperature %", "drawn from %", "note"]
WEIGHTS = {"none": "the weights as stored", "int8": "int8 weights (quantised for CPU)",
           "int4": "int4 weights (quantised for CPU)", "engine": "the inference engine's weights"}

# ---- the token view's colours ---------------------------------------------------------------------
BUCKETS = (("p ≥ 0.5", 0.5), ("0.2 – 0.5", 0.2), ("0.05 – 0.2", 0.05), ("< 0.05", 0.0))
BUCKET_COLORS = {"p ≥ 0.5": "#bbf7d0", "0.2 – 0.5": "#fef08a", "0.05 – 0.2": "#fed7aa", "< 0.05": "#fecaca"}
VIEWS = ("Tokens", "Plain text", "Markdown")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def status(update) -> str:
    """The line under the buttons: seed, tokens, speed, and why the run ended (or that it runs)."""
    line = (f"Seed **{update.seed}** · {plural(update.tokens, 'token')} · {update.tokens_per_second:.1f} tokens/s"
            + (f" · {FINISH_REASONS[update.finish_reason]}" if update.done else " · generating…"))
    return line + (f"\n\n⚠️ {update.warning}" if update.warning else "")


def waiting(ahead: int, own: int) -> str:
    """The status of a run that waits for the model: how many runs are ahead, and whether they are
    this visitor's own (a Compare holds the model for two runs)."""
    if own:
        return (f"⏳ Waiting: your own {plural(own, 'run')} (a Compare, or an earlier Generate) "
                f"{'holds' if own == 1 else 'hold'} the model; this one starts when {'it ends' if own == 1 else 'they end'}.")
    return f"⏳ Waiting for the model: {plural(ahead, 'run')} of other visitors ahead of yours."


def shown_prompt(prompt: str, prompt_start: int) -> str:
    """The part of the prompt the model saw: all of it, or its end after […] when it was cut."""
    return prompt if prompt_start == 0 else "[…]" + prompt[prompt_start:]


def bucket(p: float) -> str:
    return next(name for name, low in BUCKETS if p >= low)


def token_entries(prompt_shown: str, records) -> tuple[list[tuple[str, str | None]], list[int]]:
    """HighlightedText value: the prompt unlabelled, then each token by the model's probability for
    it; and which record each entry shows (entries with no text are left out)."""
    entries, index = [(prompt_shown, None)], [-1]
    for i, r in enumerate(records):
        if r.text:   # an engine may not give a token's logprob (NaN): then it is shown unlabelled
            entries.append((r.text, bucket(math.exp(r.raw_logprob)) if r.raw_logprob == r.raw_logprob else None))
            index.append(i)
    return entries, index


def md_literal(text: str) -> str:
    """Untrusted text for a Markdown component: tags and entities show as typed, never as HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


CODE = re.compile(r"(```[\s\S]*?(?:```|$)|`[^`\n]*`)")     # fenced blocks (to the end if open), inline spans


def chat_literal(text: str) -> str:
    """A reply for the chatbot's Markdown: markup outside code shows as typed (md_literal); code
    blocks and spans stay as they are, since Markdown shows their text literally already (and
    would show an escaped "&lt;" there as typed)."""
    return "".join(part if i % 2 else md_literal(part) for i, part in enumerate(CODE.split(text)))


def code_span(text: str) -> str:
    """A Markdown code span that shows `text` literally, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text.replace(chr(10), '⏎')} {fence}"


# ---- the token inspector --------------------------------------------------------------------------
def visible(token: str) -> str:
    """A candidate as the table shows it: spaces, newlines and tabs as ␣ ⏎ ⇥ (so " The" and "The",
    or a newline, never look alike or blank), other control characters as \\xNN."""
    out = token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return "".join(c if c.isprintable() or c in "␣⏎⇥" else f"\\x{ord(c):02x}" for c in out)


def inspect_step(record, step: int, settings: dict) -> tuple[str, list[list]]:
    """The inspector for one token: a summary sentence and the candidates table."""
    if record.final != record.final:     # NaN: from a remote engine's logprobs, the model's column only
        return _engine_step(record, step)
    chosen = f"Token {step + 1}, {code_span(record.text)}, "
    if record.greedy:
        chosen += "was the most likely token after the penalties (temperature 0 = greedy)."
    else:
        chosen += f"was drawn with probability **{record.final:.3g}** from {record.kept:,} tokens."
    cuts = [f"{STAGE_NAMES.get(stage, stage)} removed {n:,}" for stage, n in record.removed.items()]
    if cuts:
        chosen += " " + "; ".join(cuts).capitalize() + " of the 32,000-token vocabulary."
    t = settings.get("temperature")
    chosen += (f"\n\nSettings: temperature {t:g}, top-p {settings.get('top_p'):g}, top-k {settings.get('top_k')}, "
               f"min-p {settings.get('min_p'):g}, repetition penalty {settings.get('repetition_penalty'):g}.")
    rows = [[visible(c.token), round(100 * c.raw, 3), round(100 * c.penalized, 3), round(100 * c.tempered, 3),
             round(100 * c.final, 3), ("✔ chosen" if c.token_id == record.token_id else "")
             + (f"removed by {c.removed_by}" if c.removed_by else "")] for c in record.candidates]
    return chosen, rows


def _engine_step(record, step: int) -> tuple[str, list[list]]:
    p = math.exp(record.raw_logprob) if record.raw_logprob == record.raw_logprob else None
    summary = (f"Token {step + 1}, {code_span(record.text)}"
               + (f", had probability **{p:.3g}** as the inference engine reports it." if p is not None else ".")
               + " The engine gives its top alternatives, not what each sampling setting did, so only the "
                 "model column is filled.")
    rows = [[visible(c.token), round(100 * c.raw, 3) if c.raw == c.raw else None, None, None, None,
             "✔ chosen" if c.token_id == record.token_id else ""] for c in record.candidates]
    return summary, rows


def inspector_hint(engine: str | None, has_records: bool) -> str:
    """What the inspector says after a run, before a token is selected."""
    if not engine:
        return "Select a token above to see its candidates."
    if has_records:
        return (f"Token probabilities as the inference engine behind this Space ({engine}) reports them: select "
                "a token above to see its top alternatives.")
    return (f"The inference engine behind this Space ({engine}) returns no token probabilities: the token view is "
            "plain text.")


# ---- the prompt meter -----------------------------------------------------------------------------
def prompt_meter(n_tokens: int, context: int, max_new: int) -> str:
    """One line: the prompt's tokens against the context and what max new tokens leaves."""
    line = f"Prompt: **{n_tokens:,}** {'token' if n_tokens == 1 else 'tokens'} of the model's {context:,}-token context"
    if n_tokens >= context:
        return line + " · longer than the context: its oldest tokens will be cut"
    room = context - n_tokens
    if max_new > room:
        return line + f" · leaves {room:,} new tokens, so max new tokens ({max_new:,}) will be lowered to {room:,}"
    return line + f" · leaves {room:,} new tokens (max new tokens: {max_new:,})"


def model_info(describe: str, chosen_by: str = "") -> str:
    return f"**Model:** {describe}" + (f" · chosen by {chosen_by}" if chosen_by else "")


LABELS = {"temperature": "Temperature", "top_p": "Top-p", "top_k": "Top-k", "min_p": "Min-p",
          "repetition_penalty": "Repetition penalty", "no_repeat_ngram_size": "No-repeat n-gram size",
          "max_new_tokens": "Max new tokens"}


def out_of_range(name: str, value: float, low: float, high: float) -> str:
    """The note for a value typed past a slider's range, naming the value the page uses ("" when in range)."""
    if low <= value <= high:
        return ""
    used = high if value > high else low
    return (f"⚠️ {LABELS[name]} {value:g} is outside this page's range ({low:g} to {high:g}): {used:g} is used"
            + (" (what this model's context allows)." if name == "max_new_tokens" and value > high else "."))

