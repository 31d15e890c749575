"""The report's HTML: one static page with inline CSS and relative links to its PNGs.

Everything that comes from the run (paths, error messages, model ids, config values) is user data
and goes through `esc`. The sections carry ids and the shown images `data-path` / `data-rank`
attributes, so a reader (or a test) can find them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from rayiqa.methods.llm_iqa import WORD_STANDARDS
from rayiqa.report.scan import EXAMPLES_PER_KIND, RunData

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:8px 12px;margin:12px 0}
.meta,.note{color:#555;font-size:13px} code,.path{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.grid{display:flex;flex-wrap:wrap;gap:12px} .figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure.thumb{width:272px;margin:0;border:1px solid #ddd;padding:8px;background:#fafafa;font-size:12px}
figure.thumb img{display:block;margin:0 auto 6px;max-width:256px}
.problem{color:#a00} .levels{margin-top:6px}
.lv{display:flex;align-items:center;gap:4px;line-height:14px} .lv span.name{width:86px;color:#555}
.lv span.bar{display:inline-block;height:9px;background:#4a7fb5} .lv span.p{color:#555;font-size:11px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Shown:
    """One image shown in the worst/best lists: its detail row, thumbnail file, and why it has none."""

    row: dict
    image: str
    problem: str | None


def _table(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    """An HTML table from already-escaped cells (a cell starting with '<td' is taken as is); no header row if none."""
    head = f"<tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>" if header else ""
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}>{head}{body}</table>"


def _num(value: object, fmt: str = "") -> str:
    return f'<td class="num">{esc(format(value, fmt)) if value is not None else ""}</td>'


def _run_section(output_uri: str, manifest: dict | None, data: RunData) -> str:
    if manifest is None:
        return (f'<section id="run"><h2>Run</h2><p class="warn">No _manifest.json in {esc(output_uri)}: the run did not '
                'finish, or the folder was copied without it.</p></section>')
    s, cfg = manifest.get("summary", {}), manifest.get("config", {})
    rows = [
        ["input", f"<code>{esc(cfg.get('input', {}).get('uri', ''))}</code>"],
        ["inputs listed by the last run", _num(s.get("inputs"))],
        ["rows in the output", _num(data.rows)],
        ["unique paths", _num(s.get("unique_paths"))],
        ["scored", _num(data.scored)],
        ["errors", _num(sum(data.errors.values()))],
        ["rows written by the last run", _num(s.get("new_rows"))],
        ["last run", esc(f"{s.get('seconds', 0):.1f} s, {s.get('images_per_second', 0):.2f} images/s, "
                         f"finished {manifest.get('finished_at', '?')}")],
        ["scorer", esc(cfg.get("scorer", ""))],
        ["test-time adaptation", esc(cfg.get("adapt", {}).get("method", "none"))],
    ]
    models = []
    for role, entry in manifest.get("models", {}).items():
        for i, m in enumerate(entry if isinstance(entry, list) else [entry]):
            name = f"{role} {i}" if isinstance(entry, list) else role
            extra = ", ".join(f"{k}={v}" for k, v in m.items() if k not in ("model_id", "weights", "source"))
            models.append([esc(name), f"<code>{esc(m.get('model_id', ''))}</code>", esc(m.get("weights", "")),
                           f"<code>{esc(m.get('source') or '')}</code>", esc(extra)])
    warn = ""
    if manifest.get("weights") == "random-init":
        warn = ('<p class="warn">This run used models with <b>random weights</b> (tiny presets): its scores are not image '
                'quality, only a check that the pipeline runs.</p>')
    elif manifest.get("weights") == "rayiqa-trained (synthetic)":
        warn = ('<p class="warn">This run used <b>tiny-iqa</b>, a ~1 M-parameter MLLM rayiqa trained on synthetic '
                'distortions (blur, noise, JPEG, contrast) of packaged photographs: its scores rank those distortions, '
                'not aesthetics or AI-generation artefacts.</p>')
    return (f'<section id="run"><h2>Run</h2>{warn}{_table([], rows, "run-table")}<h3>Models</h3>'
            f'{_table(["role", "model", "weights", "source", "settings"], models, "models")}</section>')


def _errors_section(data: RunData) -> str:
    if not data.errors:
        return '<section id="errors-section"><h2>Errors</h2><p>No error rows.</p></section>'
    rows = []
    for kind, count in sorted(data.errors.items(), key=lambda kv: (-kv[1], kv[0])):
        examples = "<br>".join(f'<span class="path">{esc(p)}</span>: {esc(m)}' for p, m in data.examples.get(kind, []))
        rows.append([f'<td class="kind">{esc(kind)}</td>', f'<td class="num count">{count}</td>', examples])
    return (f'<section id="errors-section"><h2>Errors</h2><p class="note">{sum(data.errors.values())} of {data.rows} rows '
            f'could not be scored; up to {EXAMPLES_PER_KIND} examples per kind.</p>'
            f'{_table(["kind", "rows", "examples (path: message)"], rows, "errors")}</section>')


def _level_bars(row: dict, manifest: dict | None) -> str:
    """Bars of the whole image's level probabilities (mean over the models), best level first."""
    probs = [p for p in row.get("global_probs") or [] if p]
    if not probs:
        return ""
    mean = np.mean(probs, axis=0)
    levels = len(mean)
    method = (manifest or {}).get("config", {}).get("method", {})
    words = WORD_STANDARDS.get(levels) if method.get("standard", "word") == "word" else None
    lines = []
    for level in range(levels, 0, -1):
        p = float(mean[level - 1])
        name = f"{level} {words[levels - level]}" if words else str(level)
        lines.append(f'<div class="lv"><span class="name">{esc(name)}</span>'
                     f'<span class="bar" style="width:{100 * p:.1f}px"></span><span class="p">{p:.2f}</span></div>')
    title = "whole-image level probabilities" + (f" (mean of {len(probs)} models)" if len(probs) > 1 else "")
    return f'<div class="levels" title="{esc(title)}">{"".join(lines)}</div>'


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _card(rank: int, shown: Shown, manifest: dict | None) -> str:
    r = shown.row
    crops = len(r.get("crop_boxes") or [])
    problem = f'<br><span class="problem">{esc(shown.problem)}</span>' if shown.problem else ""
    return (f'<figure class="thumb" data-rank="{rank}" data-path="{esc(r["path"])}">'
            f'<img src="{esc(shown.image)}" alt="{esc(r["path"])}">'
            f'<figcaption><b>#{rank} score {r["score"]:.3f}</b> (global {_fmt(r.get("global_score"))}, '
            f'local {_fmt(r.get("local_score"))}; {r["width"]}×{r["height"]}, {crops} crop{"s" if crops != 1 else ""})<br>'
            f'<span class="path">{esc(r["path"])}</span>{problem}{_level_bars(r, manifest)}</figcaption></figure>')


def _images_section(name: str, title: str, shown: list[Shown], manifest: dict | None) -> str:
    cards = "".join(_card(i + 1, s, manifest) for i, s in enumerate(shown))
    note = ("Boxes: the crops the score is built from, each with its score (mean over the models); "
            "bars: the whole image's level probabilities.")
    return f'<section id="{name}"><h2>{esc(title)}</h2><p class="note">{note}</p><div class="grid">{cards}</div></section>'


def _figures(figs: list[tuple[str, str]]) -> str:
    return '<div class="figs">' + "".join(f'<img src="{esc(src)}" alt="{esc(alt)}">' for src, alt in figs) + "</div>"


def _mos_section(agreement, mos_column: str, figure: str) -> str:
    m = agreement.metrics
    cells = [_num(agreement.matched)] + [_num(m[k], ".4f") for k in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse")]
    table = _table(["matched", "SRCC", "KRCC", "PLCC", "PLCC*", "RMSE*"], [cells], "mos-metrics")
    fit = f'<p class="problem">logistic fit failed: {esc(m["fit_error"])}</p>' if "fit_error" in m else ""
    return (f'<section id="mos"><h2>Scores against {esc(mos_column)}</h2>'
            f'<p class="note">Joined on the file name: {agreement.unmatched_predictions} predictions without a MOS, '
            f'{agreement.missing_predictions} MOS without a prediction. * after the {esc(m["logistic"])} logistic fit '
            f'(the figures of <code>rayiqa eval scores</code>).</p>{table}{fit}{_figures([(figure, "score vs MOS")])}</section>')


def render(output_uri: str, manifest: dict | None, data: RunData, figures: dict[str, str],
           shown: dict[str, list[Shown]], agreement=None, mos_column: str = "mos") -> str:
    """The whole page. `figures` maps figure names to their relative PNG paths; `agreement` is a
    `rayiqa eval scores` result (metrics, matched counts) or None."""
    score_figs = [(figures[k], k) for k in ("histogram", "global_local") if k in figures]
    parts = [
        f"<h1>rayiqa score report</h1><p class=\"meta\">output <code>{esc(output_uri)}</code></p>",
        _run_section(output_uri, manifest, data),
        _errors_section(data),
        f'<section id="scores"><h2>Scores</h2>{_figures(score_figs) if score_figs else "<p>No scored rows.</p>"}</section>',
    ]
    if agreement is not None:
        parts.append(_mos_section(agreement, mos_column, figures["mos"]))
    tta = [(figures[k], k) for k in ("tta_scatter", "tta_batches") if k in figures]
    if tta:
        parts.append('<section id="tta"><h2>Test-time adaptation</h2><p class="note">Base: the source backbone; '
                     'adapted: after the group-contrastive steps on its batch. Clusters: the top / bottom images of '
                     f'each batch by the ranking score.</p>{_figures(tta)}</section>')
    parts += [_images_section("worst", f"The {len(shown['worst'])} lowest scores", shown["worst"], manifest),
              _images_section("best", f"The {len(shown['best'])} highest scores", shown["best"], manifest)]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>rayiqa report: {esc(output_uri)}</title>'
            f'<style>{STYLE}</style></head><body>{"".join(parts)}</body></html>\n')
