"""In-process MLLM engine on Hugging Face transformers: level-token probabilities, one forward per batch.

Loads any image-text-to-text checkpoint with `AutoModelForImageTextToText` / `AutoProcessor` (the
tiny preset is just another folder), renders each request with the shared chat builder, left-pads a
micro-batch, runs one forward and reads the logits of the level tokens at the last position.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from rayiqa.config import MLLMConfig
from rayiqa.models.mllm.base import LevelRequest, softmax
from rayiqa.models.mllm.chat import build_messages, render_prompt, to_pil
from rayiqa.models.mllm.levels import resolve_level_ids
from rayiqa.models.mllm.presets import resolve_model


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """"auto" -> bfloat16 on cuda, float32 elsewhere; else the named dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def image_size_kwargs(cfg: MLLMConfig) -> dict[str, Any]:
    """Qwen2-VL-style resize bounds (total pixels) as image-processor kwargs, for both engines."""
    return {"size": {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}}


class TransformersEngine:
    """`LevelEngine` on transformers: (N, K) softmax over the level-token logits, float64 rows."""

    def __init__(self, cfg: MLLMConfig) -> None:
        self.cfg = cfg
        self.model_id, self.weights = resolve_model(cfg.preset)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(self.model_id, **image_size_kwargs(cfg))
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self.dtype)
        self.model.to(self.device).eval()
        self._level_ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def level_ids(self, prompt_text: str, levels: tuple[str, ...]) -> list[int]:
        """Level token ids after this rendered prompt (cached per prompt text and level set)."""
        key = (prompt_text, levels)
        if key not in self._level_ids:
            self._level_ids[key] = resolve_level_ids(self.processor, prompt_text, levels, self.model_id)
        return self._level_ids[key]

    def level_probs(self, requests: Sequence[LevelRequest]) -> np.ndarray:
        """Softmax over level-token logits at the last prompt position, one forward per micro-batch."""
        if not requests:
            return np.zeros((0, 0))
        n_levels = {len(r.prompt.levels) for r in requests}
        if len(n_levels) != 1:
            raise ValueError(f"requests in one call must share the number of levels, got {sorted(n_levels)}")
        bs = self.cfg.batch_size
        return np.concatenate([self._fitting(self._forward, requests[i : i + bs], i) for i in range(0, len(requests), bs)])

    def _fitting(self, run, batch: Sequence[LevelRequest], offset: int) -> Any:
        """`run(batch, offset)`, in halves while the device runs out of memory (down to one request)."""
        try:
            return run(batch, offset)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        first, second = self._fitting(run, batch[:half], offset), self._fitting(run, batch[half:], offset + half)
        return np.concatenate([first, second]) if isinstance(first, np.ndarray) else first + second

    def generate_text(self, requests: Sequence[LevelRequest], max_new_tokens: int) -> list[str]:
        """Greedy continuation of each request's rendered prompt, decoded without special tokens."""
        bs = self.cfg.batch_size
        run = lambda batch, offset: self._generate(batch, offset, max_new_tokens)  # noqa: E731
        return [t for i in range(0, len(requests), bs) for t in self._fitting(run, requests[i : i + bs], i)]

    @torch.inference_mode()
    def _generate(self, batch: Sequence[LevelRequest], offset: int, max_new_tokens: int) -> list[str]:
        inputs, _ = self.encode(batch, offset)
        tokens = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = tokens[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]

    def encode(self, batch: Sequence[LevelRequest], offset: int = 0) -> tuple[Any, list[str]]:
        """Render a micro-batch with the shared chat builder and tokenise it left-padded on the device.

        Returns the processor's model inputs and the rendered prompt texts (also used by generation).
        """
        texts, images = [], []
        for i, req in enumerate(batch, start=offset):
            pil = [to_pil(im, f"request {i} image {j}") for j, im in enumerate(req.images)]
            texts.append(render_prompt(self.processor, build_messages(req.prompt, pil, lambda _: {"type": "image"})))
            images.extend(pil)
        inputs = self.processor(
            text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
        ).to(self.device)
        return inputs, texts

    @torch.inference_mode()
    def _forward(self, batch: Sequence[LevelRequest], offset: int) -> np.ndarray:
        inputs, texts = self.encode(batch, offset)
        level_ids = [self.level_ids(text, req.prompt.levels) for text, req in zip(texts, batch)]
        logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
        picked = torch.gather(logits, 1, torch.tensor(level_ids, device=logits.device))
        return softmax(picked.float().cpu().numpy())
