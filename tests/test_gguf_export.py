"""GGUF export (train/gguf_file.py) of the bundled nano, read back with the `gguf` package: no
llama.cpp build needed. bench/serve_speed.py runs the F16 file in llama.cpp and compares its greedy
text with transformers'."""
import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from nucleus import loading
from nucleus.tokenizer import sentencepiece_path
from train import export
from train.gguf_file import GGUFExportError, read_summary, sliding_window_warning, write_gguf

NANO = loading.BUNDLED_MODEL


@pytest.fixture(scope="module")
def hf_weights():
    return {k: v.float() for k, v in load_file(NANO / "model.safetensors").items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    made = {}
    for kind in ("f16", "bf16", "q8_0", "q4_0"):
        made[kind] = export.main(["--checkpoint", str(NANO), "--out", str(out / f"nano-{kind}.gguf"), "--gguf", kind])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"nano-{k}.gguf" for k in made)   # no .part left
    assert all(p.stat().st_mode & 0o044 for p in made.values())    # readable like any file, not private
    return made


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def as_float(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0])).astype(np.float32)


def test_metadata_describes_the_nano_as_llama_cpp_expects(files):
    f = read_summary(files["q4_0"])["fields"]
    assert f["general.architecture"] == "llama" and f["general.name"] == "nucleus-nano"
    expected = {"llama.block_count": 4, "llama.embedding_length": 256, "llama.feed_forward_length": 896,
                "llama.attention.head_count": 8, "llama.attention.head_count_kv": 2, "llama.context_length": 512,
                "llama.rope.dimension_count": 32, "llama.attention.key_length": 32, "llama.vocab_size": 32000,
                "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q4_0),
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.model": "llama"}
    assert {k: f[k] for k in expected} == expected
    assert f["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert f["tokenizer.ggml.add_bos_token"] is True


def test_vocabulary_carries_the_sentencepiece_scores_and_types(files):
    f = read_summary(files["f16"])["fields"]
    sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_path()))
    tokens, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(scores) == len(types) == 32000
    for i in (0, 1, 2, 3, 258, 259, 1014, 28705, 31999):
        assert tokens[i] == sp.id_to_piece(i)
        assert scores[i] == pytest.approx(sp.get_score(i))
    assert tokens[1] == "<s>" and types[1] == gguf.TokenType.CONTROL and types[3] == gguf.TokenType.BYTE
    assert types[1014] == gguf.TokenType.NORMAL
    assert len(set(scores[259:])) > 1000              # real merge scores, not one placeholder value


def test_every_weight_is_there_with_the_type_asked_for(files):
    names = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(4) for n in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                           "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    for kind, main_type in (("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        t = read_summary(files[kind])["tensors"]
        assert set(t) == names
        assert t["blk.0.attn_norm.weight"][0] == "F32" and t["output_norm.weight"][0] == "F32"
        assert t["blk.2.ffn_down.weight"] == (main_type, [896, 256])        # GGUF lists (columns, rows)
        assert t["blk.0.attn_k.weight"] == (main_type, [256, 64])
        edge = "Q8_0" if kind == "q4_0" else main_type                       # q4_0 keeps these at 8 bits
        assert t["output.weight"][0] == edge and t["token_embd.weight"][0] == edge


def test_weights_read_back_equal_the_checkpoint_and_q_k_are_pair_ordered(files, hf_weights):
    t = tensors(files["f16"])
    np.testing.assert_allclose(as_float(t["blk.1.ffn_up.weight"]), hf_weights["model.layers.1.mlp.up_proj.weight"].numpy(),
                               rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(as_float(t["output.weight"]), hf_weights["lm_head.weight"].numpy(), rtol=1e-3, atol=1e-6)
    # llama.cpp rotates adjacent pairs: in each head, rows (2i, 2i+1) must be transformers' rows (i, i + d/2)
    d = 32
    for name, n_heads in (("attn_q", 8), ("attn_k", 2)):
        got = as_float(t[f"blk.3.{name}.weight"])
        hf = hf_weights[f"model.layers.3.self_attn.{name[-1]}_proj.weight"].numpy()
        for h in range(n_heads):
            for i in range(d // 2):
                np.testing.assert_allclose(got[h * d + 2 * i], hf[h * d + i], rtol=1e-3, atol=1e-6)
                np.testing.assert_allclose(got[h * d + 2 * i + 1], hf[h * d + d // 2 + i], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind,bound", [("q8_0", 0.01), ("q4_0", 0.12)])
def test_quantised_weights_stay_close(files, hf_weights, kind, bound):
    t = tensors(files[kind])
    ref = hf_weights["model.layers.0.mlp.gate_proj.weight"].numpy()
    got = as_float(t["blk.0.ffn_gate.weight"])
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 0 < err < bound


def test_a_window_shorter_than_the_context_is_warned_about(tmp_path, capsys):
    """llama.cpp's "llama" architecture reads no sliding window, so a model whose window is shorter
    than its context (the 1.13B: 4096 of 32768) is exported as it is, with one sentence on stderr
    saying that the GGUF attends to the whole context beyond the window; a model whose window
    covers its context (the nano) exports silently."""
    from nucleus import architecture
    from nucleus.tokenizer import load_tokenizer

    folder = tmp_path / "windowed"
    architecture.build(architecture.config("tiny", sliding_window=64), seed=0).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    out = export.main(["--checkpoint", str(folder), "--out", str(tmp_path / "windowed.gguf"), "--gguf", "f16"])
    err = capsys.readouterr().err
    assert "sliding window (64 tokens) is shorter than its context (512)" in err
    assert "beyond 64 tokens the GGUF model attends to the whole context" in err
    f = read_summary(out)["fields"]
    assert f["llama.context_length"] == 512 and not any("sliding_window" in k for k in f)   # no key llama.cpp ignores
    assert "(4096 tokens) is shorter than its context (32768)" in sliding_window_warning(architecture.config("nucleus-1b"))
    assert sliding_window_warning(architecture.config("nano")) is None
    assert sliding_window_warning(architecture.config("tiny", sliding_window=None)) is None   # no window at all
    export.main(["--checkpoint", str(NANO), "--out", str(tmp_path / "nano.gguf"), "--gguf", "q8_0"])
    assert "sliding window" not in capsys.readouterr().err


def test_refuses_what_it_cannot_write(tmp_path, tiny_lm):
    with pytest.raises(GGUFExportError, match="GGUF type"):
        write_gguf(tiny_lm.model, tiny_lm.tokenizer, tiny_lm.path, tmp_path / "x.gguf", "q2_k")
    with pytest.raises(SystemExit):
        export.parse_args(["--checkpoint", "x", "--out", "y.gguf", "--gguf", "q4_0", "--push-to-hub", "me/x"])
    tied = type(tiny_lm.model.config)(**{**tiny_lm.model.config.to_dict(), "tie_word_embeddings": True})
    model = torch.nn.Module()
    model.config = tied
    with pytest.raises(GGUFExportError, match="untied"):
        write_gguf(model, tiny_lm.tokenizer, tiny_lm.path, tmp_path / "y.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_export_never_replaces_what_is_not_an_export(tmp_path):
    """A Hugging Face export replaces its folder as a whole: a folder of other files, or a file, is
    refused with one line and left as it was (before, `--out ~/thesis` deleted the folder)."""
    precious = tmp_path / "thesis"
    (precious / "chapter").mkdir(parents=True)
    (precious / "chapter" / "1.txt").write_text("precious")
    gguf_file = tmp_path / "nano.gguf"
    gguf_file.write_bytes(b"GGUF...")
    for out, extra, says in ((precious, [], "holds files an export does not write (chapter)"), (gguf_file, [], "is a file"),
                             (precious, ["--gguf", "f16"], "is a folder; --gguf writes one file")):
        with pytest.raises(SystemExit) as e:
            export.main(["--checkpoint", str(NANO), "--out", str(out), *extra])
        assert says in str(e.value) and str(e.value).startswith("error: ")
    assert (precious / "chapter" / "1.txt").read_text() == "precious" and gguf_file.read_bytes() == b"GGUF..."
    with pytest.raises(SystemExit) as e:                        # not a model: one line, no traceback
        export.main(["--checkpoint", str(tmp_path / "chapter-less"), "--out", str(tmp_path / "o")])
    assert "error: " in str(e.value) and not (tmp_path / "o").exists()
    # an earlier export (only files an export writes) is replaced when told --overwrite; folders
    # named like its staging and backup folders are not the export's to delete
    for sibling in ("exp.tmp", "exp.old"):
        (tmp_path / sibling).mkdir()
        (tmp_path / sibling / "mine.txt").write_text("mine")
    first = export.main(["--checkpoint", str(NANO), "--out", str(tmp_path / "exp"), "--dtype", "bfloat16"])
    assert export.main(["--checkpoint", str(NANO), "--out", str(first), "--dtype", "bfloat16", "--overwrite"]) == first
    assert (first / "config.json").is_file()
    assert all((tmp_path / s / "mine.txt").read_text() == "mine" for s in ("exp.tmp", "exp.old"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]          # no staging left behind
    # a folder with config.json and other files is not an export; nor is the checkpoint itself
    (first / "data.csv").write_text("1,2")
    for out, says in ((first, "holds files an export does not write (data.csv)"), (NANO, "checkpoint folder"),
                      (NANO / "sub", "checkpoint folder")):
        with pytest.raises(SystemExit) as e:
            export.main(["--checkpoint", str(NANO), "--out", str(out)])
        assert says in str(e.value)
    assert (first / "data.csv").is_file()
    # --gguf over a file that is not a GGUF (here the checkpoint's own weights) is refused
    weights = first / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(SystemExit) as e:
        export.main(["--checkpoint", str(first), "--out", str(weights), "--gguf", "q8_0"])
    assert "is not a GGUF file" in str(e.value) and weights.read_bytes() == before


def test_gguf_file_command_prints_a_summary_or_one_line(files, tmp_path, capsys):
    from train import gguf_file

    s = gguf_file.main([str(files["q8_0"])])
    assert s["fields"]["tokenizer.ggml.tokens"] == "[32000 items]" and "output.weight" in s["tensors"]
    assert '"general.architecture": "llama"' in capsys.readouterr().out
    bad = tmp_path / "x.gguf"
    bad.write_text("not gguf")
    cut = tmp_path / "cut.gguf"                               # a truncated file: the reader's IndexError
    cut.write_bytes(files["q4_0"].read_bytes()[:1000])
    for path in (bad, cut, tmp_path / "missing.gguf"):
        with pytest.raises(SystemExit) as e:
            gguf_file.main([str(path)])
        assert str(e.value).startswith("error: ")
