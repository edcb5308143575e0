"""Which model, on which device, in which dtype: the one loader behind the Space, CLI, tests,
benchmarks and training.

Resolution order for the served model: `--model` flag, else `NUCLEUS_MODEL`, else the Hub
model when the Hub answers within a short bound, else the bundled `models/nucleus-nano`.
Weights load from safetensors. A checkpoint that ships only PyTorch pickle files (`*.bin`) is
read with PyTorch's tensors-only unpickler (`weights_only=True`, which cannot run code) and a
safetensors copy is kept in a cache for the next start; a pickle that needs more than tensors is
refused. `trust_remote_code` is never set. Every failure a user can cause becomes one
`ModelLoadError` sentence, not a stack trace.

The checkpoint's own `generation_config.json` is not used as a default for sampling: every run
passes the user's complete settings, and nothing a checkpoint ships may override them.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from .architecture import count_params
from .backend import ModelLoadError
from .local import LoadedModel
from .pickles import PICKLE_INDEX, safetensors_copy
from .quantize import quantize_model, resolve_mode
from .tokenizer import load_tokenizer

log = logging.getLogger("nucleus")

DEFAULT_HUB_MODEL = "NucleusOrg/Nucleus-1B-alpha-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "models" / "nucleus-nano"
HUB_CHECK_SECONDS = 2.0       # how long start-up may wait to learn whether the Hub is reachable
CPU_BF16_MIN_PARAMS = 300e6   # on CPU, bf16 halves the bytes read per token; below this fp32 is as fast

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---- device and dtype -----------------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this PyTorch sees no CUDA GPU (a CPU-only build, or no GPU "
                                 "visible); use --device cpu or auto")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError(f"device {device!r}: Apple's MPS is not available here; use --device cpu or auto")
        return dev
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
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "Hub not reachable"
        return str(BUNDLED_MODEL), f"bundled offline default ({why})"
    raise ModelLoadError(
        "No model to serve: the Hugging Face Hub is not reachable and the bundled models/nucleus-nano "
        "is missing. Point Nucleus at a checkpoint folder with `--model PATH` or NUCLEUS_MODEL=PATH "
        "(a folder with config.json and *.safetensors, e.g. the output of train/export.py).")


def bundled_models() -> list[Path]:
    """The models that ship in the repository: the offline default first, then its siblings
    (models/nucleus-nano-stage1), each a folder with a config.json."""
    if not (BUNDLED_MODEL / "config.json").is_file():
        return []
    siblings = sorted(p for p in BUNDLED_MODEL.parent.iterdir() if p != BUNDLED_MODEL and (p / "config.json").is_file())
    return [BUNDLED_MODEL, *siblings]


# ---- loading --------------------------------------------------------------------------------
def is_hub_id(source: str) -> bool:
    """owner/name, unless it names a local path: `models/nucleus-nan0` (a typo under an existing
    folder) is a missing folder, not a Hub repository; nor is `models/nucleus-nano` outside the
    repository (see bundled_path)."""
    return bool(_HUB_ID.match(source)) and not Path(source.split("/")[0]).exists() and bundled_path(source) is None


def bundled_path(source: str) -> Path | None:
    """`models/<name>`, as the docs write the bundled models, from any working directory: the
    repository's own folder when the path is not there relative to the current one."""
    if not source.startswith("models/") or Path(source).exists():
        return None
    path = REPO_ROOT / source
    return path if (path / "config.json").is_file() else None


def _download(repo_id: str) -> Path:
    """Fetch config, tokenizer and safetensors only; never pickle weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    try:
        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]))
        if not list(path.glob("*.safetensors")):   # a pickle-only repository: its *.bin, read safely below
            path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "pytorch_model*.bin",
                                                                   "tokenizer.model"]))
        return path
    except GatedRepoError:
        raise ModelLoadError(f"{repo_id} is gated on the Hub: accept its terms and set HF_TOKEN.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private).") from None
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"Could not download {repo_id}: the Hugging Face Hub is not reachable and it is "
                             "not in the local cache. Give the path of a local model folder instead (--model PATH, "
                             "NUCLEUS_MODEL=PATH, or nucleus.load(PATH)).") from None
    except OSError as e:
        raise ModelLoadError(f"Could not download {repo_id} from the Hugging Face Hub: {e}") from None


def check_folder(path: Path) -> str:
    """Refuse missing and partial checkpoints before transformers sees them.
    Returns "safetensors", or "pickle" for a folder whose weights are only PyTorch *.bin files."""
    if path.is_file():
        raise ModelLoadError(f"{path} is a file, not a model folder (a folder with config.json and the weights).")
    if not path.is_dir():
        raise ModelLoadError(f"No model at {path}: that folder does not exist.")
    weights = sorted(path.glob("*.safetensors"))
    pickles = sorted(path.glob("*.bin"))
    if not (path / "config.json").is_file():
        if weights or pickles:
            raise ModelLoadError(f"{path} has weights ({(weights or pickles)[0].name}) but no config.json beside "
                                 "them; copy the checkpoint's config.json into the folder.")
        raise ModelLoadError(f"{path} is not a model folder: config.json is missing.")
    if not weights and not pickles:
        raise ModelLoadError(f"{path} holds no weights: no *.safetensors or *.bin file (partial or interrupted "
                             "download?).")
    for index_name in ("model.safetensors.index.json", PICKLE_INDEX):
        index = path / index_name
        if index.is_file() and (index_name != PICKLE_INDEX or not weights):
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                raise ModelLoadError(f"{path} is a partial checkpoint: shard {missing[0]} is missing.")
    return "safetensors" if weights else "pickle"


@dataclass
class _Plan:
    """What loading `source` means, decided from its folder and config alone (no weights read)."""
    path: Path          # the local folder (downloaded for a Hub id)
    files: str          # "safetensors" or "pickle"
    config: object
    device: torch.device
    n_params: int       # from the config (0 when not a Mistral)
    mode: str           # "int4", "int8" or "none"
    dtype: torch.dtype


def _plan(source: str, device: str, dtype: str | torch.dtype, quantize: str) -> _Plan:
    path = _download(source) if is_hub_id(source) else bundled_path(source) or Path(source).expanduser()
    files = check_folder(path)
    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path}/config.json is not a usable model config: {str(e).splitlines()[0]}") from None
    dev = pick_device(device)
    n = count_params(cfg) if cfg.model_type == "mistral" else 0
    try:
        mode = resolve_mode(quantize, dev, n)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
    named = str(dtype).removeprefix("torch.")
    if mode != "none" and named not in ("auto", "bfloat16", "bf16"):   # quantised layers compute in bf16
        if quantize == "auto":
            mode = "none"          # a dtype asked for by name wins over the automatic choice
        else:
            raise ModelLoadError(f"--quantize {mode} computes in bfloat16; drop --dtype {named}, or use "
                                 "--quantize none to keep that dtype")
    return _Plan(path, files, cfg, dev, n, mode, torch.bfloat16 if mode != "none" else pick_dtype(dtype, dev, n))


def load(source: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype = "auto",
         quantize: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer from a Hub id or a local folder, ready for generation.
    quantize: "auto" (on CPU, for models of >= 500M parameters, int4 or int8 weights, whichever
    kernel is faster on this machine), "int4", "int8" or "none"."""
    source = str(source)
    plan = _plan(source, device, dtype, quantize)
    path, cfg = plan.path, plan.config
    weights_path = path if plan.files == "safetensors" else safetensors_copy(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(weights_path, dtype=plan.dtype, use_safetensors=True,
                                                     trust_remote_code=False)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"Could not read the weights in {path} (corrupt or truncated file?): {reason}") from None
    n = sum(p.numel() for p in model.parameters())
    # Sampling defaults come from the user's settings alone: generate() fills every field a run
    # leaves unset from model.generation_config, so keep only the special token ids there.
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                               pad_token_id=getattr(cfg, "pad_token_id", None))
    if plan.mode != "none":
        quantize_model(model, plan.mode)
    model.to(plan.device).eval()
    return LoadedModel(model, load_tokenizer(path), source, path, plan.device, plan.dtype, n, plan.mode)


# ---- facts without loading the weights -------------------------------------------------------
def inspect(source: str | os.PathLike, device: str = "auto", dtype: str = "auto", quantize: str = "auto") -> dict:
    """What `load` would give (size, device, dtype, weights, context), read from the config alone."""
    plan = _plan(str(source), device, dtype, quantize)
    return {"path": str(plan.path), "parameters": plan.n_params, "device": str(plan.device),
            "dtype": str(plan.dtype).removeprefix("torch."), "weights": plan.mode, "files": plan.files,
            "context": int(getattr(plan.config, "max_position_embeddings", 0))}


