"""Prompts of every task and style render through the chat template, with the style's reasoning tag."""
import pytest

from dllm_rl.tasks import get_task, render_prompt
from dllm_rl.tokenizer import Tokenizer


@pytest.mark.parametrize("task,split", [("gsm8k", "test"), ("math", "test"), ("countdown", "test"), ("sudoku", "test")])
@pytest.mark.parametrize("style", ["agrpo", "d1"])
def test_prompts_render_through_the_chat_template(task, split, style, tiny_tokenizer_dir):
    example = get_task(task).load(split)[0]
    messages = get_task(task).prompt(example, style=style)
    assert [m["role"] for m in messages] == (["system", "user"] if style == "agrpo" else ["user"])
    text = render_prompt(Tokenizer.from_dir(tiny_tokenizer_dir), messages)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    tag = "<think>" if style == "agrpo" else "<reasoning>"
    assert tag in text
