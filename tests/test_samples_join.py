"""The training kit's samples.log shows prompt + continuation exactly as the model's tokens decode."""
import ast
from types import SimpleNamespace

import torch

import nucleus
from nucleus.tokenizer import encode_prompt
from train.records import write_samples


def test_samples_log_joins_the_prompt_like_the_decoded_sequence(tiny_lm, tmp_path):
    cfg = SimpleNamespace(sample_presets=["greedy"], seed=3, sample_tokens=16, seq_len=64)
    write_samples(tiny_lm.model, tiny_lm.tokenizer, cfg, 1, tmp_path, lambda line: None)
    line = next(ln for ln in (tmp_path / "samples.log").read_text().splitlines() if ln.startswith("--- greedy: "))
    logged = ast.literal_eval(line.removeprefix("--- greedy: "))
    preset = nucleus.load_presets()["greedy"]
    ids = torch.tensor([encode_prompt(tiny_lm.tokenizer, preset.prompt)])
    with torch.no_grad():                       # reference: plain transformers, whole sequence decoded
        full = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      repetition_penalty=preset.settings.repetition_penalty,
                                      max_new_tokens=16, pad_token_id=2)
    assert logged == tiny_lm.tokenizer.decode(full[0], skip_special_tokens=True)
