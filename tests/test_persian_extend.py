"""The Persian recipe (train/extend_tokenizer.py, train/bits_per_char.py) on tiny local text: the
extended tokenizer round-trips Persian exactly, old pieces keep their ids and English is split as
before; the new embedding rows are the mean of the old; a run continues from the extended model;
bits per character equals a hand computation."""
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import ROOT
from nucleus.tokenizer import load_tokenizer
from train.bits_per_char import bits_per_character
from train.extend_tokenizer import extended_tokenizer

# Persian sentences written for this test (everyday subjects, as a textbook might say them)
PERSIAN = [
    "امروز هوا آفتابی است و بچه‌ها در پارک بازی می‌کنند.",
    "مادربزرگ برای شام نان تازه و سوپ عدس پخت.",
    "کتابخانهٔ شهر هر روز از ساعت هشت صبح باز است.",
    "دانش‌آموزان درس تاریخ ایران را با دقت می‌خوانند.",
    "باران بهاری گل‌های باغ را شاداب کرد.",
    "پدرم هر صبح پیش از کار یک لیوان چای می‌نوشد.",
    "در کلاس علوم دربارهٔ چرخهٔ آب در طبیعت صحبت کردیم.",
    "برای پختن کیک به آرد، شکر، تخم‌مرغ و کره نیاز داریم.",
    "خورشید در غرب غروب می‌کند و شب آرام فرا می‌رسد.",
    "دوستم نامه‌ای بلند از شهر شیراز برایم فرستاد.",
    "زبان فارسی در ایران، افغانستان و تاجیکستان گفته می‌شود.",
    "معلم از ما خواست دربارهٔ تابستان گذشته بنویسیم.",
    "گربهٔ کوچک زیر میز خوابیده بود و خواب ماهی می‌دید.",
    "کشاورزان در پاییز گندم و جو را برداشت می‌کنند.",
    "این دستور پخت ساده است و برای همهٔ خانواده کافی است.",
    "شاعران بزرگی مانند حافظ و سعدی در شیراز زندگی کردند.",
    "ما آخر هفته به کوه رفتیم و از طبیعت لذت بردیم.",
    "برادرم ریاضی را دوست دارد و هر روز تمرین حل می‌کند.",
    "بازار قدیمی شهر پر از فرش، ادویه و ظرف‌های مسی است.",
    "قطار ساعت نه شب از تهران به مشهد حرکت می‌کند.",
]
HELD_OUT = ["بچه‌ها در کتابخانه کتاب‌های تاریخ می‌خوانند و چای می‌نوشند.",
            "سال ۱۴۰۲ در تهران باران زیادی بارید، نه؟ 😊 ok",
            "دستور پخت نان: آرد، آب و نمک (۳ پیمانه)."]
ENGLISH = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2\n",
           "### Lesson: Bees\n### Introduction\n", "Ünïcödé, tabs\tand 12345 digits."]


@pytest.fixture(scope="module")
def extended():
    base = load_tokenizer(ROOT / "models" / "nucleus-nano")
    tok, added, _ = extended_tokenizer(base, PERSIAN * 5, 300)
    return base, tok, added


def test_the_extended_tokenizer_round_trips_persian_and_keeps_every_old_id(extended):
    base, tok, added = extended
    assert added and len(tok) == len(base) + len(added)
    ids = list(range(len(base)))
    assert tok.convert_ids_to_tokens(ids) == base.convert_ids_to_tokens(ids)          # every old piece, same id
    assert tok.convert_ids_to_tokens(list(range(len(base), len(tok)))) == added     # the new ones after
    for text in PERSIAN + HELD_OUT:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    for text in ENGLISH:                                   # English and code are split as before
        assert tok(text)["input_ids"] == base(text)["input_ids"]
    chars = sum(map(len, HELD_OUT))
    before = sum(len(base(t, add_special_tokens=False)["input_ids"]) for t in HELD_OUT) / chars
    after = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in HELD_OUT) / chars
    assert after < 0.8 * before, (before, after)           # fewer tokens per character on unseen Persian


def test_bits_per_character_equals_a_hand_computation():
    folder = ROOT / "models" / "nucleus-nano"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = load_tokenizer(folder)
    text = "### Recipe: Soup\n### Ingredients\n- 2 onions\n- water"
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    nats = -sum(torch.log_softmax(logits[i], -1)[ids[i + 1]].item() for i in range(len(ids) - 1))
    got = bits_per_character(model, tok, [text])
    assert math.isclose(got["bits_per_character"], nats / math.log(2) / len(text), rel_tol=1e-9)
    assert got["tokens"] == len(ids) - 1 and got["characters"] == len(text)
    short = bits_per_character(model, tok, [text], window=5)      # windows: every token is still scored once
    assert short["tokens"] == len(ids) - 1 and short["bits_per_character"] > 0


def test_the_recipe_extends_the_nano_and_a_run_continues_from_it(tmp_path):
    data = tmp_path / "fa.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in PERSIAN * 5))
    out = tmp_path / "persian-init"
    done = subprocess.run([sys.executable, "-m", "train.extend_tokenizer", "--init", "models/nucleus-nano",
                           "--dataset", str(data), "--pieces", "300", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "extension.json").read_text())
    assert info["vocab_size"] == 32000 + info["added_pieces"] and info["added_pieces"] > 0
    old = load_file(ROOT / "models" / "nucleus-nano" / "model.safetensors")
    new = load_file(out / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[name].shape[0] == info["vocab_size"]
        assert torch.equal(new[name][:32000], old[name])                               # old rows untouched
        mean = old[name].float().mean(0).to(old[name].dtype)                          # stored as the base is
        assert new[name].dtype == old[name].dtype and torch.equal(new[name][32000:], mean.expand_as(new[name][32000:]))
    again = subprocess.run([sys.executable, "-m", "train.extend_tokenizer", "--init", "models/nucleus-nano",
                            "--dataset", str(data), "--output", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "is not empty" in again.stderr                    # nothing overwritten
    run = subprocess.run([sys.executable, "-m", "train.pretrain", "--config", "train/configs/rtx3090-persian.yaml",
                          "--init", str(out), "--dataset", str(data), "--output-dir", str(tmp_path / "run"),
                          "--cache-dir", str(tmp_path / "cache"), "--liger", "false", "--compile", "false",
                          "--precision", "fp32", "--seq-len", "64", "--micro-batch", "2", "--tokens-per-step", "128",
                          "--max-steps", "2", "--eval-every", "2", "--sample-tokens", "4", "--warmup-steps", "1",
                          "--max-documents", "100", "--validation-fraction", "0.1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    final = tmp_path / "run" / "final"
    assert len(load_tokenizer(final)) == info["vocab_size"]
    held = tmp_path / "held.txt"
    held.write_text("\n\n".join(HELD_OUT))
    rows = subprocess.run([sys.executable, "-m", "train.bits_per_char", "--model", "models/nucleus-nano", "--model",
                           str(final), "--text", str(held)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rows.returncode == 0, rows.stderr[-2000:]
    lines = rows.stdout.strip().splitlines()
    assert len(lines) == 2 and all("bits/char" in line for line in lines)
    assert f"{sum(map(len, HELD_OUT)):,} characters" in lines[0] and f"{sum(map(len, HELD_OUT)):,} characters" in lines[1]
