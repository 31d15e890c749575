"""Chat messages for a `LevelPrompt`, shared by the transformers and vLLM engines.

Both engines build the same OpenAI-style messages (only the image part differs: a bare
`{"type": "image"}` for the Hugging Face processor, a PIL image for vLLM) and render them the way
ray.data.llm's chat-template stage does, so the two engines see the same prompt text.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import numpy as np
from PIL import Image

from rayiqa.models.mllm.base import IMAGE_PLACEHOLDER, LevelPrompt

T = TypeVar("T")
Message = dict[str, Any]


def build_messages(prompt: LevelPrompt, images: Sequence[T], image_part: Callable[[T], dict]) -> list[Message]:
    """System turn (optional), user turn with the images, then the assistant prefix to continue.

    Images go where `<image>` placeholders are (their count must match), else first, then the text.
    """
    n_slots = prompt.n_images()
    if n_slots and n_slots != len(images):
        raise ValueError(f"prompt has {n_slots} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images")
    if n_slots:
        pieces = prompt.user.split(IMAGE_PLACEHOLDER)
        content: list[dict] = []
        for i, text in enumerate(pieces):
            if text:
                content.append({"type": "text", "text": text})
            if i < len(images):
                content.append(image_part(images[i]))
    else:
        content = [image_part(im) for im in images] + [{"type": "text", "text": prompt.user}]
    messages: list[Message] = []
    if prompt.system is not None:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": content})
    if prompt.assistant_prefix:
        messages.append({"role": "assistant", "content": prompt.assistant_prefix})
    return messages


def render_prompt(processor: Any, messages: list[Message]) -> str:
    """Apply the chat template: a generation prompt after a user turn, else continue the final turn.

    This is the rule of ray.data.llm's ChatTemplateStage, so both engines render identically.
    """
    add_generation_prompt = messages[-1]["role"] == "user"
    return processor.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=not add_generation_prompt,
    )


def to_pil(image: np.ndarray, where: str = "image") -> Image.Image:
    """Check an RGB uint8 HxWx3 array and wrap it as a PIL image; a clear error names `where`."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{where}: expected an RGB uint8 HxWx3 array, got shape {arr.shape} dtype {arr.dtype}")
    return Image.fromarray(arr, mode="RGB")
