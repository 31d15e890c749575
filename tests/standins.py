"""Stand-ins that tests pass into pipelines (importable by Ray workers through tests/ on PYTHONPATH)."""
import numpy as np


class TransformersLevelProbs:
    """A processor stage with ray.data.llm's output contract (`level_probs`, `level_error`), run by the
    transformers engine: lets a test check the request-row glue without vLLM."""

    def __init__(self, cfg, prompt, image_column, keep_columns):
        from rayiqa.models.mllm import create_engine

        self.engine = create_engine(cfg.model_copy(update={"engine": "transformers"}))
        self.prompt, self.image_column, self.keep = prompt, image_column, keep_columns

    def __call__(self, batch):
        from rayiqa.models.mllm.base import LevelRequest

        probs = self.engine.level_probs([LevelRequest(self.prompt, [im]) for im in batch[self.image_column]])
        out = {k: batch[k] for k in self.keep}
        out["level_probs"] = np.empty(len(probs), dtype=object)
        out["level_probs"][:] = [p.tolist() for p in probs]
        out["level_error"] = np.asarray([""] * len(probs), dtype=object)
        return out


def transformers_processor(cfg, prompt, image_column, *, keep_columns, concurrency):
    import ray.data

    def apply(ds):
        return ds.map_batches(
            TransformersLevelProbs,
            fn_constructor_args=(cfg, prompt, image_column, keep_columns),
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,
            batch_size=8,
            batch_format="numpy",
        )

    return apply
