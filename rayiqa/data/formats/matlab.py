"""Datasets annotated by MATLAB .mat files: LIVE (release 2), LIVE Challenge, AIGCIQA2023."""
from __future__ import annotations

import numpy as np

from rayiqa.data.annotations import find_file, mat_strings, read_mat, to_score
from rayiqa.data.rows import DatasetError, IQARow
from rayiqa.io.fs import Storage, absolute_root, join_path

# LIVE release 2: dmos.mat and refnames_all.mat list the 982 images folder by folder, in this order.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
# LIVE Challenge: the first 7 entries of AllImages_release.mat are the training images shown to
# subjects before the study (Images/trainingImages); the 1162 rated images follow.
LIVEC_TRAINING_IMAGES = 7


def _check_length(name: str, values: np.ndarray, expected: int, uri: str) -> None:
    if values.size != expected:
        raise DatasetError(f"{uri}: variable {name!r} has {values.size} entries, expected {expected}")


def load_live(root: str, storage: Storage = None) -> list[IQARow]:
    """LIVE IQA release 2: `dmos.mat` (dmos, orgs) + `refnames_all.mat` + the five folders.

    Entries with orgs == 1 are the undistorted references and are dropped (779 rows remain).
    Images are <folder>/img<k>.bmp with k counted from 1 inside each folder; DMOS, higher = worse.
    """
    root = absolute_root(root)
    dmos_uri = find_file(root, ("dmos.mat",), storage, "live")
    refs_uri = find_file(root, ("refnames_all.mat",), storage, "live")
    mat = read_mat(dmos_uri, storage, ("dmos", "orgs"))
    refnames = mat_strings(read_mat(refs_uri, storage, ("refnames_all",))["refnames_all"])
    images = [f"{folder}/img{k}.bmp" for folder, count in LIVE_FOLDERS for k in range(1, count + 1)]
    dmos, orgs = mat["dmos"].ravel(), mat["orgs"].ravel()
    _check_length("dmos", dmos, len(images), dmos_uri)
    _check_length("orgs", orgs, len(images), dmos_uri)
    _check_length("refnames_all", np.asarray(refnames), len(images), refs_uri)
    return [
        IQARow(
            dataset="live",
            image=join_path(root, *image.split("/")),
            score=to_score(dmos[i], dmos_uri, f"dmos[{i}]"),
            score_type="DMOS",
            score_range=(1.0, 100.0),
            ref_id=refnames[i].rsplit(".", 1)[0],
            distortion=image.split("/")[0],
        )
        for i, image in enumerate(images)
        if not orgs[i]
    ]


def load_livec(root: str, storage: Storage = None) -> list[IQARow]:
    """LIVE In the Wild Challenge: Data/AllImages_release.mat + Data/AllMOS_release.mat, Images/<name>."""
    root = absolute_root(root)
    names_uri = find_file(root, ("Data/AllImages_release.mat",), storage, "livec")
    mos_uri = find_file(root, ("Data/AllMOS_release.mat",), storage, "livec")
    names = mat_strings(read_mat(names_uri, storage, ("AllImages_release",))["AllImages_release"])
    mos = read_mat(mos_uri, storage, ("AllMOS_release",))["AllMOS_release"].ravel()
    _check_length("AllMOS_release", mos, len(names), mos_uri)
    return [
        IQARow(
            dataset="livec",
            image=join_path(root, "Images", names[i]),
            score=to_score(mos[i], mos_uri, f"AllMOS_release[{i}]"),
            score_type="MOS",
            score_range=(1.0, 100.0),
        )
        for i in range(LIVEC_TRAINING_IMAGES, len(names))
    ]


def load_aigciqa2023(root: str, storage: Storage = None) -> list[IQARow]:
    """AIGCIQA2023: DATA/MOS/mosz1.mat (variable MOSz, quality) indexes Image/allimg/<i>.png from 0.

    UNCONFIRMED against the official release (from PromptIQA's loader), including the 0-100 range.
    """
    root = absolute_root(root)
    uri = find_file(root, ("DATA/MOS/mosz1.mat",), storage, "aigciqa2023")
    mos = read_mat(uri, storage, ("MOSz",))["MOSz"].ravel()
    return [
        IQARow(
            dataset="aigciqa2023",
            image=join_path(root, "Image", "allimg", f"{i}.png"),
            score=to_score(value, uri, f"MOSz[{i}]"),
            score_type="MOS",
            score_range=(0.0, 100.0),
        )
        for i, value in enumerate(mos)
    ]
