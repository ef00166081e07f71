"""The linear-time extractors return exactly what the reference regular expressions return."""
import re

from hypothesis import given, settings, strategies as st

from dllm_rl.tasks.extract import d1_last_answer_block, last_equation_line, tag_content

PIECES = st.sampled_from(["<think>", "</think>", "<THINK>", "<answer>", "</answer>", "<Answer>", " ", "\n",
                          "=", "a", "1", "\t", "</", ">", "\u2003"])
TEXT = st.lists(PIECES, max_size=30).map("".join)


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_tag_content_matches_agrpo_regex(text):
    for tag in ("think", "answer"):
        m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.DOTALL | re.IGNORECASE)
        assert tag_content(text, tag) == (m.group(1) if m else None)


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_last_equation_line_matches_agrpo_regex(text):
    matches = re.findall(r"([^=\n]+=.*)$", text, re.MULTILINE)
    assert last_equation_line(text) == (matches[-1] if matches else "")


@settings(max_examples=500, deadline=None)
@given(TEXT)
def test_d1_last_answer_block_matches_d1_regex(text):
    matches = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    assert d1_last_answer_block(text) == (matches[-1] if matches else None)
