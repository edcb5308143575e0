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
import gc
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import socket
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from .architecture import count_params
from .quantize import quantize_model, resolve_mode
from .tokenizer import load_tokenizer

log = logging.getLogger("nucleus")

DEFAULT_HUB_MODEL = "NucleusOrg/Nucleus-1B-alpha-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "models" / "nucleus-nano"
HUB_CHECK_SECONDS = 2.0       # how long start-up may wait to learn whether the Hub is reachable
CPU_BF16_MIN_PARAMS = 300e6   # on CPU, bf16 halves the bytes read per token; below this fp32 is as fast

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_INDEX = "pytorch_model.bin.index.json"
_SIDE_FILES = ("*.json", "tokenizer.model")   # copied beside a converted safetensors file


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
    quantization: str = "none"   # "int8" / "int4": Linear weights stored so (nucleus/quantize.py)

    @property
    def name(self) -> str:
        return self.source.rstrip("/").split("/")[-1]

    @property
    def nbytes(self) -> int:
        """Memory held by the weights (parameters and buffers, quantised ones included)."""
        return sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))

    @property
    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def describe(self) -> str:
        weights = f"{self.quantization} weights, bfloat16 activations" if self.quantization != "none" else \
            str(self.dtype).removeprefix("torch.")
        return (f"{self.name}: {self.n_params / 1e6:,.1f}M parameters, {weights} "
                f"on {self.device.type}, context {self.context_length} tokens")


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


# ---- loading --------------------------------------------------------------------------------
def _is_hub_id(source: str) -> bool:
    """owner/name, unless it names a local path: `models/nucleus-nan0` (a typo under an existing
    folder) is a missing folder, not a Hub repository."""
    return bool(_HUB_ID.match(source)) and not Path(source.split("/")[0]).exists()


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
                             "not in the local cache. Use a local folder with --model PATH.") from None
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
    for index_name in ("model.safetensors.index.json", _PICKLE_INDEX):
        index = path / index_name
        if index.is_file() and (index_name != _PICKLE_INDEX or not weights):
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                raise ModelLoadError(f"{path} is a partial checkpoint: shard {missing[0]} is missing.")
    return "safetensors" if weights else "pickle"


# ---- pickle-only checkpoints ----------------------------------------------------------------
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
                if side.name != _PICKLE_INDEX:
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
    path = _download(source) if _is_hub_id(source) else Path(source).expanduser()
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


# ---- the models visitors may choose between -------------------------------------------------
def memory_budget() -> int:
    """Bytes of weights the catalog keeps resident: NUCLEUS_RESIDENT_GB, else half the machine's RAM."""
    if os.environ.get("NUCLEUS_RESIDENT_GB"):
        return int(float(os.environ["NUCLEUS_RESIDENT_GB"]) * 2**30)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class ModelCatalog:
    """A fixed list of models (never paths typed by a visitor), chosen per request.

    Loaded models stay resident, most recently used last, while their weights fit `budget`
    bytes; past that the least recently used ones are dropped (the one just loaded always
    stays). A model that is already loaded is never loaded again, and two requests for the same
    model wait for one load."""

    def __init__(self, initial: str, device: str = "auto", dtype: str = "auto", probe_hub: bool = True,
                 quantize: str = "auto", budget: int | None = None):
        self.device, self.dtype, self.quantize = device, dtype, quantize
        self.budget = memory_budget() if budget is None else budget
        self.choices: dict[str, str] = {}   # label shown in the UI -> source
        self._add(initial)
        if (BUNDLED_MODEL / "config.json").is_file():
            self._add(str(BUNDLED_MODEL))
        if probe_hub and hub_reachable():
            self._add(DEFAULT_HUB_MODEL)
        for folder in filter(None, os.environ.get("NUCLEUS_MODELS", "").split(os.pathsep)):
            if _is_hub_id(folder) or (Path(folder).expanduser() / "config.json").is_file():
                self._add(folder)
            else:   # listed, it would fail only when a visitor picks it
                log.warning("NUCLEUS_MODELS: left out %s, which is neither a model folder nor a Hub id", folder)
        self._lock = threading.Lock()                       # guards the two dicts below
        self._resident: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}       # label -> held while it loads

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

    @property
    def resident(self) -> list[str]:
        """Labels of the loaded models, least recently used first."""
        with self._lock:
            return list(self._resident)

    def check(self, label) -> str:
        """`label` if it names a model of this catalog, else a ModelLoadError naming the choices."""
        if not isinstance(label, str):
            raise ModelLoadError(f"model: expected one of the labels {self.labels} (text), "
                                 f"got {type(label).__name__} {label!r}")
        if label not in self.choices:
            raise ModelLoadError(f"model: unknown model {label!r}; available: {', '.join(self.choices)}")
        return label

    def get(self, label) -> LoadedModel:
        label = self.check(label)
        with self._lock:
            if label in self._resident:
                self._resident.move_to_end(label)
                return self._resident[label]
            loading = self._loading.setdefault(label, threading.Lock())
        with loading:
            with self._lock:
                if label in self._resident:       # loaded by the request we waited for
                    self._resident.move_to_end(label)
                    return self._resident[label]
            log.info("loading model %s from %s", label, self.choices[label])
            lm = load(self.choices[label], self.device, self.dtype, self.quantize)
            with self._lock:
                self._resident[label] = lm
                while len(self._resident) > 1 and sum(m.nbytes for m in self._resident.values()) > self.budget:
                    self._resident.popitem(last=False)   # a run still using it keeps it alive until done
            gc.collect()
            return lm
