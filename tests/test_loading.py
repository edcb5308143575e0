import os
import shutil
import time

import pytest
import torch

import nucleus
from nucleus import loading
from nucleus import ModelCatalog, ModelLoadError, load, resolve_model


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_loads_a_local_folder_with_its_facts(tiny_lm):
    assert tiny_lm.n_params == nucleus.architecture.count_params(tiny_lm.model.config)
    assert tiny_lm.device.type == "cpu" and tiny_lm.dtype == torch.float32
    assert tiny_lm.context_length == 512 and "on cpu" in tiny_lm.describe()
    assert not tiny_lm.model.training


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load(tmp_path)


def bin_checkpoint(tiny_dir, folder):
    """The tiny model as a pickle-only checkpoint: config, tokenizer and pytorch_model.bin."""
    from safetensors.torch import load_file
    d = copy_of(tiny_dir, folder)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


def test_pickle_only_checkpoint_loads_tensors_only_and_keeps_a_safetensors_copy(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEUS_CACHE", str(tmp_path / "cache"))
    d = bin_checkpoint(tiny_dir, tmp_path / "m")
    lm, ref = load(d, device="cpu"), load(tiny_dir, device="cpu")
    ids = torch.tensor([[1, 415, 2936, 9060]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, ref.model(ids).logits)
    copies = list((tmp_path / "cache" / "safetensors").glob("*/model.safetensors"))
    assert len(copies) == 1 and (copies[0].parent / "config.json").is_file()
    # the next start reads the copy, not the pickle
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the pickle was read again"))
    assert load(d, device="cpu").path == d


def test_a_pickle_that_would_run_code_is_refused(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NUCLEUS_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = bin_checkpoint(tiny_dir, tmp_path / "evil")
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "payload": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="Python objects besides tensors.*run arbitrary code"):
        load(d)
    assert not marker.exists()


def test_messages_for_odd_folders(tiny_dir, tmp_path, monkeypatch):
    only_bin = tmp_path / "only-bin"
    only_bin.mkdir()
    torch.save({"w": torch.zeros(1)}, only_bin / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="has weights \\(pytorch_model.bin\\) but no config.json"):
        load(only_bin)
    # a mistyped relative path under an existing folder is a missing folder, not a Hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="models/nucleus-nan0: that folder does not exist"):
        load("models/nucleus-nan0")


def test_partial_and_corrupt_checkpoints(tiny_dir, tmp_path):
    d = copy_of(tiny_dir, tmp_path / "partial")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        load(d)
    d = copy_of(tiny_dir, tmp_path / "sharded")
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00002-of-00002.safetensors"}}')
    with pytest.raises(ModelLoadError, match="shard model-00002-of-00002.safetensors is missing"):
        load(d)
    d = copy_of(tiny_dir, tmp_path / "corrupt")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])    # a download cut short
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load(d)


def test_unreachable_hub_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not reachable"):
        load("NucleusOrg/no-such-model-for-tests")


def test_resolution_order(monkeypatch, tiny_dir, tmp_path):
    monkeypatch.setenv("NUCLEUS_MODEL", "from-env")
    assert resolve_model("from-flag") == ("from-flag", "--model flag")
    assert resolve_model(None) == ("from-env", "NUCLEUS_MODEL")
    monkeypatch.delenv("NUCLEUS_MODEL")
    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    assert resolve_model(None)[0] == loading.DEFAULT_HUB_MODEL
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tiny_dir)
    assert resolve_model(None) == (str(tiny_dir), "bundled offline default (HF_HUB_OFFLINE is set)")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_model(None) == (str(tiny_dir), "bundled offline default (Hub not reachable)")
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="--model PATH"):
        resolve_model(None)


def test_offline_check_does_not_stall(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loading.hub_reachable.cache_clear()
    start = time.perf_counter()
    assert loading.hub_reachable() is False
    assert time.perf_counter() - start < 0.5
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # closed port: answered at once
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    loading.hub_reachable.cache_clear()
    start = time.perf_counter()
    assert loading.hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - start < 1.5
    loading.hub_reachable.cache_clear()


def test_catalog_lists_only_known_models(monkeypatch, tiny_dir, tmp_path):
    other = copy_of(tiny_dir, tmp_path / "other-model")
    monkeypatch.setenv("NUCLEUS_MODELS", str(other))
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tmp_path / "missing")
    cat = ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    assert cat.labels == [tiny_dir.name, "other-model"]
    assert cat.get("other-model").path == other
    with pytest.raises(ModelLoadError, match="model: unknown model '/etc'"):
        cat.get("/etc")
    assert isinstance(cat.get(tiny_dir.name), nucleus.LoadedModel)
    for wrong in ({"x": 1}, ["a"], [], 3, None):                  # the API's `model` can be any JSON
        with pytest.raises(ModelLoadError, match=f"model: expected one of the labels.*{type(wrong).__name__}"):
            cat.get(wrong)


def test_catalog_keeps_models_resident_and_evicts_the_least_recent(monkeypatch, tiny_dir, tmp_path):
    b, c = copy_of(tiny_dir, tmp_path / "b"), copy_of(tiny_dir, tmp_path / "c")
    monkeypatch.setenv("NUCLEUS_MODELS", os.pathsep.join([str(b), str(c)]))
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tmp_path / "missing")
    loads = []
    real_load = loading.load
    monkeypatch.setattr(loading, "load", lambda src, *a: loads.append(src) or real_load(src, *a))
    cat = ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False)
    a_label = tiny_dir.name
    for _ in range(3):                                            # two visitors alternating
        first, second = cat.get(a_label), cat.get("b")
        assert first.path == tiny_dir and second.path == b
    assert len(loads) == 2 and cat.resident == [a_label, "b"]   # each loaded once, both resident
    size = first.nbytes
    cat.budget = 2 * size                                         # room for two: a third evicts the oldest
    cat.get("c")
    assert cat.resident == ["b", "c"]
    cat.get(a_label)
    assert cat.resident == ["c", a_label] and len(loads) == 4


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert loading.pick_dtype("auto", cpu, 20_000_000) == torch.float32
    assert loading.pick_dtype("auto", cpu, 1_134_596_096) == torch.bfloat16
    assert loading.pick_dtype("bf16", cpu, 1) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        loading.pick_dtype("int3", cpu, 1)


def test_devices_files_and_listed_models_fail_in_one_sentence(tmp_path, tiny_dir, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="sees no CUDA GPU"):
            loading.pick_device("cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'gpu'"):
        loading.pick_device("gpu")
    f = tmp_path / "README.md"
    f.write_text("hi")
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        load(f)
    monkeypatch.setenv("NUCLEUS_MODELS", os.pathsep.join([str(tmp_path / "nope"), str(f), str(tiny_dir)]))
    monkeypatch.setattr(loading, "BUNDLED_MODEL", tmp_path / "missing")
    assert ModelCatalog(str(tiny_dir), device="cpu", probe_hub=False).labels == [tiny_dir.name]


def test_byte_pieces_read_as_their_characters():
    from nucleus.tokenview import piece_text
    assert piece_text("<0x0A>") == "\n" and piece_text("▁the") == " the" and piece_text("<0xE4>") == "<0xE4>"


def test_bundled_models_and_run_folders_are_named_so_they_can_be_told_apart(monkeypatch, tiny_dir, tmp_path):
    import shutil

    from nucleus.local import model_label

    assert model_label("runs/pretrain/final") == "pretrain/final" and model_label("runs/x/step-200") == "x/step-200"
    assert model_label("models/nucleus-nano") == "nucleus-nano" and model_label("NucleusOrg/Nucleus-1B-alpha-1") \
        == "Nucleus-1B-alpha-1"
    for run in ("pretrain", "finetune"):
        shutil.copytree(tiny_dir, tmp_path / run / "final")
    monkeypatch.setenv("NUCLEUS_MODELS", str(tmp_path / "finetune" / "final"))
    cat = ModelCatalog(str(tmp_path / "pretrain" / "final"), device="cpu", probe_hub=False)
    # the run's folder names it; the bundled models are offered without any variable
    assert cat.labels == ["pretrain/final", "nucleus-nano", "nucleus-nano-stage1", "finetune/final"]
    assert cat.get("finetune/final").name == "finetune/final"


def test_the_bundled_models_path_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                  # not the repository
    assert not loading.is_hub_id("models/nucleus-nano") and loading.is_hub_id("NucleusOrg/Nucleus-1B-alpha-1")
    assert nucleus.load("models/nucleus-nano", device="cpu").path == loading.BUNDLED_MODEL
