"""Datasets annotated by plain-text lists: TID2013 (`mos_with_names.txt`) and PIPAL (Train_Label/*.txt)."""
from __future__ import annotations

from rayiqa.data.annotations import find_file, read_lines, split_distortion_name, to_score
from rayiqa.data.rows import DatasetError, IQARow
from rayiqa.io.fs import Storage, absolute_root, exists, glob, join_path

# PIPAL publishes Elo scores with no fixed scale; this nominal range covers the published values.
# Min-max normalisation (rayiqa.data.splits) uses each split's own min and max, not this range.
PIPAL_NOMINAL_RANGE = (1000.0, 2000.0)


def load_tid2013(root: str, storage: Storage = None) -> list[IQARow]:
    """TID2013: lines '<MOS> <name>' in mos_with_names.txt, images in distorted_images/.

    Names are i<ref>_<type>_<level>.bmp; MOS in [0, 9]; `mos_std.txt` (one value per line, same
    order) becomes the 'std' label when present.
    """
    root = absolute_root(root)
    uri = find_file(root, ("mos_with_names.txt",), storage, "tid2013")
    std_uri = join_path(root, "mos_std.txt")
    lines = read_lines(uri, storage)
    stds = read_lines(std_uri, storage) if exists(std_uri, storage) else None
    if stds is not None and len(stds) != len(lines):
        raise DatasetError(f"{std_uri}: {len(stds)} lines, but {uri} has {len(lines)}")
    rows = []
    for i, line in enumerate(lines):
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{uri}: line {i + 1}: expected '<mos> <image name>', got {line!r}")
        ref, distortion, level = split_distortion_name(fields[1])
        rows.append(
            IQARow(
                dataset="tid2013",
                image=join_path(root, "distorted_images", fields[1]),
                score=to_score(fields[0], uri, f"line {i + 1}"),
                score_type="MOS",
                score_range=(0.0, 9.0),
                ref_id=ref,
                distortion=distortion,
                level=level,
                labels={} if stds is None else {"std": to_score(stds[i], std_uri, f"line {i + 1}")},
            )
        )
    return rows


def load_pipal(root: str, storage: Storage = None, image_dir: str = "Train_Dis") -> list[IQARow]:
    """PIPAL (training part): lines '<name>,<elo>' in Train_Label/*.txt; names A<ref>_<type>_<index>.bmp.

    Elo is MOS-like (higher = better). `level` holds the variant index within a distortion type
    (PIPAL's third name field is not an ordered strength). UNCONFIRMED: image folder 'Train_Dis'.
    """
    root = absolute_root(root)
    label_files = glob(join_path(root, "Train_Label", "*.txt"), storage)
    if not label_files:
        raise DatasetError(f"pipal: no annotation file under {root!r}; looked for Train_Label/*.txt")
    rows = []
    for uri in label_files:
        for i, line in enumerate(read_lines(uri, storage)):
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 2:
                raise DatasetError(f"{uri}: line {i + 1}: expected '<image name>,<elo score>', got {line!r}")
            ref, distortion, level = split_distortion_name(fields[0])
            rows.append(
                IQARow(
                    dataset="pipal",
                    image=join_path(root, image_dir, fields[0]),
                    score=to_score(fields[1], uri, f"line {i + 1}"),
                    score_type="MOS",
                    score_range=PIPAL_NOMINAL_RANGE,
                    ref_id=ref,
                    distortion=distortion,
                    level=level,
                )
            )
    return rows
