import pytest

from nucleus import architecture as A


def test_nucleus_1b_has_exactly_the_published_parameter_count():
    cfg = A.config("nucleus-1b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (4096, 4, 32, 8, 14336, 32000)
    assert cfg.tie_word_embeddings is False
    assert cfg.sliding_window == 4096 and cfg.rope_parameters["rope_theta"] == 10000.0
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    model = A.build("nucleus-1b", device="meta")          # shape only, no memory
    assert sum(p.numel() for p in model.parameters()) == A.NUCLEUS_1B_PARAMS == 1_134_596_096


def test_family_members_keep_the_proportions():
    for name in ("nano", "tiny"):
        cfg = A.config(name)
        assert cfg.intermediate_size == int(3.5 * cfg.hidden_size)
        assert cfg.num_attention_heads == 4 * cfg.num_key_value_heads
        assert cfg.vocab_size == 32000 and not cfg.tie_word_embeddings
    assert A.count_params(A.config("nano")) <= 30_000_000


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Nucleus size 'huge'"):
        A.config("huge")
