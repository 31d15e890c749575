"""`rayiqa eval study`: the MLLM prompting study (mllm-iqa-study.txt, Secs. 3-4) as a Ray Data job.

images (bundled samples or a registry dataset, optionally the Eq. (5) difficult subset)
-> requests (one row per stimulus x system x scenario x engine: single images, sampled pairs, lists)
-> engine actor pools (one per MLLM, fractional CPUs) -> answers/ Parquet (one row per request)
-> optionally a second pass of actively sampled NR pairs (expected information gain given pass 1's C)
-> per system and engine: scores (single: the 0-100 readout; double/multiple: C from the answers,
   ties split half and half, aggregated with Thurstone Case V MAP) -> SRCC/PLCC vs the human scores
-> summary.csv (the paper's Table 1 layout) and summary.png (heat-map).
Request building and scoring run on the driver; only the MLLM calls run in the actor pools.
"""
from __future__ import annotations

import csv
import functools
import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rayiqa.config import ConfigError, load_config
from rayiqa.config.study import DesignConfig, StudyConfig, StudyDataConfig, SubsetConfig
from rayiqa.methods import study_prompts as sp
from rayiqa.methods.metrics import evaluate
from rayiqa.methods.psychophysics import (
    preference_matrix,
    rank_aggregate,
    sample_active_pairs,
    sample_groups,
    select_difficult_nr,
)
from rayiqa.io.fs import join_path
from rayiqa.runtime import ensure_ray

log = logging.getLogger(__name__)

ANSWERS_DIR = "answers"
SUMMARY_CSV = "summary.csv"
SUMMARY_PNG = "summary.png"

ANSWERS_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("engine", pa.string()),  # the MLLM preset / model id (suffixed #k when repeated)
        ("engine_index", pa.int64()),
        ("system", pa.string()),  # e.g. "double-chain_of_thought"
        ("scenario", pa.string()),  # "nr" | "fr"
        ("prompt_id", pa.string()),
        ("items", pa.list_(pa.string())),  # test images in presentation order
        ("item_index", pa.list_(pa.int64())),  # their indices in the study's image list
        ("reference", pa.string()),  # FR reference image ("" for NR)
        ("exemplar_paths", pa.list_(pa.list_(pa.string()))),  # in-context exemplars' images (reference first)
        ("exemplar_answers", pa.list_(pa.string())),  # their human answers in the answer format
        ("answer_probs", pa.list_(pa.list_(pa.float64()))),  # [step][choice]; one step unless ranking
        ("answer", pa.string()),  # single: level "1".."9"; double: i / j / tie; multiple: "3,1,2,4"
        ("score", pa.float64()),  # single stimulus: 0-100 readout
        ("failed", pa.bool_()),
        ("error", pa.string()),
        ("rationale", pa.string()),  # chain-of-thought: the generated description
    ]
)
SUMMARY_FIELDS = (
    "engine", "scenario", "system", "stimulus", "prompting", "n_items", "n_requests", "n_failed", "srcc", "plcc", "error",
)


@dataclass(frozen=True)
class StudyItem:
    """One test image: its URI, human score (higher = better), FR reference URI and content id."""

    path: str
    mos: float
    reference: str | None
    content: str
    labels: dict


# ---------------------------------------------------------------- images


def _samples_items(data: StudyDataConfig) -> list[StudyItem]:
    """The bundled photos: labels.csv column `data.label` as pseudo-MOS; `<source>.png` is the reference."""
    from rayiqa.io.samples import samples_dir

    root = samples_dir()
    table = pd.read_csv(root / "labels.csv")
    if data.label not in table:
        raise ConfigError(f"data.label: samples have no column {data.label!r}; choose from {list(table.columns[5:])}")
    refs = {r.source: str(root / r.path) for r in table.itertuples() if r.distortion == "none"}
    numeric = [c for c in table.columns if c not in ("path", "source", "distortion")]
    items = []
    for r in table.to_dict("records"):
        ref = refs.get(r["source"]) if r["distortion"] != "none" else None
        labels = {c: float(r[c]) for c in numeric}
        items.append(StudyItem(str(root / r["path"]), float(r[data.label]), ref, str(r["source"]), labels))
    return items


def _registry_items(data: StudyDataConfig) -> list[StudyItem]:
    """A registry dataset; DMOS is negated so higher is better. The reference of a row is the dataset
    row whose file stem is its ref_id, else `<root>/reference/<ref_id>.png` (the synthetic layout)."""
    from rayiqa.data import load_dataset
    from rayiqa.io.fs import resolve_fs

    options = {"label": data.label} if data.dataset == "synthetic" else {}
    rows = load_dataset(data.dataset, data.root, data.storage, **options)
    by_stem = {PurePosixPath(r.image).stem: r.image for r in rows}
    fs, root = resolve_fs(data.root, data.storage)
    prefix = data.root.rstrip("/")

    @functools.cache
    def reference(ref_id: str | None) -> str | None:
        if ref_id is None:
            return None
        if ref_id in by_stem:
            return by_stem[ref_id]
        candidate = join_path(root, f"reference/{ref_id}.png")
        return f"{prefix}/reference/{ref_id}.png" if fs.get_file_info(candidate).is_file else None

    items = []
    for r in rows:
        mos = r.score if r.score_type == "MOS" else -r.score
        items.append(StudyItem(r.image, float(mos), reference(r.ref_id), r.ref_id or r.image, dict(r.labels)))
    return items


def clip_features(paths: list[str], model_name: str, pretrained: str | None, data: StudyDataConfig) -> np.ndarray:
    """open_clip image-encoder features (one row per image) for the diversity term Div of Eq. (5)."""
    import open_clip
    import torch
    from PIL import Image

    from rayiqa.io.read import ImageReadError, read_rgb
    from rayiqa.models.clip_prompt import load_clip

    torch.manual_seed(0)
    model, _ = load_clip(model_name, pretrained)
    model.eval()
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    feats = []
    with torch.inference_mode():
        for uri in paths:
            try:
                image = read_rgb(uri, data)
            except ImageReadError as e:
                raise ConfigError(f"subset: cannot read an image for CLIP features: {e}") from e
            x = preprocess(Image.fromarray(image)).unsqueeze(0)
            feats.append(model.encode_image(x)[0].float().numpy())
    return np.stack(feats)


def difficult_subset(items: list[StudyItem], subset: SubsetConfig, data: StudyDataConfig) -> list[StudyItem]:
    """Eq. (5): the top-N difficult images; the expert q_w is the label `subset.expert_label`, and MOS,
    q_w and sigma are min-max scaled first (as the reference code does, so epsilon=1 is mild)."""
    if subset.n is None or subset.n >= len(items):
        return items
    missing = [it.path for it in items if subset.expert_label not in it.labels]
    if missing:
        raise ConfigError(f"subset.expert_label: {subset.expert_label!r} missing for {len(missing)} images")

    def scaled(v: np.ndarray) -> np.ndarray:  # min-max to [0, 1]; non-finite (PSNR of a pristine: inf) -> the max
        v = np.where(np.isfinite(v), v, np.nan)
        v = np.where(np.isnan(v), np.nanmax(v), v)
        span = v.max() - v.min()
        return np.zeros_like(v) if span == 0 else (v - v.min()) / span

    q = scaled(np.array([it.mos for it in items]))
    q_w = scaled(np.array([it.labels[subset.expert_label] for it in items]))
    sigma = (
        scaled(np.array([it.labels.get(subset.sigma_label, np.nan) for it in items]))
        if subset.sigma_label else np.zeros(len(items))
    )
    feats = clip_features([it.path for it in items], subset.clip_model, subset.clip_pretrained, data)
    chosen = select_difficult_nr(q_w, q, sigma, feats, subset.n, subset.lam, subset.epsilon)
    return [items[i] for i in sorted(chosen.indices.tolist())]


def load_items(cfg: StudyConfig) -> list[StudyItem]:
    """The study's images: dataset -> difficult subset (if asked) -> first `data.limit`."""
    items = _samples_items(cfg.data) if cfg.data.dataset == "samples" else _registry_items(cfg.data)
    items = difficult_subset(items, cfg.subset, cfg.data)
    return items[: cfg.data.limit] if cfg.data.limit else items


# ---------------------------------------------------------------- requests


def _groups(spec: sp.SystemSpec, items: list[StudyItem], test: np.ndarray, design: DesignConfig) -> np.ndarray:
    """Stimuli as rows of item indices: each image alone, or the reference code's random partners /
    lists per image (sample_groups); FR groups share one reference (same content, Sec. 3.1)."""
    if spec.stimulus == "single":
        return test[:, None]
    per_item = design.pairs_per_item if spec.stimulus == "double" else design.lists_per_item
    pools = [test] if spec.scenario == "nr" else [
        test[[items[i].reference == ref for i in test]] for ref in sorted({items[i].reference for i in test})
    ]
    out = [
        pool[sample_groups(len(pool), spec.n, per_item, seed=design.seed + k)]
        for k, pool in enumerate(pools) if len(pool) >= spec.n
    ]
    return np.concatenate(out) if out else np.zeros((0, spec.n), dtype=np.int64)


def _exemplars(spec: sp.SystemSpec, items: list[StudyItem], test: np.ndarray, design: DesignConfig) -> list[np.ndarray]:
    """In-context exemplars: stimuli drawn (seeded) from the images outside the test set when there are
    enough, else from all images (then an exemplar may also be tested); FR exemplars share one reference."""
    if spec.n_exemplars == 0:
        return []
    rng = np.random.default_rng(design.seed)
    candidates = np.array([i for i, it in enumerate(items) if spec.scenario == "nr" or it.reference], dtype=np.int64)

    def stimulus_pools(pool: np.ndarray) -> list[np.ndarray]:
        groups = [pool] if spec.scenario == "nr" else [
            pool[[items[i].reference == r for i in pool]] for r in sorted({items[i].reference for i in pool})
        ]
        return [g for g in groups if len(g) >= spec.n]

    pools = stimulus_pools(np.setdiff1d(candidates, test)) or stimulus_pools(candidates)
    if not pools:
        raise ConfigError(f"design.n_exemplars: no {spec.n} images to form a {spec.scenario} exemplar")
    return [rng.choice(pools[rng.integers(len(pools))], spec.n, replace=False) for _ in range(spec.n_exemplars)]


def engine_labels(cfg: StudyConfig) -> list[str]:
    """One label per MLLM: its preset, suffixed #k when the same preset appears twice."""
    presets = [m.preset for m in cfg.mllms]
    return [p if presets.count(p) == 1 else f"{p}#{k}" for k, p in enumerate(presets)]


def build_requests(cfg: StudyConfig, items: list[StudyItem]) -> list[dict]:
    """One row per stimulus x system x scenario x engine, grouped by system so batches share prompts."""
    mos_range = (min(it.mos for it in items), max(it.mos for it in items))
    rows: list[dict] = []
    for scenario in cfg.design.scenarios:
        test = np.array([i for i, it in enumerate(items) if scenario == "nr" or it.reference is not None], dtype=np.int64)
        for system in cfg.design.systems:
            spec = sp.system_spec(system, scenario, cfg.design.list_size, cfg.design.n_exemplars)
            if len(test) < spec.n:
                raise ConfigError(f"design: {scenario} {system} needs {spec.n} images, the study has {len(test)}")
            exemplars = _exemplars(spec, items, test, cfg.design)
            ex_paths = [[*([items[g[0]].reference] if scenario == "fr" else []), *(items[i].path for i in g)] for g in exemplars]
            ex_answers = [sp.exemplar_answer(spec.stimulus, [items[i].mos for i in g], mos_range) for g in exemplars]
            for group in _groups(spec, items, test, cfg.design):
                for k, engine in enumerate(engine_labels(cfg)):
                    rows.append({
                        "request_id": len(rows), "engine": engine, "engine_index": k, "system": system,
                        "scenario": scenario, "prompt_id": spec.prompt_id,
                        "items": [items[i].path for i in group], "item_index": [int(i) for i in group],
                        "reference": (items[group[0]].reference or "") if scenario == "fr" else "",
                        "exemplar_paths": ex_paths, "exemplar_answers": ex_answers,
                    })
    return rows


def _plain(value):
    """Arrow-read nested cells (numpy arrays of arrays) back to Python lists for a new request row."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else value


def active_requests(cfg: StudyConfig, n_items: int, answers: pd.DataFrame, first_id: int) -> list[dict]:
    """The active second pass of the NR double-stimulus systems: per MLLM and system, the
    `design.active_pairs` pairs with the largest expected information gain given the first pass's C
    (Eq. 1, ties half and half), from `sample_active_pairs`. FR pairs stay uniform (same-content)."""
    chosen = answers[(answers["scenario"] == "nr") & answers["system"].str.startswith("double-")]
    rows: list[dict] = []
    for _, group in chosen.groupby(["engine_index", "system"], sort=True):
        ok = group[~group["failed"].astype(bool)]
        comparisons = [c for ix, a in zip(ok["item_index"], ok["answer"]) for c in sp.answer_comparisons("double", ix, a)]
        pairs = sample_active_pairs(preference_matrix(comparisons, n_items), cfg.design.active_pairs, seed=cfg.design.seed)
        template = {k: _plain(group.iloc[0][k]) for k in (
            "engine", "engine_index", "system", "scenario", "prompt_id", "reference", "exemplar_paths", "exemplar_answers")}
        paths = {int(i): p for ix, ps in zip(group["item_index"], group["items"]) for i, p in zip(ix, ps)}
        for a, b in pairs:
            if int(a) in paths and int(b) in paths:
                rows.append({**template, "request_id": first_id + len(rows), "items": [paths[int(a)], paths[int(b)]],
                             "item_index": [int(a), int(b)]})
    return rows


# ---------------------------------------------------------------- scores and summary


def system_scores(answers: pd.DataFrame, n_items: int, design: DesignConfig) -> np.ndarray:
    """Per-image scores of one system x scenario x engine from its non-failed answers (NaN where an
    image has none): single -> mean 0-100 readout; double/multiple -> C from the answers (Eq. 1, ties
    half and half) aggregated with `design.aggregation` (Thurstone Case V MAP, Eq. 2, by default)."""
    ok = answers[~answers["failed"].astype(bool)]
    scores = np.full(n_items, np.nan)
    if ok.empty:
        return scores
    stimulus, _ = sp.split_system(str(ok["system"].iloc[0]))
    if stimulus == "single":
        idx = np.array([int(ix[0]) for ix in ok["item_index"]])
        sums = np.bincount(idx, ok["score"].astype(float).to_numpy(), minlength=n_items)
        counts = np.bincount(idx, minlength=n_items)
        seen = counts > 0
        scores[seen] = sums[seen] / counts[seen]
        return scores
    comparisons = [c for ix, a in zip(ok["item_index"], ok["answer"]) for c in sp.answer_comparisons(stimulus, ix, a)]
    seen = np.zeros(n_items, dtype=bool)
    for i, j, _ in comparisons:
        seen[[i, j]] = True
    mu = rank_aggregate(comparisons, method=design.aggregation, n_items=n_items)
    scores[seen] = mu[seen]
    return scores


def summarise(answers: pd.DataFrame, items: list[StudyItem], design: DesignConfig) -> list[dict]:
    """One Table 1 row per engine x scenario x system: SRCC / PLCC (4-parameter logistic) against MOS,
    or NaN with the reason in `error` when the system failed or gave too few distinct scores."""
    mos = np.array([it.mos for it in items])
    out = []
    for (engine, scenario, system), group in answers.groupby(["engine", "scenario", "system"], sort=False):
        stimulus, prompting = sp.split_system(system)
        scores = system_scores(group, len(items), design)
        tested = sorted({int(i) for ix in group["item_index"] for i in ix})
        row = {"engine": engine, "scenario": scenario, "system": system, "stimulus": stimulus,
               "prompting": prompting, "n_items": len(tested), "n_requests": len(group),
               "n_failed": int(group["failed"].astype(bool).sum()), "srcc": math.nan, "plcc": math.nan, "error": ""}
        try:
            metrics = evaluate(scores[tested], mos[tested])
            row["srcc"], row["plcc"] = float(metrics["srcc"]), float(metrics["plcc_logistic"])
            row["error"] = str(metrics.get("fit_error", ""))
        except ValueError as e:
            row["error"] = str(e)
        out.append(row)
    return out


def summary_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def summary_png(rows: list[dict]) -> bytes:
    """Heat-map of SRCC: one row per scenario x system, one column per engine; failed cells say so."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(f"{r['scenario'].upper()} {r['system']}" for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    grid = np.full((len(labels), len(engines)), np.nan)
    for r in rows:
        grid[labels.index(f"{r['scenario'].upper()} {r['system']}"), engines.index(r["engine"])] = r["srcc"]
    fig = Figure(figsize=(5.0 + 1.2 * len(engines), 1.2 + 0.35 * len(labels)))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(engines)), engines, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (a, b), v in np.ndenumerate(grid):
        failed = np.isnan(v)
        ax.text(b, a, "failed" if failed else f"{v:.3f}", ha="center", va="center", fontsize=8, color="k" if failed else "w")
    ax.set_title("SRCC per prompting system and MLLM")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------- the job


def answers_table(batch: pa.Table) -> pa.Table:
    """A stage's output block cast to the fixed ANSWERS_SCHEMA (so every Parquet part agrees)."""
    return pa.Table.from_arrays([batch.column(f.name).cast(f.type) for f in ANSWERS_SCHEMA], schema=ANSWERS_SCHEMA)


@dataclass(frozen=True)
class StudySummary:
    """What one study run did and where its outputs are."""

    rows: list[dict]
    requests: int
    failed: int
    seconds: float
    uri: str
    weights: list[str]

    def render(self) -> str:
        lines = [f"{'engine':<16} {'scen':<4} {'system':<26} {'n':>4} {'fail':>4} {'srcc':>7}"]
        for r in self.rows:
            srcc = "failed" if math.isnan(r["srcc"]) else f"{r['srcc']:.3f}"
            lines.append(f"{r['engine']:<16} {r['scenario']:<4} {r['system']:<26} {r['n_items']:>4} {r['n_failed']:>4} {srcc:>7}")
        lines.append(f"{self.requests} requests, {self.failed} failed, {self.seconds:.1f} s; output: {self.uri}")
        if "random-init" in self.weights:
            lines.append("WARNING: weights: random-init (tiny presets) -- these SRCCs say nothing about quality")
        if "rayiqa-trained (synthetic)" in self.weights:
            lines.append("note: weights: rayiqa-trained (synthetic) -- tiny-iqa knows synthetic distortions only")
        return "\n".join(lines)


def _answer(cfg: StudyConfig, requests: list[dict], fs, answers_dir: str) -> None:
    """One Ray Data pass: request rows -> an engine actor pool per MLLM -> Parquet parts in answers_dir."""
    import ray.data

    from rayiqa.pipeline.study_stage import StudyStage

    ds = ray.data.from_items(requests)
    lo, hi = cfg.stage.concurrency
    for k, mllm in enumerate(cfg.mllms):
        ds = ds.map_batches(
            StudyStage,
            fn_constructor_args=(mllm, k, cfg.design, cfg.data),
            compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
            batch_size=cfg.stage.batch_size,
            num_cpus=cfg.stage.num_cpus,
            num_gpus=cfg.stage.num_gpus,
            batch_format="pandas",
        )
    ds = ds.map_batches(answers_table, batch_format="pyarrow")
    ds.write_parquet(answers_dir, filesystem=fs)


def run_study(cfg: StudyConfig) -> StudySummary:
    """Run the study end to end: answers/ Parquet, summary.csv and summary.png under `output.uri`."""
    from rayiqa.io.fs import resolve_fs
    from rayiqa.models.mllm.presets import resolve_model

    started = time.time()
    weights = [resolve_model(m.preset)[1] for m in cfg.mllms]  # builds tiny checkpoints once, on the driver
    if "random-init" in weights:
        log.warning("study MLLMs with RANDOM weights (tiny presets): the SRCC table only checks the job runs")
    items = load_items(cfg)
    requests = build_requests(cfg, items)
    ensure_ray(cfg.ray)
    fs, root = resolve_fs(cfg.output.uri, cfg.output.storage)
    answers_dir = join_path(root, ANSWERS_DIR)
    fs.delete_dir_contents(answers_dir, missing_dir_ok=True)
    _answer(cfg, requests, fs, answers_dir)
    answers = pq.read_table(answers_dir, filesystem=fs, schema=ANSWERS_SCHEMA).to_pandas()
    if cfg.design.active_pairs and "nr" in cfg.design.scenarios:
        extra = active_requests(cfg, len(items), answers, len(requests))
        if extra:
            _answer(cfg, extra, fs, answers_dir)
            answers = pq.read_table(answers_dir, filesystem=fs, schema=ANSWERS_SCHEMA).to_pandas()
    answers = answers.sort_values("request_id", kind="stable")
    rows = summarise(answers, items, cfg.design)
    for name, payload in ((SUMMARY_CSV, summary_csv(rows)), (SUMMARY_PNG, summary_png(rows))):
        with fs.open_output_stream(join_path(root, name)) as f:
            f.write(payload)
    return StudySummary(rows, len(answers), int(answers["failed"].sum()), time.time() - started, cfg.output.uri, weights)


def main_study(config_path: str | None, overrides: list[str]) -> int:
    """`rayiqa eval study CONFIG [key=value ...]`: run the study, print the table; 0 on success."""
    cfg = load_config(StudyConfig, config_path, overrides)
    print(run_study(cfg).render())
    return 0
