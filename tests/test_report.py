"""`rayiqa report` on real small score runs, checked as a reader would: every image the page shows
exists and decodes, the lowest/highest lists are the right paths in order, the error table matches
the manifest, crop boxes are drawn where the rows say, and the MOS figures are `rayiqa eval scores'`."""
import html
import json
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import botocore.session
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer
from pyarrow import fs as pafs
from PIL import Image

from broken import write_broken_files
from rayiqa.cli import main
from rayiqa.config import ScoreConfig, load_config
from rayiqa.io.decode import decode_image
from rayiqa.io.samples import samples_dir
from rayiqa.pipeline.score_job import run_score
from rayiqa.report import scan
from rayiqa.report.thumbs import box_in_thumbnail, thumbnail

LABELS = str(samples_dir() / "labels.csv")  # the samples' full-reference SSIM stands in for MOS
ODD_NAME = 'odd <i>&"name".jpg'  # user data that must come out escaped
SMALL = ["mllms=[{preset: tiny, max_pixels: 12544}]", "decode.batch_size=4", "score.batch_size=4"]
SEGMENTED = [*SMALL, "segmenter.image_size=256", "segmenter.points_per_side=4", "segmenter.pred_iou_thresh=0",
             "segmenter.stability_score_thresh=0", "method.area_threshold=0.05", "segment.batch_size=2"]
ADAPTED = [*SMALL, "method.segmentation=false", "adapt.method=llm-tta", "adapt.image_size=64",
           "adapt.iterations=2", "adapt.stage.batch_size=16"]


def _run(root: Path, samples: int, overrides: list[str]) -> Path:
    src = root / "in"
    src.mkdir()
    for name in sorted(p.name for p in samples_dir().iterdir() if p.suffix in (".jpg", ".png"))[:samples]:
        shutil.copy(samples_dir() / name, src / name)
    write_broken_files(src / "broken")
    (src / ODD_NAME).write_bytes(b"<script>alert(1)</script>")
    run_score(load_config(ScoreConfig, None, [f"input.uri={src}", f"output.uri={root / 'out'}", *overrides]))
    return root / "out"


@pytest.fixture(scope="module")
def segmented(ray_local, tmp_path_factory):
    """LLM-IQA with tiny SAM2 crops: 5 samples + 9 broken files."""
    return _run(tmp_path_factory.mktemp("segmented"), 5, SEGMENTED)


@pytest.fixture(scope="module")
def adapted(ray_local, tmp_path_factory):
    """Whole-image LLM-IQA + LLM-TTA: 10 samples (one full batch of 8 and a completed one) + 9 broken files."""
    return _run(tmp_path_factory.mktemp("adapted"), 10, ADAPTED)


class Page(HTMLParser):
    """What a reader sees: image sources, the shown images per section, and table cells by table id."""

    def __init__(self, path: Path):
        super().__init__()
        self.section, self.table, self.in_cell = None, None, False
        self.images: list[str] = []
        self.shown: dict[str, list[tuple[int, str]]] = {}
        self.sections: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text = path.read_text()
        self.feed(self.text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a["id"]
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "figure" and "data-path" in a:
            self.shown.setdefault(self.section, []).append((int(a["data-rank"]), a["data-path"]))
        elif tag == "table":
            self.table = a.get("id")
            self.tables[self.table] = []
        elif tag == "tr":
            self.tables[self.table].append([])
        elif tag == "td":
            self.in_cell = True
            self.tables[self.table][-1].append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.tables[self.table][-1][-1] += data

    def card(self, section: str, rank: int) -> str:
        """The HTML of one shown image's card."""
        cards = self.text.split(f'<section id="{section}">')[1].split("</section>")[0].split("<figure ")
        return next(c for c in cards if c.startswith(f'class="thumb" data-rank="{rank}" '))

    def paths(self, section: str) -> list[str]:
        ranks, paths = zip(*self.shown[section])
        assert list(ranks) == list(range(1, len(ranks) + 1))
        return list(paths)


def _report(output: Path, *args: str) -> tuple[Page, Path]:
    assert main(["report", str(output), *args]) == 0
    folder = Path(args[args.index("--out") + 1]) if "--out" in args else output / "_report"
    return Page(folder / "report.html"), folder


def _rows(output: Path, columns=None) -> list[dict]:
    return pads.dataset(str(output), format="parquet").to_table(columns=columns).to_pylist()


def _check_page(page: Page, folder: Path, output: Path, n: int, rows: list[dict] | None = None) -> None:
    """Every image decodes; the lists are the Parquet's N lowest / highest scores sorted here; the
    error table's counts are the manifest's; the Parquet readers of the output still see only rows."""
    assert page.images and len(page.images) == len(set(page.images))
    for src in page.images:
        assert not src.startswith(("/", "http")), src  # relative: the folder is self-contained
        with Image.open(folder / src) as im:
            im.load()
            assert im.width > 16 and im.height > 16
    rows = rows or _rows(output, ["path", "score"])
    scored = [r for r in rows if r["score"] is not None]
    assert page.paths("worst") == [r["path"] for r in sorted(scored, key=lambda r: (r["score"], r["path"]))[:n]]
    assert page.paths("best") == [r["path"] for r in sorted(scored, key=lambda r: (-r["score"], r["path"]))[:n]]
    manifest = json.loads((output / "_manifest.json").read_text())
    table = {kind: int(count) for kind, count, _ in page.tables["errors"][1:]}
    assert table == manifest["summary"]["errors"] and sum(table.values()) == 9
    assert len(_rows(output, ["path"])) == manifest["summary"]["rows"]


def test_report_of_a_segmented_run(segmented, tmp_path):
    page, folder = _report(segmented, "-n", "3")
    _check_page(page, folder, segmented, 3)
    assert "tta" not in page.sections and "mos" not in page.sections
    expected = Counter(write_broken_files(tmp_path).values()) + Counter({"not_an_image": 1})
    assert {kind: int(count) for kind, count, _ in page.tables["errors"][1:]} == expected
    # user data is escaped: the odd file name appears only as text
    assert "<i>" not in page.text and html.escape(ODD_NAME, quote=True) in page.text
    assert any(ODD_NAME in examples for _, _, examples in page.tables["errors"][1:])


def test_crop_boxes_are_drawn_where_the_rows_say(segmented, tmp_path):
    page, folder = _report(segmented, "-n", "2", "--out", str(tmp_path / "r"))
    rows = {r["path"]: r for r in _rows(segmented, ["path", "crop_boxes"])}
    checked = 0
    for section in ("worst", "best"):
        for rank, path in page.shown[section]:
            drawn = np.asarray(Image.open(folder / f"img/{section}_{rank:02d}.png").convert("RGB"))
            plain, scale = thumbnail(decode_image(Path(path).read_bytes(), 10**8).image)
            plain = np.asarray(plain)
            assert drawn.shape == plain.shape
            for box in rows[path]["crop_boxes"]:
                x0, y0, x1, y1 = box_in_thumbnail(box, scale)
                edge = np.concatenate([drawn[y0, x0:x1 + 1] != plain[y0, x0:x1 + 1], drawn[y1, x0:x1 + 1] != plain[y1, x0:x1 + 1],
                                       drawn[y0:y1 + 1, x0] != plain[y0:y1 + 1, x0], drawn[y0:y1 + 1, x1] != plain[y0:y1 + 1, x1]])
                assert edge.any(axis=1).mean() > 0.9, (path, box)
                checked += 1
            ys, xs = np.nonzero((drawn != plain).any(axis=2))  # outside the boxes: at most their score labels
            inside = np.zeros(len(xs), bool)
            for box in rows[path]["crop_boxes"]:
                x0, y0, x1, y1 = box_in_thumbnail(box, scale)
                inside |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            assert (~inside).sum() <= len(rows[path]["crop_boxes"]) * 40 * 16
    assert checked >= 4


def test_mos_figures_are_those_of_eval_scores(segmented, tmp_path, capsys):
    assert main(["eval", "scores", str(segmented), LABELS, "--mos-column", "ssim"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    page, folder = _report(segmented, "--out", str(tmp_path / "r"), "--mos", LABELS, "--mos-column", "ssim")
    _check_page(page, folder, segmented, 5)
    [header, [matched, *figures]] = page.tables["mos-metrics"]
    assert figures == printed[-1].split() and len(figures) == 5
    assert printed[0].startswith(f"images matched  {matched} ") and int(matched) == 5
    assert "img/mos.png" in page.images


def test_report_of_an_adapted_run_and_its_tta_figures(adapted, tmp_path):
    page, folder = _report(adapted, "-n", "4", "--out", str(tmp_path / "r"))
    _check_page(page, folder, adapted, 4)
    assert {"img/tta_scatter.png", "img/tta_batches.png"} <= set(page.images) and "tta" in page.sections
    assert "img/global_local.png" not in page.images  # whole-image run: no local scores


def test_streamed_scan_equals_one_batch(adapted, monkeypatch):
    """The per-batch accumulators give the same report data at 2 rows a batch as in one batch."""
    ds = scan.open_output(pafs.LocalFileSystem(), str(adapted))
    whole = scan.scan_output(ds, 4)
    monkeypatch.setattr(scan, "BATCH_ROWS", 2)
    monkeypatch.setattr(scan, "SAMPLE_POINTS", 3)
    monkeypatch.setattr(scan, "TTA_BATCHES", 1)
    streamed = scan.scan_output(ds, 4)
    assert streamed.rows == whole.rows == 19 and streamed.errors == whole.errors
    assert streamed.extremes == whole.extremes
    assert {k: h.counts.tolist() for k, h in streamed.hists.items()} == {k: h.counts.tolist() for k, h in whole.hists.items()}
    assert whole.hists["score"].counts.sum() == whole.scored == 10
    rows = _rows(adapted)
    pairs = sorted((r["tta_base_score"], r["tta_score"]) for r in rows if r["tta_score"] is not None)
    assert sorted(zip(whole.tta.columns["base"], whole.tta.columns["adapted"])) == pairs  # all 10 under the cap
    assert streamed.tta.seen == 10 and set(zip(streamed.tta.columns["base"], streamed.tta.columns["adapted"])) < set(pairs)
    assert len(streamed.tta.keys) == 3
    [(bid, members)] = streamed.tta_batches.items()  # one whole batch, gathered across 2-row batches
    assert sorted(m["path"] for m in members) == sorted(r["path"] for r in rows if r["tta_batch"] == bid)
    assert Counter(m["tta_cluster"] for m in members) == Counter(r["tta_cluster"] for r in rows if r["tta_batch"] == bid)


def test_missing_or_unreadable_input_leaves_a_placeholder(segmented, tmp_path):
    worst = sorted((r for r in _rows(segmented, ["path", "score"]) if r["score"] is not None),
                   key=lambda r: (r["score"], r["path"]))
    gone, garbled = Path(worst[0]["path"]), Path(worst[1]["path"])
    kept = {p: p.read_bytes() for p in (gone, garbled)}
    gone.unlink()
    garbled.write_bytes(b"no longer an image")
    try:
        page, folder = _report(segmented, "-n", "3", "--out", str(tmp_path / "r"))
    finally:
        for p, data in kept.items():
            p.write_bytes(data)
    assert page.paths("worst") == [r["path"] for r in worst[:3]]
    tiles = [np.asarray(Image.open(folder / f"img/worst_{i:02d}.png").convert("RGB")) for i in (1, 2, 3)]
    assert [tuple(t[2, 2]) == (200, 200, 200) for t in tiles] == [True, True, False]  # grey placeholders, then the image
    assert "read_error: " in page.card("worst", 1) and "not_an_image: " in page.card("worst", 2)
    assert "problem" not in page.card("worst", 3)


def test_report_of_an_output_and_inputs_in_s3(adapted, tmp_path, monkeypatch):
    """The adapted run's rows, manifest and images moved to a moto S3 bucket: the report reads the
    rows, the MOS join and the thumbnails from S3 and writes its folder there."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
               "AWS_REGION": "us-east-1"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3 = botocore.session.get_session().create_client("s3")
        s3.create_bucket(Bucket="runs")
        table = pads.dataset(str(adapted), format="parquet").to_table()
        local = table.column("path").to_pylist()
        for path in local:
            s3.put_object(Bucket="runs", Key=f"images/{Path(path).name}", Body=Path(path).read_bytes())
        moved = table.set_column(0, "path", pa.array([f"s3://runs/images/{Path(p).name}" for p in local]))
        buf = pa.BufferOutputStream()
        pq.write_table(moved, buf)
        s3.put_object(Bucket="runs", Key="out/part-0.parquet", Body=buf.getvalue().to_pybytes())
        s3.put_object(Bucket="runs", Key="out/_manifest.json", Body=(adapted / "_manifest.json").read_bytes())

        assert main(["report", "s3://runs/out", "-n", "3", "--mos", LABELS, "--mos-column", "ssim"]) == 0
        folder = tmp_path / "r"
        for key in [o["Key"] for o in s3.list_objects_v2(Bucket="runs", Prefix="out/_report/")["Contents"]]:
            if not key.endswith("/"):  # a folder marker
                (folder / key[len("out/_report/"):]).parent.mkdir(parents=True, exist_ok=True)
                (folder / key[len("out/_report/"):]).write_bytes(s3.get_object(Bucket="runs", Key=key)["Body"].read())
    finally:
        server.stop()
    page = Page(folder / "report.html")
    _check_page(page, folder, adapted, 3, rows=moved.select(["path", "score"]).to_pylist())
    assert all(p.startswith("s3://runs/images/") for p in page.paths("worst") + page.paths("best"))
    assert "problem" not in page.card("worst", 1) and "problem" not in page.card("best", 1)  # thumbnails read from S3
    assert int(page.tables["mos-metrics"][1][0]) == 10


def test_an_ensembles_histogram_has_one_count_per_model(tmp_path):
    """Per-model s_k histograms on the ensemble score's bins, from a two-model output written here."""
    from rayiqa.pipeline.stages import OUTPUT_SCHEMA

    rng = np.random.default_rng(0)
    scores = rng.normal(8.0, 1.0, (50, 2))
    rows = [{"path": f"/x/{i}.jpg", "score": float(s.mean()), "model_ids": ["a", "b"], "model_scores": s.tolist()}
            for i, s in enumerate(scores)]
    rows.append({"path": "/x/bad.jpg", "error_kind": "empty", "error": "the file has 0 bytes", "model_ids": [], "model_scores": []})
    (tmp_path / "out").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), tmp_path / "out" / "part-0.parquet")
    data = scan.scan_output(scan.open_output(pafs.LocalFileSystem(), str(tmp_path / "out")), 3)
    edges = data.hists["score"].edges
    assert (edges[0], edges[-1]) == (scores.min(), scores.max()) and data.model_ids == ["a", "b"]
    for m in (0, 1):
        assert data.hists[f"model {m}"].counts.tolist() == np.histogram(scores[:, m], bins=edges)[0].tolist()
    assert data.hists["score"].counts.sum() == 50 and data.errors == {"empty": 1}
    page, folder = _report(tmp_path / "out", "-n", "2", "--out", str(tmp_path / "r"))  # no manifest, no image files
    assert "No _manifest.json" in page.text and "read_error: " in page.card("worst", 1)  # /x/... is nowhere
    assert all(Image.open(folder / src).size for src in page.images)
