"""The models a Space offers: a fixed list chosen at start-up (never paths typed by a visitor),
loaded on first use and kept while they fit a memory budget; or, in front of an inference engine,
the one model it serves."""
from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from . import loading
from .backend import Backend, ModelLoadError
from .local import LoadedModel, model_label

log = logging.getLogger("nucleus")


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
        for folder in loading.bundled_models():     # the offline default and its stage-1 model
            self._add(str(folder))
        if probe_hub and loading.hub_reachable():
            self._add(loading.DEFAULT_HUB_MODEL)
        for folder in filter(None, os.environ.get("NUCLEUS_MODELS", "").split(os.pathsep)):
            if loading.is_hub_id(folder) or (Path(folder).expanduser() / "config.json").is_file():
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
        label = model_label(src)
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
            pending = self._loading.setdefault(label, threading.Lock())
        with pending:
            with self._lock:
                if label in self._resident:       # loaded by the request we waited for
                    self._resident.move_to_end(label)
                    return self._resident[label]
            log.info("loading model %s from %s", label, self.choices[label])
            lm = loading.load(self.choices[label], self.device, self.dtype, self.quantize)
            with self._lock:
                self._resident[label] = lm
                while len(self._resident) > 1 and sum(m.nbytes for m in self._resident.values()) > self.budget:
                    self._resident.popitem(last=False)   # a run still using it keeps it alive until done
            gc.collect()
            return lm


class RemoteCatalog:
    """The catalog of a Space whose model runs in a remote engine: one model, nothing to load."""

    def __init__(self, remote: Backend):
        self.remote = remote
        self.choices = {remote.name: f"{remote.base_url} ({remote.model_id})"}

    @property
    def labels(self) -> list[str]:
        return list(self.choices)

    def check(self, label) -> str:
        if not isinstance(label, str) or label not in self.choices:
            raise ModelLoadError(f"model: expected one of the labels {self.labels} (text), got "
                                 f"{type(label).__name__} {label!r}")
        return label

    def get(self, label) -> Backend:
        self.check(label)
        return self.remote
