"""Level tokens: the id of each level string as the single next token after a rendered prompt.

Checked by tokenising prompt + level against prompt, never assumed: with byte-level BPE a word after
a space carries the space (" good"), and Qwen2's pre-tokenizer splits digits off any space.
"""
from __future__ import annotations

from typing import Any, Sequence


def resolve_level_ids(tokenizer: Any, prompt_text: str, levels: Sequence[str], model_id: str) -> list[int]:
    """Token id of each level right after `prompt_text`; ValueError naming model, level and tokens.

    `tokenizer` may be a processor (its `.tokenizer` is used). Levels must map to distinct ids.
    """
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    base = tok(prompt_text, add_special_tokens=False)["input_ids"]
    tail = prompt_text[-30:]
    ids: list[int] = []
    for level in levels:
        full = tok(prompt_text + level, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            shared = next((i for i, (a, b) in enumerate(zip(base, full)) if a != b), min(len(base), len(full)))
            pieces = tok.convert_ids_to_tokens(full[shared:])
            raise ValueError(
                f"model {model_id!r}: level {level!r} is not one token after the prompt "
                f"(...{tail!r}); prompt+level tokenises its end as {pieces}"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"model {model_id!r}: levels {list(levels)} map to repeated token ids {ids}")
    return ids
