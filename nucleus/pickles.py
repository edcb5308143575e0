"""Checkpoints that ship only PyTorch pickle files (`*.bin`): read with PyTorch's tensors-only
unpickler (`weights_only=True`, which cannot run code) and kept as a safetensors copy in a cache
for the next start. A pickle that needs more than tensors is refused."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from .backend import ModelLoadError

PICKLE_INDEX = "pytorch_model.bin.index.json"
_SIDE_FILES = ("*.json", "tokenizer.model")   # copied beside a converted safetensors file


def cache_dir() -> Path:
    """Where safetensors copies of pickle-only checkpoints are kept (NUCLEUS_CACHE overrides)."""
    return Path(os.environ.get("NUCLEUS_CACHE") or Path.home() / ".cache" / "nucleus") / "safetensors"


def _read_pickle_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Tensors from a PyTorch pickle, read with the tensors-only unpickler: it cannot run code,
    and refuses a file that needs anything else."""
    try:
        try:
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            data = torch.load(file, map_location="cpu", weights_only=True)   # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise ModelLoadError(
            f"Refused {file}: it holds Python objects besides tensors{f' ({detail})' if detail else ''}, and "
            "unpickling those can run arbitrary code. Convert it to safetensors where you trust its origin: "
            "model.save_pretrained(folder, safe_serialization=True).") from None
    except Exception as e:
        raise ModelLoadError(f"Could not read {file} (corrupt or truncated file?): {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"Refused {file}: expected a dict of tensors (a state dict), got {type(data).__name__}.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def safetensors_copy(path: Path) -> Path:
    """A folder with the same config and tokenizer as `path` and its *.bin weights as one
    model.safetensors, made once and reused on the next start."""
    from safetensors.torch import save_file

    bins = sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.bin"))
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in bins)
    out = cache_dir() / hashlib.sha256(stamp.encode()).hexdigest()[:20]
    if (out / "model.safetensors").is_file():
        return out
    state: dict[str, torch.Tensor] = {}
    for f in bins:
        state.update(_read_pickle_tensors(f))
    if not state:
        raise ModelLoadError(f"{path}: its *.bin files hold no tensors.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".partial-"))
    try:   # written aside and renamed: an interrupted conversion never looks finished
        for pattern in _SIDE_FILES:
            for side in path.glob(pattern):
                if side.name != PICKLE_INDEX:
                    shutil.copy(side, tmp / side.name)
        # safetensors refuses tensors that share memory; clone those (untied models have none)
        seen: set[int] = set()
        for k, v in state.items():
            ptr = v.untyped_storage().data_ptr()
            state[k] = v.clone().contiguous() if ptr in seen else v.contiguous()
            seen.add(ptr)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (out / "model.safetensors").is_file():   # another process converted it first
            return out
        raise ModelLoadError(f"Could not write a safetensors copy of {path} under {out.parent}: {e}") from None
    return out
