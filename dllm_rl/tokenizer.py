"""LLaDA tokenizer: `tokenizer.json` (HF `tokenizers`) + `tokenizer_config.json` (special tokens, chat template).

The chat template is rendered with jinja2 the way `transformers` does it (sandboxed environment,
`trim_blocks`/`lstrip_blocks`, `raise_exception` available), so prompts are byte-identical to the reference
(docs/reference_quirks.md). Batches are left-padded with the pad token, as `generate.py` expects.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jinja2
import jinja2.sandbox
import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from dllm_rl import paths

MASK_TOKEN = "<|mdm_mask|>"


class TokenizerError(ValueError):
    """A tokenizer folder that cannot be used; the message names the file and the fix."""


def _token_content(value: Any) -> str | None:
    """Special tokens appear as plain strings or as AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


class Tokenizer:
    """Encodes/decodes text and renders chat prompts exactly like the HF tokenizer of LLaDA."""

    def __init__(self, tokenizer: _HFTokenizer, config: dict, source: str = "<memory>"):
        self._tok = tokenizer
        self.config = config
        self.source = source
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.pad_token = _token_content(config.get("pad_token")) or self.eos_token
        self.bos_token_id = self._id(self.bos_token, "bos_token")
        self.eos_token_id = self._id(self.eos_token, "eos_token")
        self.pad_token_id = self._id(self.pad_token, "pad_token")
        self.mask_token_id = tokenizer.token_to_id(MASK_TOKEN)
        if self.mask_token_id is not None and self.mask_token_id == self.pad_token_id:
            raise TokenizerError(f"{source}: pad token equals the mask token {MASK_TOKEN}; generation would "
                                 "treat padding as positions to fill. Set pad_token to <|endoftext|>.")
        template = config.get("chat_template")
        self._template = None
        if template:
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_exception
            try:
                self._template = env.from_string(template)
            except jinja2.exceptions.TemplateSyntaxError as e:
                raise TokenizerError(f"{source}: chat_template does not parse ({e})") from None

    def _id(self, token: str | None, field: str) -> int | None:
        if token is None:
            return None
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source}: {field} {token!r} is not in the vocabulary of tokenizer.json")
        return token_id

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """Loads `tokenizer.json` and `tokenizer_config.json` from an HF model folder."""
        path = os.fspath(path)
        folder = paths.absolute(path)  # local or gs://
        tok_file, cfg_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
        for f in (tok_file, cfg_file):
            if not f.exists():
                raise TokenizerError(f"{f}: missing; copy tokenizer.json and tokenizer_config.json from the HF "
                                     "model repository into this folder")
        try:
            hf_tok = _HFTokenizer.from_str(tok_file.read_text(encoding="utf-8"))
        except Exception as e:
            raise TokenizerError(f"{tok_file}: cannot load ({e})") from None
        try:
            config = json.loads(cfg_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{cfg_file}: not valid JSON ({e})") from None
        return cls(hf_tok, config, source=path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Renders a conversation with the folder's chat template (LLaDA's appends the assistant header)."""
        if self._template is None:
            raise TokenizerError(f"{self.source}: tokenizer_config.json has no chat_template")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise TokenizerError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        special = {k: _token_content(v) for k, v in self.config.items() if k.endswith("_token")}
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **special)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text are recognised, none are added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def batch_encode(self, texts: Sequence[str], max_length: int | None = None,
                     keep_last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ids and attention mask, both int32 [B, P]; P = longest (or `max_length`, an error if
        any text is longer). `keep_last` keeps only each text's last tokens (small test models with short
        contexts; never for reported numbers)."""
        ids = [self.encode(t)[-keep_last:] if keep_last else self.encode(t) for t in texts]
        longest = max((len(x) for x in ids), default=0)
        width = longest if max_length is None else max_length
        if longest > width:
            raise TokenizerError(f"a prompt has {longest} tokens, more than max_length={width}; raise "
                                 "max_length or shorten the prompt")
        ids_BxP = np.full((len(ids), width), self.pad_token_id, np.int32)
        mask_BxP = np.zeros((len(ids), width), np.int32)
        for row, x in enumerate(ids):
            if x:
                ids_BxP[row, width - len(x):] = x
                mask_BxP[row, width - len(x):] = 1
        return ids_BxP, mask_BxP

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids_BxT, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in np.asarray(ids_BxT)]


LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")


def build_char_tokenizer(out_dir: str | os.PathLike, *, vocab_size: int, eos_token_id: int,
                         mask_token_id: int, chars: str | None = None) -> "Tokenizer":
    """Writes a character-level tokenizer in LLaDA's format (tokenizer.json + tokenizer_config.json).

    For tests and the embedded demo, where the real 126k BPE cannot be downloaded: one token per character
    (printable ASCII and newline by default), LLaDA's special tokens and chat template, reserved fillers up
    to `vocab_size`. EOS doubles as pad, as in LLaDA.
    """
    from tokenizers import decoders, models

    chars = chars if chars is not None else "\n" + "".join(chr(c) for c in range(32, 127))
    specials = ["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<unk>"]
    reserved = {eos_token_id: "<|endoftext|>", mask_token_id: MASK_TOKEN}
    free = [i for i in range(len(chars), vocab_size) if i not in reserved]
    if len(chars) > min(eos_token_id, mask_token_id) or len(free) < len(specials) or len(set(chars)) != len(chars):
        raise TokenizerError(f"vocab_size={vocab_size} cannot hold {len(chars)} characters below the EOS/mask ids "
                             f"({eos_token_id}, {mask_token_id}) plus {len(specials)} special tokens")
    # Specials take the ids right after EOS (as in LLaDA, where BOS/EOS sit together above the text vocabulary).
    after_eos = [i for i in free if i > eos_token_id] + [i for i in free if i < eos_token_id]
    reserved.update(zip(after_eos, specials))
    vocab = {c: i for i, c in enumerate(chars)}
    for i in range(vocab_size):
        if i >= len(chars):
            vocab[reserved.get(i, f"<|reserved_token_{i}|>")] = i
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([t for i, t in sorted((i, t) for t, i in vocab.items()) if i >= len(chars)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "unk_token": "<unk>", "chat_template": LLADA_CHAT_TEMPLATE}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return Tokenizer.from_dir(out_dir)
