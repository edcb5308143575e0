"""Export a trained model in Hugging Face format, with a model card, ready for nucleus.load.

    python -m train.export --checkpoint runs/pretrain/checkpoints/step-0001000 --out exports/my-nucleus
    python -m train.export --checkpoint ... --out ... --push-to-hub your-name/my-nucleus
    python -m train.export --checkpoint exports/my-nucleus --out my-nucleus-q4_0.gguf --gguf q4_0

The folder holds model.safetensors, config.json, generation_config.json (the recommended
sampling defaults), the tokenizer files and README.md (data, steps, tokens seen, held-out loss).
The training engine calls `export()` itself at the end of every run (OUTPUT_DIR/final).
With --gguf f16|bf16|q8_0|q4_0 the export is instead one GGUF file for llama.cpp, Ollama or
LM Studio (train/gguf_file.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from nucleus.settings import SamplingSettings

# The Nucleus card's recommendation: sample, with a repetition penalty of about 1.5.
RECOMMENDED = SamplingSettings(temperature=0.7, top_p=0.9, repetition_penalty=1.5, max_new_tokens=200)


def hardware(processes: int = 1) -> str:
    """The machine a run trains on, recorded at training time (the card must not describe the
    machine that happens to export it)."""
    if torch.cuda.is_available():
        return f"{processes} x {torch.cuda.get_device_name()}"
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return cpu if processes == 1 else f"{processes} processes x {cpu}"


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "not recorded"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def model_card(cfg, summary: dict) -> str:
    c = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
    val = summary.get("val_loss")
    ppl = f"{math.exp(val):.2f}" if val is not None else "not measured"
    data = summary.get("data") or {}
    # a Hub id is `name` or `owner/name`; a local folder may not exist on the exporting machine
    hub = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", c["dataset"]) and not Path(c["dataset"]).exists()
    hub_data = [c["dataset"]] if hub and c["dataset"] != "unknown" else []
    front = ["---", "license: mit", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [nucleus, mistral]"] + ([f"datasets: [{', '.join(hub_data)}]"] if hub_data else []) + ["---"]
    return "\n".join(front) + f"""

# {Path(c['output_dir']).name}

A Nucleus-family causal language model (Mistral architecture, Mistral's 32k tokenizer) trained
with the Nucleus training kit, stage **{c['stage']}**. It continues text; it is not a chat model.

| | |
| --- | --- |
| parameters | {_count(summary.get('n_params'))} |
| started from | {c['init'] if c['init'] != 'scratch' else f"random init ({c['size']})"} |
| data | `{c['dataset']}` (field `{c['text_field']}`): {_count(data.get('documents'))} documents, {_count(data.get('tokens'))} tokens |
| sequence length | {c['seq_len']} |
| optimizer steps | {summary.get('steps')} |
| tokens seen | {_count(summary.get('tokens_seen'))} |
| held-out loss | {f"{val:.4f}" if val is not None else "not measured"} (perplexity {ppl}) |
| hardware | {summary.get('hardware') or 'not recorded'} |
| training time | {_duration(summary.get('seconds') or 0)} |

Recommended sampling (in `generation_config.json`): temperature {RECOMMENDED.temperature},
top-p {RECOMMENDED.top_p}, repetition penalty {RECOMMENDED.repetition_penalty}.

```bash
python app.py --model PATH_TO_THIS_FOLDER          # the Nucleus Space
python -m nucleus generate --model PATH_TO_THIS_FOLDER --preset recipe
```
"""


@contextmanager
def atomic_folder(final: str | Path):
    """Yield a fresh hidden folder beside `final` to write into; on success it replaces `final` in
    one rename, so a crash mid-write never leaves a half-written export or checkpoint. The staging
    and backup folders get unique names (tempfile), so no folder of the user's is ever touched but
    `final` itself. Used by export and checkpoints."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
    except BaseException:                  # a failed write leaves nothing behind, and `final` untouched
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old)             # onto the new, empty folder: a rename, POSIX allows it
    ordinary_permissions(tmp)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ordinary_permissions(folder: Path) -> None:
    """What a plain mkdir and open would have given under the user's umask (rwxr-xr-x folders,
    rw-r--r-- files with the usual 022): tempfile.mkdtemp makes its folder 0700, and the files in it
    would stay readable to their owner alone after the rename."""
    mask = os.umask(0)
    os.umask(mask)
    for path in (folder, *folder.rglob("*")):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


class ExportError(ValueError):
    """An export that cannot be written as asked: one sentence for the user."""


# What an export writes: a folder holding only these is an earlier export, which may be replaced.
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "chat_template.jinja", "README.md", "training_summary.json", "train_config.json"}


def check_out(out: str | Path, gguf: bool = False, checkpoint: str | Path | None = None,
              overwrite: bool = True) -> Path:
    """Refuse an output path whose writing would destroy something that is not an export:
    - a Hugging Face export replaces its folder as a whole, so that folder must be new, empty, or an
      earlier export (only files an export writes, config.json among them), and neither the
      checkpoint being exported nor inside it (nor holding it);
    - a GGUF export writes one file: not over a folder, nor over a file that is not a GGUF.
    overwrite=False (the command line without --overwrite) also refuses to replace an earlier
    export, as training refuses a previous run."""
    out = Path(out)
    if gguf:
        if out.is_dir():
            raise ExportError(f"{out} is a folder; --gguf writes one file: give a file name such as "
                              f"{out / 'model.gguf'}")
        if out.is_file() and out.stat().st_size and out.open("rb").read(4) != b"GGUF":
            raise ExportError(f"{out} exists and is not a GGUF file; choose another file name")
        if out.is_file() and not overwrite:
            raise ExportError(f"{out} holds another GGUF model; replace it with --overwrite, or choose another name")
        return out
    if out.is_file():
        raise ExportError(f"{out} is a file; a Hugging Face export is a folder (for one GGUF file, add --gguf TYPE)")
    if checkpoint is not None:
        src, dst = Path(checkpoint).resolve(), out.resolve()
        if dst == src or src in dst.parents or dst in src.parents:
            raise ExportError(f"{out} is the checkpoint folder {checkpoint}, inside it or holding it; export to a "
                              "folder of its own")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        foreign = sorted(n for n in names if n not in EXPORT_FILES and not n.startswith("model-"))
        if names and ("config.json" not in names or foreign):
            raise ExportError(f"{out} holds files an export does not write ({', '.join(foreign[:3]) or 'no config.json'}"
                              f"{', ...' if len(foreign) > 3 else ''}); the export replaces its folder as a whole, "
                              "so choose a new or empty folder")
        if names and not overwrite:
            raise ExportError(f"{out} holds another model; replace it with --overwrite, or choose another --out")
    return out


def export(model, tokenizer, out: str | Path, cfg, summary: dict) -> Path:
    """Write the HF-format folder atomically (replacing an earlier export there, nothing else)."""
    check_out(out)
    with atomic_folder(out) as tmp:
        model.config.use_cache = True                   # inference default, whatever training used
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        RECOMMENDED.to_generation_config(tokenizer.eos_token_id).save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(cfg, summary), encoding="utf-8")
        (tmp / "training_summary.json").write_text(json.dumps(
            {k: v for k, v in summary.items() if k != "losses"}, indent=1, default=str))
        (tmp / "train_config.json").write_text(json.dumps(
            cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg), indent=1))
    return Path(out)


def push(folder: str | Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=[
        "*.safetensors", "*.json", "README.md", "tokenizer.model"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a training checkpoint in Hugging Face format.")
    p.add_argument("--checkpoint", required=True, help="a checkpoints/step-N folder (or any model folder)")
    p.add_argument("--out", required=True, help="the folder to write (or, with --gguf, the file)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the export to this Hub repository")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights on disk; bfloat16 halves the size (the bundled nano is stored so)")
    p.add_argument("--gguf", default=None, choices=["f16", "bf16", "q8_0", "q4_0"],
                   help="write --out as one GGUF file of this type (llama.cpp, Ollama, LM Studio) "
                        "instead of a Hugging Face folder")
    args = p.parse_args(argv)
    if args.gguf and args.push_to_hub:
        p.error("--push-to-hub uploads a Hugging Face folder; export that, then the GGUF separately")
    if args.gguf and args.dtype != "float32":
        p.error("--dtype sets the Hugging Face export's weights; a GGUF's type is --gguf")
    return args


def main(argv=None) -> Path:
    """The command line: a wrong path or model gives one line on stderr (exit status 1), no traceback."""
    from nucleus.loading import ModelLoadError

    from .gguf_file import GGUFExportError

    args = parse_args(argv)
    try:
        return _export(args)
    except (ModelLoadError, ExportError, GGUFExportError) as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:   # e.g. an output folder that cannot be written
        raise SystemExit(f"error: cannot write {args.out}: {e.strerror or e}") from None


def _export(args) -> Path:
    from nucleus.loading import load

    ckpt = Path(args.checkpoint)
    check_out(args.out, gguf=bool(args.gguf), checkpoint=ckpt, overwrite=args.overwrite)
    if args.gguf:
        from .gguf_file import write_gguf

        lm = load(ckpt, device="cpu", dtype=torch.float32, quantize="none")
        out = write_gguf(lm.model, lm.tokenizer, lm.path, args.out, args.gguf)
        print(f"wrote {out} ({out.stat().st_size / 1e6:,.1f} MB, {args.gguf})")
        return out
    lm = load(ckpt, device="cpu", dtype=getattr(torch, args.dtype), quantize="none")
    # any model folder exports: what its files do not record, the card says is unknown
    cfg = {"stage": "unknown", "init": str(ckpt), "size": "unknown", "dataset": "unknown", "text_field": "text",
           "seq_len": lm.context_length}
    if (ckpt / "train_config.json").is_file():
        cfg.update(json.loads((ckpt / "train_config.json").read_text()))
    state = json.loads((ckpt / "trainer_state.json").read_text()) if (ckpt / "trainer_state.json").is_file() else {}
    cfg["output_dir"] = args.out
    summary = {"n_params": lm.n_params, "steps": state.get("step"), "tokens_seen": state.get("tokens_seen"),
               "val_loss": state.get("val_loss"), "seconds": state.get("elapsed_s", 0),
               "data": state.get("data"), "hardware": state.get("hardware")}
    if (ckpt / "training_summary.json").is_file():            # an engine export: its summary is complete
        summary = {**summary, **json.loads((ckpt / "training_summary.json").read_text())}
    out = export(lm.model, lm.tokenizer, args.out, cfg, summary)
    if args.push_to_hub:
        push(out, args.push_to_hub)
    print(f"exported to {out}")
    return out


if __name__ == "__main__":
    main()
