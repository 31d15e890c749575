"""The study job's engine stage: an actor that answers request rows of one MLLM (other rows pass through).

A request row names its system, scenario, test images (and reference), and in-context exemplars.
The actor decodes the images (cached), runs chain-of-thought generation where the system asks for
it, then reads the answer from choice-token logits (`constrained_steps`). A row that cannot be
answered (unreadable image, engine error) gets `failed=True` and the reason in `error`; its batch
goes on.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict

import numpy as np
import pandas as pd

from rayiqa.config import MLLMConfig
from rayiqa.config.study import DesignConfig, StudyDataConfig
from rayiqa.methods import study_prompts as sp

log = logging.getLogger(__name__)

ANSWER_COLUMNS = ("answer_probs", "answer", "score", "failed", "error", "rationale")
IMAGE_CACHE_SIZE = 256


class StudyStage:
    """Answers the rows whose `engine_index` is this stage's, grouped by (system, scenario)."""

    def __init__(self, mllm: MLLMConfig, engine_index: int, design: DesignConfig, data: StudyDataConfig) -> None:
        from rayiqa.models.mllm import create_engine

        self.engine = create_engine(mllm, max_images=design.max_images_per_request())
        self.engine_index = engine_index
        self.design = design
        self.data = data
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _image(self, uri: str) -> np.ndarray:
        """Decoded RGB image of `uri` (LRU-cached); ImageReadError (a ValueError) naming the file when it cannot be read."""
        from rayiqa.io.read import read_rgb

        if uri in self._cache:
            self._cache.move_to_end(uri)
            return self._cache[uri]
        image = self._cache[uri] = read_rgb(uri, self.data)
        if len(self._cache) > IMAGE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return image

    def _request_images(self, row: pd.Series) -> list[np.ndarray]:
        """Presentation order: each exemplar's images (reference first), then reference, test images."""
        uris = [u for ex in row["exemplar_paths"] for u in ex]
        if row["reference"]:
            uris.append(row["reference"])
        uris.extend(row["items"])
        return [self._image(str(u)) for u in uris]

    def _answer_group(self, rows: list[pd.Series], images: list[list[np.ndarray]]) -> list[dict]:
        """Answers of rows sharing one system and scenario (one engine call per step)."""
        first = rows[0]
        stimulus, prompting = sp.split_system(first["system"])
        scenario, n = first["scenario"], len(first["items"])
        exemplars = [list(map(str, r["exemplar_answers"])) for r in rows]
        rationales: list[str | None] = [None] * len(rows)
        if prompting == "chain_of_thought":
            from rayiqa.models.mllm import LevelRequest

            reasoning = sp.reasoning_prompt(stimulus, scenario, n)
            rationales = self.engine.generate_text(
                [LevelRequest(reasoning, im) for im in images], self.design.max_new_tokens
            )

        def prompt_at(i: int, chosen: list[str]):
            ranked = [int(c) for c in chosen] if stimulus == "multiple" else ()
            return sp.answer_prompt(stimulus, prompting, scenario, n, exemplars[i], rationales[i], ranked)

        from rayiqa.models.mllm.generate import constrained_steps

        steps = n - 1 if stimulus == "multiple" else 1
        probs, chosen = constrained_steps(self.engine, images, prompt_at, steps)
        out = []
        for i in range(len(rows)):
            row_probs = [p[i].tolist() for p in probs]
            score = None
            if stimulus == "single":
                answer = chosen[i][0]
                score = sp.single_score(probs[0][i], self.design.single_readout)
            elif stimulus == "double":
                answer = sp.double_outcome(probs[0][i])
            else:
                last = [str(k) for k in range(1, n + 1) if str(k) not in chosen[i]]
                answer = ",".join(chosen[i] + last)
            out.append(
                {"answer_probs": row_probs, "answer": answer, "score": score, "failed": False, "error": None,
                 "rationale": rationales[i]}
            )
        return out

    def _answer_rows(self, rows: list[pd.Series]) -> list[dict]:
        """Decode per row (a bad file fails only its row), then answer; an engine error on the group is
        retried row by row so one bad request does not fail the others."""
        results: list[dict | None] = [None] * len(rows)
        ok, images = [], []
        for i, row in enumerate(rows):
            try:
                images.append(self._request_images(row))
                ok.append(i)
            except (ValueError, OSError) as e:
                results[i] = _failed(e)
        if ok:
            try:
                for i, res in zip(ok, self._answer_group([rows[i] for i in ok], images)):
                    results[i] = res
            except Exception as e:  # noqa: BLE001 - any engine error becomes a failed answer
                if len(ok) == 1:
                    results[ok[0]] = _failed(e)
                else:
                    for i, ims in zip(ok, images):
                        results[i] = self._answer_one(rows[i], ims)
        return results  # type: ignore[return-value]

    def _answer_one(self, row: pd.Series, images: list[np.ndarray]) -> dict:
        try:
            return self._answer_group([row], [images])[0]
        except Exception as e:  # noqa: BLE001
            return _failed(e)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for pos in np.flatnonzero(batch["engine_index"].to_numpy() == self.engine_index):
            groups[(batch.at[pos, "system"], batch.at[pos, "scenario"])].append(int(pos))
        columns = {c: list(batch[c]) if c in batch else [None] * len(batch) for c in ANSWER_COLUMNS}
        for positions in groups.values():
            for pos, res in zip(positions, self._answer_rows([batch.iloc[p] for p in positions])):
                for col in ANSWER_COLUMNS:
                    columns[col][pos] = res[col]
        for col, values in columns.items():
            batch[col] = pd.Series(values, index=batch.index, dtype=object)
        return batch


def _failed(exc: BaseException) -> dict:
    log.warning("study request failed: %s: %s", type(exc).__name__, exc)
    return {"answer_probs": [], "answer": None, "score": None, "failed": True,
            "error": f"{type(exc).__name__}: {exc}", "rationale": None}
