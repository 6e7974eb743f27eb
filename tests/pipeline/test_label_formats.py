"""Label files: the paper's real VIA export, round trips of every format, errors, scaling."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from defectwatch.errors import DefectwatchError, LabelFormatError
from defectwatch.pipeline.label_formats import (
    Box,
    PointLabel,
    boxes_to_points,
    guess_format,
    kind_of,
    points_to_boxes,
    read_coco,
    read_labels,
    read_points_csv,
    read_via_csv,
    read_voc,
    with_image,
    write_coco,
    write_points_csv,
    write_via_csv,
    write_voc,
)
from tests.conftest import SHARED

REAL_VIA = SHARED / "real-wse2" / "labels_via.csv"

BOXES = [
    Box("a.png", "trough", 10, 20, 30, 44, 512, 512, label="Small Bright Trough"),
    Box("a.png", "peak", 100.5, 7, 120, 30.25, 512, 512, label="Large Bright Peak"),
    Box("b.png", "trough", 0, 0, 5, 5, 256, 128),
]


def _key(b: Box) -> tuple:
    return (b.image, b.kind, b.x0, b.y0, b.x1, b.y1, b.res_x, b.res_y)


def test_the_papers_via_file_parses_with_the_right_counts_per_kind():
    if not REAL_VIA.is_file():
        pytest.skip("../shared/fixtures/real-wse2 is not present")
    with open(REAL_VIA, newline="") as f:
        rows = list(csv.reader(f))
    expected: Counter[str] = Counter()
    for label, _x, _y, w, h, *_ in rows:
        if label.endswith("Trough") and float(w) > 0 and float(h) > 0:
            expected["trough"] += 1
        elif label.endswith("Peak") and float(w) > 0 and float(h) > 0:
            expected["peak"] += 1
    parsed = read_labels(REAL_VIA)
    assert parsed.format == "via"
    assert parsed.counts() == dict(expected)
    assert parsed.unknown() == {}
    reasons = Counter((s.label, s.reason) for s in parsed.skipped)
    assert reasons[("WSe2 Atoms", "not a defect")] == sum(r[0] == "WSe2 Atoms" for r in rows)
    assert sum(reasons.values()) + len(parsed.boxes) == len(rows)
    assert len(parsed.images()) == len({r[5] for r in rows})
    first = parsed.boxes[0]
    assert first.source.endswith(":1") and first.res_x == int(rows[0][6])


def test_via_round_trip_with_and_without_header(tmp_path: Path):
    for header in (False, True):
        path = write_via_csv(BOXES, tmp_path / f"via{header}.csv", header=header)
        back = read_via_csv(path)
        assert [_key(b) for b in back.boxes] == [_key(b) for b in BOXES]
        assert [b.label for b in back.boxes] == [
            "Small Bright Trough",
            "Large Bright Peak",
            "Trough",
        ]
    assert path.read_text().splitlines()[1].startswith("Small Bright Trough,10,20,20,24,a.png")


def test_voc_round_trip(tmp_path: Path):
    files = write_voc(BOXES, tmp_path / "voc")
    assert [f.name for f in files] == ["a.xml", "b.xml"]
    back = [b for f in files for b in read_voc(f).boxes]
    assert [_key(b) for b in back] == [_key(b) for b in BOXES]
    assert guess_format(files[0]) == "voc"


def test_coco_round_trip(tmp_path: Path):
    path = write_coco(BOXES, tmp_path / "coco.json")
    back = read_labels(path)
    assert back.format == "coco"
    assert sorted(map(_key, back.boxes)) == sorted(map(_key, BOXES))
    assert {c["name"] for c in json.loads(path.read_text())["categories"]} == {
        "Small Bright Trough",
        "Large Bright Peak",
        "Trough",
    }


def test_points_csv_round_trip(tmp_path: Path):
    points = [
        PointLabel("scan_001", 10.5, 20.25, "trough", 0.6),
        PointLabel("scan_001", 3, 4, "peak", None),
    ]
    path = write_points_csv(points, tmp_path / "points.csv")
    assert guess_format(path) == "csv"
    back = read_labels(path)
    assert [(p.scan, p.row, p.col, p.kind, p.radius_nm) for p in back.points] == [
        (p.scan, p.row, p.col, p.kind, p.radius_nm) for p in points
    ]
    assert back.counts() == {"trough": 1, "peak": 1}


def test_class_names_and_class_map():
    assert kind_of("Small Dim Trough") == "trough"
    assert kind_of("large  bright peak") == "peak"
    assert kind_of("peak") == "peak" and kind_of("Troughs") == "trough"
    assert kind_of("WSe2 Atoms") == "" and kind_of("MoSe2_atoms") == ""
    assert kind_of("vacancy") is None
    assert kind_of("Vacancy", class_map={"vacancy": "trough"}) == "trough"
    with pytest.raises(ValueError, match="class_map"):
        kind_of("x", class_map={"x": "hole"})


def test_unknown_classes_are_reported_or_refused(tmp_path: Path):
    path = tmp_path / "v.csv"
    path.write_text(
        "Vacancy,1,2,3,4,a.png,64,64\nSmall Bright Trough,1,2,3,4,a.png,64,64\n"
        "Vacancy,5,5,3,3,a.png,64,64\n"
    )
    parsed = read_via_csv(path)
    assert parsed.unknown() == {"Vacancy": 2} and parsed.counts()["trough"] == 1
    with pytest.raises(LabelFormatError, match=r"v\.csv:1: unknown class 'Vacancy'"):
        read_via_csv(path, unknown="error")
    mapped = read_via_csv(path, class_map={"vacancy": "trough"})
    assert mapped.counts()["trough"] == 3 and mapped.unknown() == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("Small Bright Trough,1,2,3,4,a.png,64\n", r"bad\.csv:1: expected 8 columns"),
        (
            "Small Bright Trough,1,2,3,4,a.png,64,64\nLarge Bright Peak,1,two,3,4,a.png,64,64\n",
            r"bad\.csv:2: y must be a number, got 'two'",
        ),
        ("Small Bright Trough,1,2,3,4,a.png,64,0\n", r"bad\.csv:1: resY must be a positive"),
    ],
)
def test_malformed_via_rows_name_file_and_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LabelFormatError, match=message) as err:
        read_labels(path)
    assert isinstance(err.value, DefectwatchError)


def test_empty_boxes_are_skipped(tmp_path: Path):
    path = tmp_path / "v.csv"
    path.write_text("Large Bright Peak,908,1372,1,0,a.png,2048,2048\n")
    parsed = read_via_csv(path)
    assert parsed.boxes == () and parsed.skipped[0].reason == "empty box"


def test_malformed_voc_coco_and_points(tmp_path: Path):
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><filename>a.png</filename>\n<object><name>peak</name></annotation>")
    with pytest.raises(LabelFormatError, match=r"a\.xml:2: not well-formed"):
        read_voc(xml)
    xml.write_text(
        "<annotation><filename>a.png</filename><object><name>peak</name></object></annotation>"
    )
    with pytest.raises(LabelFormatError, match=r"<object> 1: missing <bndbox>"):
        read_voc(xml)
    coco = tmp_path / "c.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "categories": [{"id": 1, "name": "peak"}],
                "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            }
        )
    )
    with pytest.raises(LabelFormatError, match=r"annotations\[0\]: image_id 2"):
        read_coco(coco)
    coco.write_text("{")
    with pytest.raises(LabelFormatError, match="not valid JSON"):
        read_coco(coco)
    pts = tmp_path / "p.csv"
    pts.write_text("scan,row,col\nx,1,2\n")
    with pytest.raises(LabelFormatError, match=r"missing \['kind'\]"):
        read_points_csv(pts)
    pts.write_text("scan,row,col,kind,radius_nm\nx,1,2,trough,-1\n")
    with pytest.raises(LabelFormatError, match=r"p\.csv:2: radius_nm must be positive"):
        read_points_csv(pts)


def test_vias_own_csv_export(tmp_path: Path):
    path = tmp_path / "via_export.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "filename",
                "file_size",
                "file_attributes",
                "region_count",
                "region_id",
                "region_shape_attributes",
                "region_attributes",
            ]
        )
        w.writerow(
            [
                "s.png",
                100,
                "{}",
                2,
                0,
                json.dumps({"name": "rect", "x": 4, "y": 6, "width": 10, "height": 8}),
                json.dumps({"class": "Small Dim Peak"}),
            ]
        )
        w.writerow(
            [
                "s.png",
                100,
                "{}",
                2,
                1,
                json.dumps({"name": "rect", "x": 40, "y": 6, "width": 10, "height": 8}),
                json.dumps({"type": {"trough": True}}),
            ]
        )
    parsed = read_labels(path)
    assert [(b.kind, b.x0, b.y1, b.res_x) for b in parsed.boxes] == [
        ("peak", 4, 14, None),
        ("trough", 40, 14, None),
    ]


def test_boxes_scale_to_a_scans_pixels_and_back():
    # a box drawn on a 512 px render of a 100 nm frame, placed on a 1024 px scan of it
    box = Box("r.jpg", "trough", 99, 199, 109, 209, 512, 512)
    (p,) = boxes_to_points([box], nx=1024, ny=1024, width_nm=100.0, height_nm=100.0, scan="scan_7")
    assert (p.scan, p.row, p.col) == ("scan_7", 407.5, 207.5)  # centre 104 -> 208 px edge
    assert p.radius_nm == pytest.approx(0.5 * 10 / 512 * 100)
    (b,) = points_to_boxes(
        [p], nx=1024, ny=1024, width_nm=100.0, height_nm=100.0, image="r.jpg", res_x=512, res_y=512
    )
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((99, 199, 109, 209))
    with pytest.raises(LabelFormatError, match="aspect"):
        boxes_to_points([box], nx=1024, ny=512, width_nm=100.0, height_nm=50.0)
    # a 1024 px render placed on a 512 px scan of the same 50 nm frame: half the pixels
    corner = Box("r.jpg", "peak", 600, 0, 610, 10, 1024, 1024)
    assert boxes_to_points([corner], nx=512, ny=512, width_nm=50, height_nm=50) == [
        PointLabel("r.jpg", 2.0, 302.0, "peak", pytest.approx(10 / 1024 * 50 / 2), "", "")
    ]
    far = Box("r.jpg", "peak", 1100, 0, 1110, 10, 1024, 1024)
    assert boxes_to_points([far], nx=512, ny=512, width_nm=50, height_nm=50) == []
    assert with_image([box], "other.sxm")[0].image == "other.sxm"
