"""The dataset registry on tiny fixtures written in each dataset's official file format."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import botocore.session
import fsspec
import numpy as np
import pandas as pd
import pytest
import scipy.io
from moto.server import ThreadedMotoServer

from rayiqa.config import StorageConfig
from rayiqa.data import DatasetError, IQARow, dataset_names, from_arrow, load_dataset, to_arrow
from rayiqa.data.formats.matlab import LIVE_FOLDERS

SHEET_FORMATS = ["csv", "xlsx"]  # openpyxl is in the dev extra: the .xlsx cases always run


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_sheet(root: Path, stem: str, frame: pd.DataFrame, fmt: str, header: bool = True,
                sheet: str = "Sheet1") -> None:
    """An annotation workbook as .xlsx, or as the CSV export the loaders also accept."""
    path = root / f"{stem}.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "xlsx":
        frame.to_excel(path, index=False, header=header, sheet_name=sheet)
    else:
        frame.to_csv(path, index=False, header=header)


def cells(strings: list[str]) -> np.ndarray:
    """A MATLAB cell array of strings (1 x n), as scipy.io.savemat writes it."""
    array = np.empty((1, len(strings)), dtype=object)
    array[0, :] = strings
    return array


# --- synthetic-distortion datasets (with reference ids) -----------------------------------------


def test_live_release2(tmp_path: Path) -> None:
    n = sum(count for _, count in LIVE_FOLDERS)
    assert n == 982
    dmos = 1.0 + 0.1 * np.arange(n)
    orgs = np.zeros(n)
    orgs[[0, 300, 981]] = 1  # reference copies listed among the distorted images
    refs = [("bikes.bmp", "parrots.bmp", "house.bmp")[i % 3] for i in range(n)]
    scipy.io.savemat(tmp_path / "dmos.mat", {"dmos": dmos[None, :], "orgs": orgs[None, :]})
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": cells(refs)})

    rows = load_dataset("LIVE", str(tmp_path))

    assert len(rows) == n - 3
    by_image = {row.image: row for row in rows}
    expected = {1: "jp2k/img2.bmp", 227: "jpeg/img1.bmp", 460: "wn/img1.bmp", 634: "gblur/img1.bmp",
                808: "fastfading/img1.bmp", 980: "fastfading/img173.bmp"}
    for index, image in expected.items():
        row = by_image[os.path.join(str(tmp_path), *image.split("/"))]
        assert row.score == pytest.approx(dmos[index])
        assert row.ref_id == refs[index].removesuffix(".bmp")
        assert row.distortion == image.split("/")[0]
    assert os.path.join(str(tmp_path), "jp2k", "img1.bmp") not in by_image  # orgs == 1
    assert os.path.join(str(tmp_path), "fastfading", "img174.bmp") not in by_image
    assert {r.score_type for r in rows} == {"DMOS"} and {r.score_range for r in rows} == {(1.0, 100.0)}


def test_live_wrong_length_names_the_variable(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "dmos.mat", {"dmos": np.ones((1, 10)), "orgs": np.zeros((1, 10))})
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": cells(["a.bmp"] * 10)})
    with pytest.raises(DatasetError, match="'dmos' has 10 entries, expected 982"):
        load_dataset("live", str(tmp_path))


@pytest.mark.parametrize("fmt", SHEET_FORMATS)
def test_csiq_dmos_workbook(tmp_path: Path, fmt: str) -> None:
    # all_by_image as exported: title rows, an empty first column, then the header row.
    sheet = pd.DataFrame(
        [
            [None, "CSIQ DMOS", None, None, None, None, None],
            [None, None, None, None, None, None, None],
            [None, "image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"],
            [None, 1600, 1, "noise", 1, 0.061, 0.062],
            [None, 1600, 4, "jpeg 2000", 3, 0.05, 0.31],
            [None, "aerial_city", 6, "contrast", 5, 0.1, 0.72],
        ]
    )
    write_sheet(tmp_path, "csiq.DMOS", sheet, fmt, header=False, sheet="all_by_image")

    rows = load_dataset("CSIQ", str(tmp_path))

    root = str(tmp_path)
    assert [r.image for r in rows] == [
        os.path.join(root, "dst_imgs", "awgn", "1600.AWGN.1.png"),
        os.path.join(root, "dst_imgs", "jpeg2000", "1600.jpeg2000.3.png"),
        os.path.join(root, "dst_imgs", "contrast", "aerial_city.contrast.5.png"),
    ]
    assert [r.score for r in rows] == [0.062, 0.31, 0.72]
    assert [r.ref_id for r in rows] == ["1600", "1600", "aerial_city"]
    assert [r.level for r in rows] == [1, 3, 5]
    assert rows[0].labels == {"dmos_std": 0.061}
    assert {r.score_type for r in rows} == {"DMOS"} and rows[0].score_range == (0.0, 1.0)


def test_csiq_unknown_distortion_type(tmp_path: Path) -> None:
    sheet = pd.DataFrame([["image", "dst_type", "dst_lev", "dmos"], [1600, "glitter", 1, 0.5]])
    write_sheet(tmp_path, "csiq.DMOS", sheet, "csv", header=False)
    with pytest.raises(DatasetError, match="unknown dst_type 'glitter'"):
        load_dataset("csiq", str(tmp_path))


def test_tid2013_with_std(tmp_path: Path) -> None:
    write(tmp_path / "mos_with_names.txt", "5.51429 i01_01_1.bmp\n4.17 i01_07_5.bmp\n6.0 i25_24_2.bmp\n")
    write(tmp_path / "mos_std.txt", "0.13\n0.2\n0.11\n")

    rows = load_dataset("TID2013", str(tmp_path))

    assert [r.image for r in rows] == [os.path.join(str(tmp_path), "distorted_images", n)
                                       for n in ("i01_01_1.bmp", "i01_07_5.bmp", "i25_24_2.bmp")]
    assert [r.score for r in rows] == [5.51429, 4.17, 6.0]
    assert [(r.ref_id, r.distortion, r.level) for r in rows] == [("I01", "01", 1), ("I01", "07", 5), ("I25", "24", 2)]
    assert [r.labels["std"] for r in rows] == [0.13, 0.2, 0.11]
    assert rows[0].score_type == "MOS" and rows[0].score_range == (0.0, 9.0)


def test_tid2013_bad_score_names_the_line(tmp_path: Path) -> None:
    write(tmp_path / "mos_with_names.txt", "5.5 i01_01_1.bmp\nabc i01_01_2.bmp\n")
    with pytest.raises(DatasetError, match=r"mos_with_names.txt: line 2: score 'abc' is not a number"):
        load_dataset("tid2013", str(tmp_path))


def test_pipal_reads_every_label_file(tmp_path: Path) -> None:
    write(tmp_path / "Train_Label" / "A0001.txt", "A0001_00_00.bmp,1520.0648\nA0001_06_26.bmp,1294.8478\n")
    write(tmp_path / "Train_Label" / "A0002.txt", "A0002_05_03.bmp,1054.1297\n")

    rows = load_dataset("pipal", str(tmp_path))

    assert [(os.path.basename(r.image), r.score, r.ref_id, r.distortion, r.level) for r in rows] == [
        ("A0001_00_00.bmp", 1520.0648, "A0001", "00", 0),
        ("A0001_06_26.bmp", 1294.8478, "A0001", "06", 26),
        ("A0002_05_03.bmp", 1054.1297, "A0002", "05", 3),
    ]
    assert rows[0].image == os.path.join(str(tmp_path), "Train_Dis", "A0001_00_00.bmp")
    assert load_dataset("pipal", str(tmp_path), image_dir="Dist")[0].image == os.path.join(
        str(tmp_path), "Dist", "A0001_00_00.bmp")


def test_kadid10k(tmp_path: Path) -> None:
    write(tmp_path / "dmos.csv", "dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.496\n"
                                 "I01_01_05.png,I01.png,2.1,0.8\nI81_25_03.png,I81.png,3.0,0.3\n")

    rows = load_dataset("KADID-10k", str(tmp_path))

    assert [r.image for r in rows] == [os.path.join(str(tmp_path), "images", n)
                                       for n in ("I01_01_01.png", "I01_01_05.png", "I81_25_03.png")]
    assert [(r.score, r.ref_id, r.distortion, r.level) for r in rows] == [
        (4.57, "I01", "01", 1), (2.1, "I01", "01", 5), (3.0, "I81", "25", 3)]
    assert rows[0].score_type == "MOS" and rows[0].score_range == (1.0, 5.0)  # 'dmos' column is MOS-like
    assert rows[0].labels == {"var": 0.496}


# --- authentic and AI-generated datasets (one table or .mat, no references) ----------------------


def test_livec_drops_the_seven_training_images(tmp_path: Path) -> None:
    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.bmp", "100.bmp", "1000.JPG"]
    mos = np.array([50.0] * 7 + [63.9, 25.3, 80.5])
    (tmp_path / "Data").mkdir()
    scipy.io.savemat(tmp_path / "Data" / "AllImages_release.mat", {"AllImages_release": cells(names).T})
    scipy.io.savemat(tmp_path / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos[None, :]})

    rows = load_dataset("LIVE Challenge", str(tmp_path))

    assert [(r.image, r.score) for r in rows] == [
        (os.path.join(str(tmp_path), "Images", "10.bmp"), 63.9),
        (os.path.join(str(tmp_path), "Images", "100.bmp"), 25.3),
        (os.path.join(str(tmp_path), "Images", "1000.JPG"), 80.5),
    ]
    assert all(r.ref_id is None and r.score_type == "MOS" for r in rows)


def test_aigciqa2023(tmp_path: Path) -> None:
    (tmp_path / "DATA" / "MOS").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "DATA" / "MOS" / "mosz1.mat", {"MOSz": np.array([[55.2], [40.1], [71.9]])})

    rows = load_dataset("AIGCIQA2023", str(tmp_path))

    assert [(os.path.relpath(r.image, tmp_path), r.score) for r in rows] == [
        (os.path.join("Image", "allimg", "0.png"), 55.2),
        (os.path.join("Image", "allimg", "1.png"), 40.1),
        (os.path.join("Image", "allimg", "2.png"), 71.9),
    ]


def test_aigciqa2023_missing_variable(tmp_path: Path) -> None:
    (tmp_path / "DATA" / "MOS").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "DATA" / "MOS" / "mosz1.mat", {"mos": np.ones((3, 1))})
    with pytest.raises(DatasetError, match=r"missing variable\(s\) \['MOSz'\]; found \['mos'\]"):
        load_dataset("aigciqa2023", str(tmp_path))


TableCase = tuple[str, Callable[[Path, str], None], list[tuple[str, float]], dict[str, float]]


def _koniq(root: Path, fmt: str) -> None:
    write(root / "koniq10k_scores_and_distributions.csv",
          '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
          '"10004473376.jpg",0,0,25,73,7,105,3.828571,0.527,77.383\n'
          '"10007357496.jpg",0,3,45,47,1,96,3.479167,0.585,68.148\n')


def _spaq(root: Path, fmt: str) -> None:
    write_sheet(root / "Annotations", "MOS and Image attribute scores", pd.DataFrame(
        {"Image name": ["00001.jpg", "00002.jpg"], "MOS": [42.65, 76.5], "Brightness": [43.1, 70.0],
         "Colorfulness": [33.0, 60.2], "Contrast": [40.4, 71.0], "Noisiness": [44.3, 70.1], "Sharpness": [46.0, 72.2]}),
        fmt)


def _bid(root: Path, fmt: str) -> None:
    write_sheet(root, "DatabaseGrades", pd.DataFrame({"Image Number": [1, 586], "Average Grade": [2.5, 4.1]}), fmt)


def _gfiqa(root: Path, fmt: str) -> None:
    write(root / "mos.csv", "img_name,mos\n00000.png,0.613\n00001.png,0.302\n")


def _agiqa3k(root: Path, fmt: str) -> None:
    write(root / "data.csv", "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"
                             "AttnGAN_normal_000.jpg,a cat,,,,1.5921,0.77,2.2,0.5\n"
                             "midjourney_normal_000.jpg,a dog,fat,,baroque,4.0113,0.64,3.9,0.4\n")


def _uwiqa(root: Path, fmt: str) -> None:
    write_sheet(root, "IQA_Value", pd.DataFrame({"name": [1, 890], "value": [0.6, 0.3]}), fmt)


def _pku(root: Path, fmt: str) -> None:
    write_sheet(root, "annotation", pd.DataFrame(
        {"Generated_image": ["I2I_0001.jpg", "T2I_0001.jpg"], "Image_prompt": ["0001.jpg", None],
         "Text_prompt": ["a house", "a tree"], "MOS_q": [3.2, 2.1], "MOS_a": [3.0, 2.5], "MOS_c": [4.1, 1.9]}), fmt)


def _flive(root: Path, fmt: str) -> None:
    write(root / "labels_image.csv", "name,mos,height,width\nAVA__149.jpg,56.7,640,480\n"
                                     "blur_dataset/motion0016.jpg,71.2,480,640\n")


TABLE_CASES: list[TableCase] = [
    ("koniq10k", _koniq, [("1024x768/10004473376.jpg", 77.383), ("1024x768/10007357496.jpg", 68.148)],
     {"MOS": 3.828571, "SD": 0.527, "c1": 0, "c2": 0, "c3": 25, "c4": 73, "c5": 7, "c_total": 105}),
    ("spaq", _spaq, [("TestImage/00001.jpg", 42.65), ("TestImage/00002.jpg", 76.5)],
     {"Brightness": 43.1, "Colorfulness": 33.0, "Contrast": 40.4, "Noisiness": 44.3, "Sharpness": 46.0}),
    ("bid", _bid, [("DatabaseImage0001.JPG", 2.5), ("DatabaseImage0586.JPG", 4.1)], {}),
    ("gfiqa20k", _gfiqa, [("image/00000.png", 0.613), ("image/00001.png", 0.302)], {}),
    ("agiqa3k", _agiqa3k, [("img/AttnGAN_normal_000.jpg", 1.5921), ("img/midjourney_normal_000.jpg", 4.0113)],
     {"std_quality": 0.77, "mos_align": 2.2, "std_align": 0.5}),
    ("uwiqa", _uwiqa, [("img/0001.png", 0.6), ("img/0890.png", 0.3)], {}),
    ("pku_aigiqa4k", _pku, [("All/I2I_0001.jpg", 3.2), ("All/T2I_0001.jpg", 2.1)], {"MOS_a": 3.0, "MOS_c": 4.1}),
    ("flive", _flive, [("database/AVA__149.jpg", 56.7), ("database/blur_dataset/motion0016.jpg", 71.2)], {}),
]


@pytest.mark.parametrize("fmt", SHEET_FORMATS)
@pytest.mark.parametrize(("name", "writer", "expected", "first_labels"), TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_table_datasets(tmp_path: Path, fmt: str, name: str, writer: Callable[[Path, str], None],
                        expected: list[tuple[str, float]], first_labels: dict[str, float]) -> None:
    writer(tmp_path, fmt)

    rows = load_dataset(name, str(tmp_path))

    assert [(r.image, r.score) for r in rows] == [(os.path.join(str(tmp_path), *p.split("/")), s) for p, s in expected]
    assert rows[0].labels == pytest.approx(first_labels)
    assert all(r.dataset == name and r.score_type == "MOS" and r.ref_id is None for r in rows)


@pytest.mark.parametrize(("name", "score_range"), [
    ("koniq10k", (0.0, 100.0)), ("spaq", (0.0, 100.0)), ("bid", (0.0, 5.0)), ("gfiqa20k", (0.0, 1.0)),
    ("agiqa3k", (0.0, 5.0)), ("uwiqa", (0.0, 1.0)), ("flive", (0.0, 100.0))])
def test_table_native_ranges(tmp_path: Path, name: str, score_range: tuple[float, float]) -> None:
    dict((c[0], c[1]) for c in TABLE_CASES)[name](tmp_path, "csv")
    assert {r.score_range for r in load_dataset(name, str(tmp_path))} == {score_range}


def test_image_dir_override(tmp_path: Path) -> None:
    _agiqa3k(tmp_path, "csv")
    rows = load_dataset("agiqa3k", str(tmp_path), image_dir="AGIQA-3K")
    assert rows[0].image == os.path.join(str(tmp_path), "AGIQA-3K", "AttnGAN_normal_000.jpg")


def test_s3_style_root_reads_through_fsspec_and_joins_uris() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/iqa/kadid/dmos.csv", b"dist_img,ref_img,dmos,var\nI07_03_02.png,I07.png,3.25,0.4\n")
    try:
        rows = load_dataset("kadid10k", "memory://iqa/kadid/")
    finally:
        fs.rm("/iqa", recursive=True)
    assert [(r.image, r.score, r.ref_id) for r in rows] == [("memory://iqa/kadid/images/I07_03_02.png", 3.25, "I07")]


def test_s3_root_through_a_moto_server_with_storage_config() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        storage = StorageConfig(endpoint_url=f"http://{host}:{port}", key="k", secret="s", region="us-east-1")
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=storage.endpoint_url, region_name="us-east-1", aws_access_key_id="k",
            aws_secret_access_key="s")
        client.create_bucket(Bucket="iqa")
        client.put_object(Bucket="iqa", Key="tid/mos_with_names.txt", Body=b"5.5 i03_02_4.bmp\n")
        client.put_object(Bucket="iqa", Key="pipal/Train_Label/A0009.txt", Body=b"A0009_01_02.bmp,1400.5\n")

        tid = load_dataset("tid2013", "s3://iqa/tid", storage=storage)
        pipal = load_dataset("pipal", "s3://iqa/pipal/", storage=storage)
    finally:
        server.stop()
    assert [(r.image, r.score, r.ref_id) for r in tid] == [("s3://iqa/tid/distorted_images/i03_02_4.bmp", 5.5, "I03")]
    assert [(r.image, r.score) for r in pipal] == [("s3://iqa/pipal/Train_Dis/A0009_01_02.bmp", 1400.5)]


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_known_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as error:
        load_dataset("imagenet", str(tmp_path))
    message = str(error.value)
    assert "unknown dataset 'imagenet'" in message
    for name in ("live", "csiq", "tid2013", "kadid10k", "koniq10k", "pipal", "flive", "synthetic"):
        assert name in message
    assert len(dataset_names()) == 16


def test_aliases_resolve(tmp_path: Path) -> None:
    _flive(tmp_path, "csv")
    assert load_dataset("LIVEFB", str(tmp_path)) == load_dataset("flive", str(tmp_path))


def test_missing_annotation_file_lists_candidates(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"spaq: no annotation file .*MOS and Image attribute scores.xlsx"):
        load_dataset("spaq", str(tmp_path))


def test_missing_column_is_named(tmp_path: Path) -> None:
    write(tmp_path / "mos.csv", "image,score\n0.png,0.5\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['img_name'\]; found \['image', 'score'\]"):
        load_dataset("gfiqa20k", str(tmp_path))


def test_non_numeric_score_names_row_and_column(tmp_path: Path) -> None:
    write(tmp_path / "mos.csv", "img_name,mos\n0.png,0.5\n1.png,n/a?\n")
    with pytest.raises(DatasetError, match=r"mos.csv: row 3 column 'mos': score 'n/a\?' is not a number"):
        load_dataset("gfiqa20k", str(tmp_path))


def test_unknown_option_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset 'live' takes no option\(s\) \['label'\]"):
        load_dataset("live", str(tmp_path), label="ssim")


def test_arrow_round_trip(tmp_path: Path) -> None:
    write(tmp_path / "mos_with_names.txt", "5.5 i01_01_1.bmp\n4.0 i02_03_4.bmp\n")
    rows = load_dataset("tid2013", str(tmp_path))
    rows.append(IQARow("x", "/x.png", 1.0, "DMOS", (0.0, 2.0), labels={"a": 0.5}))
    table = to_arrow(rows)
    assert table.num_rows == 3 and table.column("score_hi").to_pylist() == [9.0, 9.0, 2.0]
    assert from_arrow(table) == rows


def test_xlsx_without_openpyxl_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing_engine(*args: object, **kwargs: object) -> pd.DataFrame:
        raise ImportError("Missing optional dependency 'openpyxl'.")

    monkeypatch.setattr(pd, "read_excel", missing_engine)
    (tmp_path / "DatabaseGrades.xlsx").write_bytes(b"PK")
    with pytest.raises(DatasetError, match=r"DatabaseGrades.xlsx: reading .xlsx needs openpyxl .* \.csv extension"):
        load_dataset("bid", str(tmp_path))


def test_damaged_workbook_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "IQA_Value.xlsx").write_bytes(b"not a zip archive")
    with pytest.raises(DatasetError, match=r"IQA_Value.xlsx: "):
        load_dataset("uwiqa", str(tmp_path))


def test_numeric_looking_names_keep_their_zeros(tmp_path: Path) -> None:
    write(tmp_path / "mos.csv", "img_name,mos\n00007,0.25\n")
    assert load_dataset("gfiqa20k", str(tmp_path))[0].image == os.path.join(str(tmp_path), "image", "00007")
