"""Which model, on which device, in which dtype: the one loader behind the Space, CLI, tests,
benchmarks and training.

Resolution order for the served model: `--model` flag, else `NUCLEUS_MODEL`, else the Hub
model when the Hub answers within a short bound, else the bundled `models/nucleus-nano`.
Weights load from safetensors only (pickle files can run code); `trust_remote_code` is never
set. Every failure a user can cause becomes one `ModelLoadError` sentence, not a stack trace.
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from .architecture import count_params
from .quantize import quantize_int8, resolve_mode
from .tokenizer import load_tokenizer

DEFAULT_HUB_MODEL = "NucleusOrg/Nucleus-1B-alpha-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "models" / "nucleus-nano"
HUB_CHECK_SECONDS = 2.0       # how long start-up may wait to learn whether the Hub is reachable
CPU_BF16_MIN_PARAMS = 300e6   # on CPU, bf16 halves the bytes read per token; below this fp32 is as fast

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


class ModelLoadError(RuntimeError):
    """One sentence a user can act on."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str            # what was asked for: a Hub id or a folder
    path: Path             # the local folder the weights came from
    device: torch.device
    dtype: torch.dtype
    n_params: int
    quantization: str = "none"   # "int8": Linear weights stored as int8 (nucleus/quantize.py)

    @property
    def name(self) -> str:
        return self.source.rstrip("/").split("/")[-1]

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def describe(self) -> str:
        weights = "int8 weights, bfloat16 activations" if self.quantization == "int8" else \
            str(self.dtype).removeprefix("torch.")
        return (f"{self.name}: {self.n_params / 1e6:,.1f}M parameters, {weights} "
                f"on {self.device.type}, context {self.context_length} tokens")


# ---- device and dtype -----------------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype, device: torch.device, n_params: int) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    # CPU decode is bound by reading the weights: bf16 pays off for big models (2.7 -> 4.0 tok/s
    # for the 1.13B on 2 cores, shared/baselines), small ones are compute-bound and fp32 is simpler.
    return torch.bfloat16 if n_params >= CPU_BF16_MIN_PARAMS else torch.float32


# ---- which model ----------------------------------------------------------------------------
def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = HUB_CHECK_SECONDS) -> bool:
    """True if the Hub endpoint accepts a TCP connection within `timeout` seconds.
    DNS lookups can hang far longer than any socket timeout on a closed network, so the
    whole check runs in a daemon thread that we stop waiting for."""
    if hub_offline():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    ok = threading.Event()

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return ok.is_set()


def resolve_model(flag: str | None = None) -> tuple[str, str]:
    """(model id or folder, why it was chosen)."""
    if flag:
        return flag, "--model flag"
    if os.environ.get("NUCLEUS_MODEL"):
        return os.environ["NUCLEUS_MODEL"], "NUCLEUS_MODEL"
    if hub_reachable():
        return DEFAULT_HUB_MODEL, "Hugging Face Hub"
    if (BUNDLED_MODEL / "config.json").is_file():
        return str(BUNDLED_MODEL), "bundled offline default (Hub not reachable)"
    raise ModelLoadError(
        "No model to serve: the Hugging Face Hub is not reachable and the bundled models/nucleus-nano "
        "is missing. Point Nucleus at a checkpoint folder with `--model PATH` or NUCLEUS_MODEL=PATH "
        "(a folder with config.json and *.safetensors, e.g. the output of train/export.py).")


# ---- loading --------------------------------------------------------------------------------
def _is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def _download(repo_id: str) -> Path:
    """Fetch config, tokenizer and safetensors only; never pickle weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
    except GatedRepoError:
        raise ModelLoadError(f"{repo_id} is gated on the Hub: accept its terms and set HF_TOKEN.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private).") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"Could not download {repo_id}: the Hugging Face Hub is not reachable and it is "
                             "not in the local cache. Use a local folder with --model PATH.") from None
    except OSError as e:
        raise ModelLoadError(f"Could not download {repo_id} from the Hugging Face Hub: {e}") from None


def check_folder(path: Path) -> None:
    """Refuse missing, partial and pickle-only checkpoints before transformers sees them."""
    if not path.is_dir():
        raise ModelLoadError(f"No model at {path}: that folder does not exist.")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model folder: config.json is missing.")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if any((path / name).exists() for name in _PICKLE_WEIGHTS) or list(path.glob("*.bin")):
            raise ModelLoadError(
                f"{path} has only PyTorch pickle weights (*.bin); Nucleus loads safetensors only because "
                "pickle files can run arbitrary code. Re-save it with "
                "model.save_pretrained(folder, safe_serialization=True).")
        raise ModelLoadError(f"{path} holds no weights: no *.safetensors file (partial or interrupted download?).")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelLoadError(f"{path} is a partial checkpoint: shard {missing[0]} is missing.")


def load(source: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "auto",
         quantize: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer from a Hub id or a local folder, ready for generation.
    quantize: "auto" (int8 weights on CPU for models of >= 500M parameters), "int8" or "none"."""
    source = str(source)
    path = _download(source) if _is_hub_id(source) else Path(source).expanduser()
    check_folder(path)
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}/config.json is not a usable model config: {str(e).splitlines()[0]}") from None
    dev = pick_device(device)
    n_cfg = count_params(cfg) if cfg.model_type == "mistral" else 0
    try:
        mode = resolve_mode(quantize, dev, n_cfg)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    dt = torch.bfloat16 if mode == "int8" else pick_dtype(dtype, dev, n_cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, use_safetensors=True,
                                                     trust_remote_code=False)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"Could not read the weights in {path} (corrupt or truncated file?): {reason}") from None
    n = sum(p.numel() for p in model.parameters())
    if mode == "int8":
        quantize_int8(model)
    model.to(dev).eval()
    return LoadedModel(model, load_tokenizer(path), source, path, dev, dt, n, mode)


# ---- the models a visitor may switch between -------------------------------------------------
class ModelCatalog:
    """A fixed list of models (never paths typed by a visitor) and the one currently loaded.
    Only one model stays in memory: a free CPU Space has 16 GB."""

    def __init__(self, initial: str, device: str = "auto", dtype: str = "auto", probe_hub: bool = True,
                 quantize: str = "auto"):
        self.device, self.dtype, self.quantize = device, dtype, quantize
        self.choices: dict[str, str] = {}   # label shown in the UI -> source
        self._add(initial)
        if (BUNDLED_MODEL / "config.json").is_file():
            self._add(str(BUNDLED_MODEL))
        if probe_hub and hub_reachable():
            self._add(DEFAULT_HUB_MODEL)
        for folder in filter(None, os.environ.get("NUCLEUS_MODELS", "").split(os.pathsep)):
            self._add(folder)
        self._lock = threading.Lock()
        self._loaded: tuple[str, LoadedModel] | None = None

    def _add(self, source: str) -> None:
        src = str(source)
        if src in self.choices.values():
            return
        label = src.rstrip("/").split("/")[-1]
        if label in self.choices:
            label = src
        self.choices[label] = src

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    def get(self, label: str) -> LoadedModel:
        if label not in self.choices:
            raise ModelLoadError(f"unknown model {label!r}; available: {', '.join(self.choices)}")
        with self._lock:
            if self._loaded and self._loaded[0] == label:
                return self._loaded[1]
            self._loaded = None   # drop the old model before loading the next one
            loaded = load(self.choices[label], self.device, self.dtype, self.quantize)
            self._loaded = (label, loaded)
            return loaded
