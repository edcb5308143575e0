"""GGUF export: any Nucleus checkpoint as one file for llama.cpp, Ollama or LM Studio.

    python -m train.export --checkpoint exports/my-nucleus --out my-nucleus-q4_0.gguf --gguf q4_0

Written with the `gguf` package (llama.cpp's own Python library for the format). Nucleus is a
Mistral-v0.1-shaped model, which llama.cpp runs as its "llama" architecture, so this writes:
- the hyper-parameters under `llama.*` (context, width, layers, heads, KV heads, head size,
  RoPE base, RMS-norm epsilon);
- the tokenizer as SentencePiece ("llama") with each piece's real score and type, read from the
  SentencePiece model itself. llama.cpp's SentencePiece tokenizer merges by score, so a vocabulary
  taken from tokenizer.json alone (all scores equal) would split words differently from
  transformers; with the real scores the ids match (bench/serve_speed.py checks them);
- the weights under llama.cpp's tensor names. The query and key projections are re-ordered:
  transformers' Mistral rotates the two halves of each head's vector (rotate_half), llama.cpp's
  "llama" RoPE rotates adjacent pairs, so row i of a head's half h goes to row 2i + h.
llama.cpp's "llama" architecture has no sliding window, so a model whose window is shorter than
its context (the 1.13B) is exported with a warning on stderr (see sliding_window_warning).

Types: f16, bf16, q8_0 (8-bit, blocks of 32) and q4_0 (4-bit, blocks of 32). In q4_0 the
embeddings and the output layer are stored as q8_0, as the Nucleus int4 CPU path keeps its output
layer at 8 bits (nucleus/quantize.py); norms stay f32 in every type.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TYPES = ("f16", "bf16", "q8_0", "q4_0")


class GGUFExportError(ValueError):
    pass


def _qtypes():
    from gguf import GGMLQuantizationType as T, LlamaFileType as F

    return {"f16": (T.F16, F.MOSTLY_F16), "bf16": (T.BF16, F.MOSTLY_BF16),
            "q8_0": (T.Q8_0, F.MOSTLY_Q8_0), "q4_0": (T.Q4_0, F.MOSTLY_Q4_0)}


def rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(heads * head_dim, in) rows from rotate-half order to adjacent-pair order, per head."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def sentencepiece_model(folder: Path, tokenizer) -> Path:
    """The SentencePiece file that matches the checkpoint's tokenizer: its own tokenizer.model,
    else the Nucleus tokenizer's (mistral-common's copy) when the vocabularies are identical."""
    own = folder / "tokenizer.model"
    if own.is_file():
        return own
    import sentencepiece as spm

    from nucleus.tokenizer import sentencepiece_path

    path = sentencepiece_path()
    sp = spm.SentencePieceProcessor(model_file=str(path))
    vocab = tokenizer.get_vocab()
    if len(vocab) != sp.get_piece_size() or any(vocab.get(sp.id_to_piece(i)) != i for i in range(sp.get_piece_size())):
        raise GGUFExportError(f"{folder} has no tokenizer.model and its vocabulary is not the Nucleus (Mistral "
                              "32k) one: GGUF export needs the SentencePiece model file of its tokenizer")
    return path


def _tokenizer_fields(writer, sp_path: Path, tokenizer) -> None:
    import sentencepiece as spm
    from gguf import TokenType

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL if sp.is_control(i) else
                     TokenType.BYTE if sp.is_byte(i) else TokenType.UNUSED if sp.is_unused(i) else TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)                   # Nucleus prompts start with <s>
    writer.add_add_eos_token(False)


def _tensor_names(n_layers: int) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(n_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def sliding_window_warning(cfg) -> str | None:
    """The warning a GGUF export of this config needs, or None. llama.cpp reads no sliding window
    for its "llama" architecture (llama_model::load_hparams reads `*.attention.sliding_window` in
    the cases of architectures built with one, llama4 among them, not in the "llama" case, whose
    KV cache then has no window), and its convert_hf_to_gguf.py writes none for
    MistralForCausalLM either. So a window shorter than the context (the 1.13B: 4096 of 32768)
    cannot be carried over: there is no key to write, only the difference to say."""
    window = getattr(cfg, "sliding_window", None)
    if not window or window >= cfg.max_position_embeddings:
        return None
    return (f"warning: this model's sliding window ({window} tokens) is shorter than its context "
            f"({cfg.max_position_embeddings}), and llama.cpp runs the GGUF's \"llama\" architecture without "
            f"one: beyond {window} tokens the GGUF model attends to the whole context while transformers "
            f"attends only to the last {window} tokens, so their outputs differ there.")


def _hyperparameters(writer, cfg, name: str, ftype) -> None:
    """The `llama.*` keys llama.cpp reads for a Mistral-shaped model."""
    import gguf

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(writer, model, kind: str, progress: bool) -> None:
    """Every weight under its llama.cpp name: q/k re-ordered for llama.cpp's RoPE, norms in f32,
    in q4_0 the embeddings and output layer in q8_0, the rest in `kind`."""
    import gguf
    from tqdm.auto import tqdm

    cfg = model.config
    qtype = _qtypes()[kind][0]
    names = _tensor_names(cfg.num_hidden_layers)
    state = model.state_dict()
    missing = set(names) - set(state)
    if missing:
        raise GGUFExportError(f"the model lacks {sorted(missing)[:3]}: not a Nucleus/Mistral checkpoint")
    for hf_name in tqdm(names, desc=f"GGUF {kind}", unit="tensor", disable=not progress):
        w = state[hf_name].detach().float()
        if hf_name.endswith("q_proj.weight"):
            w = rope_interleave(w, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            w = rope_interleave(w, cfg.num_key_value_heads)
        data = w.numpy()
        if w.ndim == 1:                                  # norms: f32 in every type
            writer.add_tensor(names[hf_name], data.astype(np.float32))
            continue
        t = gguf.GGMLQuantizationType.Q8_0 if kind == "q4_0" and hf_name in (
            "model.embed_tokens.weight", "lm_head.weight") else qtype
        writer.add_tensor(names[hf_name], gguf.quants.quantize(data, t), raw_dtype=t)


def write_gguf(model, tokenizer, folder: str | Path, out: str | Path, kind: str = "q8_0",
               name: str | None = None, progress: bool = True) -> Path:
    """Write `model` (a MistralForCausalLM) and its tokenizer as one GGUF file, atomically.
    What the GGUF cannot carry (a sliding window shorter than the context) is said on stderr."""
    import gguf

    if kind not in TYPES:
        raise GGUFExportError(f"GGUF type must be one of {', '.join(TYPES)}, got {kind!r}")
    cfg = model.config
    if cfg.model_type != "mistral":
        raise GGUFExportError(f"GGUF export knows the Mistral architecture (Nucleus); this model is {cfg.model_type!r}")
    if getattr(cfg, "tie_word_embeddings", False):
        raise GGUFExportError("GGUF export expects untied embeddings (Nucleus has a separate lm_head)")
    folder, out = Path(folder), Path(out)
    sp_path = sentencepiece_model(folder, tokenizer)
    if note := sliding_window_warning(cfg):
        print(note, file=sys.stderr)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")   # never a user's file
    os.close(fd)
    part = Path(part_name)
    writer = gguf.GGUFWriter(str(part), arch="llama")
    _hyperparameters(writer, cfg, name or folder.name, _qtypes()[kind][1])
    _tokenizer_fields(writer, sp_path, tokenizer)
    try:
        _add_tensors(writer, model, kind, progress)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(part, 0o666 & ~mask)       # mkstemp made it private; a finished export is an ordinary file
        os.replace(part, out)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    return out


def read_summary(path: str | Path) -> dict:
    """Metadata and tensor types of a GGUF file, as plain Python values (tests, the CLI's check)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    fields = {}
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            fields[key] = f.contents()
        except Exception:                          # noqa: BLE001 - a field type this gguf cannot decode
            fields[key] = None
    tensors = {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in r.tensors}
    return {"fields": fields, "tensors": tensors}


def main(argv=None) -> dict:
    """python -m train.gguf_file FILE [--full]: a GGUF file's metadata and tensor types, as JSON."""
    import argparse

    p = argparse.ArgumentParser(description="Show a GGUF file's metadata and tensor types (JSON).")
    p.add_argument("file", help="a .gguf file")
    p.add_argument("--full", action="store_true", help="print long lists (the vocabulary) in full")
    args = p.parse_args(argv)
    try:
        s = read_summary(args.file)
    except OSError as e:
        raise SystemExit(f"error: cannot read {args.file}: {e.strerror or e}") from None
    except Exception as e:             # noqa: BLE001 - "GGUF magic invalid", a truncated file's IndexError, ...
        raise SystemExit(f"error: {args.file} is not a GGUF file this reader understands "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'truncated?'})") from None
    if not args.full:
        s["fields"] = {k: (v if not isinstance(v, list) or len(v) < 8 else f"[{len(v)} items]")
                       for k, v in s["fields"].items()}
    print(json.dumps(s, indent=1, default=str))
    return s


if __name__ == "__main__":
    main()
