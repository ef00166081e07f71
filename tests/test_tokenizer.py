"""Tokenizer: the real LLaDA chat template, left padding, the tiny character tokenizer, errors."""
import json
import shutil

import numpy as np
import pytest

from dllm_rl.assets import LLADA_8B_META_DIR
from dllm_rl.tokenizer import LLADA_CHAT_TEMPLATE, Tokenizer, TokenizerError, build_char_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer_dir):
    return Tokenizer.from_dir(tiny_tokenizer_dir)


def test_real_chat_template_renders_as_spec(fixtures_dir, tiny_tokenizer_dir, tmp_path):
    """The real tokenizer_config.json of LLaDA-8B-Instruct, rendered through our loader (LLADA.md §4)."""
    real = json.loads((LLADA_8B_META_DIR / "tokenizer_config.json").read_text())
    assert real["chat_template"] == LLADA_CHAT_TEMPLATE
    # tokenizer.json of the 8B model is not available offline: pair the real config with a vocabulary holding
    # the same special tokens, so the config's own special-token fields drive the rendering.
    shutil.copy(tiny_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {k: real[k] for k in ("chat_template", "bos_token", "eos_token", "pad_token")}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.apply_chat_template([{"role": "user", "content": "Q"}]) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    two = tok.apply_chat_template([{"role": "system", "content": " S \n"}, {"role": "user", "content": "U"}])
    assert two == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_special_ids_and_round_trip(tiny):
    assert (tiny.eos_token_id, tiny.pad_token_id, tiny.mask_token_id, tiny.vocab_size) == (150, 150, 156, 160)
    text = "Natalia sold 48 clips.\nAnswer: 72"
    ids = tiny.encode(text)
    assert len(ids) == len(text) and max(ids) < 150
    assert tiny.decode(ids) == text
    prompt = tiny.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tiny.encode(prompt)[0] == tiny.bos_token_id
    assert tiny.decode(tiny.encode(prompt) + [150, 150]) == "user\n\nhiassistant\n\n"  # specials skipped


def test_batch_encode_left_pads(tiny):
    ids, mask = tiny.batch_encode(["ab", "abcd"])
    assert ids.dtype == np.int32 and ids.shape == (2, 4)
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ids[0, :2], [150, 150])
    assert tiny.batch_encode(["ab"], max_length=5)[0].shape == (1, 5)
    with pytest.raises(TokenizerError, match="max_length"):
        tiny.batch_encode(["abcdef"], max_length=3)


def test_batch_encode_keep_last_truncates_from_the_left(tiny):
    ids, mask = tiny.batch_encode(["abcdef", "xy"], keep_last=3)
    np.testing.assert_array_equal(ids, [tiny.encode("def"), [150] + tiny.encode("xy")])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 1, 1]])


def test_committed_tiny_tokenizer_is_what_the_builder_writes(tiny_tokenizer_dir, tmp_path):
    build_char_tokenizer(tmp_path, vocab_size=160, eos_token_id=150, mask_token_id=156)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / f).read_text()) == json.loads((tiny_tokenizer_dir / f).read_text())


def test_errors_name_the_file(tmp_path, tiny_tokenizer_dir):
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    shutil.copy(tiny_tokenizer_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(TokenizerError, match="<nope>"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with pytest.raises(TokenizerError, match="no chat_template"):
        Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|mdm_mask|>"}))
    with pytest.raises(TokenizerError, match="mask token"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="vocab_size"):
        build_char_tokenizer(tmp_path / "x", vocab_size=50, eos_token_id=40, mask_token_id=45)
