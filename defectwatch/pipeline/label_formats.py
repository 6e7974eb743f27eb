"""Label files <-> boxes and points: VIA CSV (as the paper's annotators exported it), Pascal VOC
XML, COCO JSON, and our own point CSV.

Coordinates
-----------
A `Box` lies in the pixels of the image it was drawn on (``res_x`` x ``res_y``), as continuous
coordinates with 0 at the left / top edge of the first pixel (VIA's and COCO's convention; Pascal
VOC's 1-based inclusive pixel indices are converted: ``x0 = xmin - 1, x1 = xmax``). A
`PointLabel` lies in a scan's pixel grid with the convention of `defectwatch.pipeline.detect`:
``(row, col)`` float pixels, pixel centres at integers, row 0 = top of the frame.
`boxes_to_points` maps one onto the other; `points_to_boxes` goes back for export.

Class names
-----------
The paper's eight classes "Large|Small Bright|Dim Peak|Trough" map to ``peak`` / ``trough``
(as do plain "peak" / "trough"); names ending in "atoms", "lattice", "background" or
"substrate" (the paper's "WSe2 Atoms" rows mark lattice areas) are not defects and are skipped.
Other names are reported in `ParsedLabels.skipped` (or raise with ``unknown="error"``); a
``class_map`` maps a lab's own names, e.g. ``{"vacancy": "trough", "adatom": "peak"}``.

Malformed files raise `defectwatch.errors.LabelFormatError` naming the file and line (or element).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from defectwatch.domain import KINDS
from defectwatch.errors import LabelFormatError

log = logging.getLogger(__name__)

FORMATS = ("via", "voc", "coco", "csv")
VIA_COLUMNS = ("label", "x", "y", "width", "height", "filename", "resX", "resY")
POINT_COLUMNS = ("scan", "row", "col", "kind", "radius_nm")

_DEFECT = re.compile(r"^(?:(?:large|small)\s+)?(?:(?:bright|dim)\s+)?(peak|trough)s?$")
_NOT_DEFECT = re.compile(r"(?:^|\s)(?:atoms?|lattice|background|substrate)$")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Box:
    """One labelled box, in the pixels of the ``res_x`` x ``res_y`` image it was drawn on.

    ``image``: the image's file name as the label file gives it (match scans by its stem);
    ``x0 < x1``, ``y0 < y1``: edges, 0 = left / top edge of the image; ``res_x, res_y``: None
    when the file does not say (then the scan's own size is assumed); ``source``: ``file:line``
    or ``file:element``; ``label``: the class name as the file gives it.
    """

    image: str
    kind: str  # "trough" | "peak"
    x0: float
    y0: float
    x1: float
    y1: float
    res_x: int | None
    res_y: int | None
    source: str = ""
    label: str = ""

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@dataclass(frozen=True)
class PointLabel:
    """One labelled defect position in a scan's pixels (see the module doc for the convention).

    ``radius_nm``: the defect's radius when known (from a box or the CSV), else None (use a
    per-class default).
    """

    scan: str
    row: float
    col: float
    kind: str  # "trough" | "peak"
    radius_nm: float | None = None
    source: str = ""
    label: str = ""


@dataclass(frozen=True)
class Skipped:
    """A row or element that was read but is not a defect label, and why."""

    source: str
    label: str
    reason: str  # "not a defect" | "unknown class" | "empty box"


@dataclass(frozen=True)
class ParsedLabels:
    """What one label file holds: boxes (VIA, VOC, COCO) or points (our CSV), and what was
    skipped."""

    path: str
    format: str  # one of FORMATS
    boxes: tuple[Box, ...] = ()
    points: tuple[PointLabel, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    def counts(self) -> dict[str, int]:
        """Labels per kind (boxes and points together)."""
        c = Counter(b.kind for b in self.boxes) + Counter(p.kind for p in self.points)
        return {k: c.get(k, 0) for k in KINDS}

    def unknown(self) -> dict[str, int]:
        """Class names that were not recognised, with how often each occurred."""
        return dict(Counter(s.label for s in self.skipped if s.reason == "unknown class"))

    def images(self) -> list[str]:
        """The distinct image (boxes) or scan (points) names, sorted."""
        return sorted({b.image for b in self.boxes} | {p.scan for p in self.points})


# --- class names ---------------------------------------------------------------------------


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def kind_of(name: str, *, class_map: Mapping[str, str | None] | None = None) -> str | None:
    """A class name -> ``"trough"`` / ``"peak"``; ``""`` when it names no defect (lattice,
    background); None when unknown. ``class_map`` (names -> kind, or None for "not a defect")
    is consulted first, case- and space-insensitively."""
    key = _norm(name)
    if class_map:
        for k, v in class_map.items():
            if _norm(k) == key:
                if v is None or v == "":
                    return ""
                if v not in KINDS:
                    raise ValueError(f"class_map maps {k!r} to {v!r}; use one of {KINDS} or None")
                return v
    m = _DEFECT.match(key)
    if m:
        return m.group(1)
    if _NOT_DEFECT.search(key):
        return ""
    return None


class _Classifier:
    def __init__(self, class_map: Mapping[str, str | None] | None, unknown: str) -> None:
        if unknown not in ("report", "error"):
            raise ValueError(f"unknown must be 'report' or 'error', got {unknown!r}")
        self.class_map = class_map
        self.unknown = unknown
        self.skipped: list[Skipped] = []

    def __call__(self, name: str, source: str) -> str | None:
        kind = kind_of(name, class_map=self.class_map)
        if kind is None:
            if self.unknown == "error":
                raise LabelFormatError(
                    f"{source}: unknown class {name!r}; known are 'Large|Small Bright|Dim "
                    "Peak|Trough', 'peak', 'trough' and non-defects such as 'WSe2 Atoms' "
                    "(map your own names with a class map)"
                )
            self.skipped.append(Skipped(source, name, "unknown class"))
            return None
        if kind == "":
            self.skipped.append(Skipped(source, name, "not a defect"))
            return None
        return kind

    def report(self, path: PathLike) -> None:
        unknown = Counter(s.label for s in self.skipped if s.reason == "unknown class")
        if unknown:
            log.warning("%s: skipped labels of unknown classes %s", path, dict(unknown))


def _float(value: str, what: str, source: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LabelFormatError(f"{source}: {what} must be a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise LabelFormatError(f"{source}: {what} must be finite, got {value!r}")
    return v


def _size(value: Any, what: str, source: str) -> int:
    v = _float(str(value), what, source)
    if v <= 0 or v != int(v):
        raise LabelFormatError(
            f"{source}: {what} must be a positive whole number of pixels, got {value!r}"
        )
    return int(v)


def _box(
    image: str,
    kind: str,
    x: float,
    y: float,
    w: float,
    h: float,
    res_x: int | None,
    res_y: int | None,
    source: str,
    label: str,
    skipped: list[Skipped],
) -> Box | None:
    if w <= 0 or h <= 0:
        skipped.append(Skipped(source, label, "empty box"))
        log.info("%s: skipped an empty %s box (width %g, height %g)", source, label, w, h)
        return None
    return Box(image, kind, x, y, x + w, y + h, res_x, res_y, source, label)


# --- reading -------------------------------------------------------------------------------


def read_labels(
    path: PathLike,
    *,
    format: str | None = None,
    class_map: Mapping[str, str | None] | None = None,
    unknown: str = "report",
) -> ParsedLabels:
    """Read a label file of any supported format (guessed from its name and first line when
    ``format`` is None: ``.xml`` VOC, ``.json`` COCO, ``.csv`` ours when its header names
    ``row`` and ``col``, else VIA)."""
    path = Path(path)
    fmt = format or guess_format(path)
    if fmt == "via":
        return read_via_csv(path, class_map=class_map, unknown=unknown)
    if fmt == "voc":
        return read_voc(path, class_map=class_map, unknown=unknown)
    if fmt == "coco":
        return read_coco(path, class_map=class_map, unknown=unknown)
    if fmt == "csv":
        return read_points_csv(path, class_map=class_map, unknown=unknown)
    raise LabelFormatError(f"{path}: unknown label format {fmt!r}; use one of {FORMATS}")


def guess_format(path: PathLike) -> str:
    """``via`` | ``voc`` | ``coco`` | ``csv`` from the file name and its first line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "voc"
    if suffix == ".json":
        return "coco"
    if suffix in (".csv", ".txt"):
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                first = next((r for r in csv.reader(f) if any(c.strip() for c in r)), [])
        except OSError as e:
            raise LabelFormatError(f"{path}: cannot read ({e.strerror})") from None
        header = {c.strip().lower() for c in first}
        if {"row", "col"} <= header:
            return "csv"
        return "via"
    raise LabelFormatError(
        f"{path}: cannot tell the label format from the suffix "
        f"{suffix!r}; name it (one of {FORMATS})"
    )


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise LabelFormatError(f"{path}: cannot read ({e.strerror})") from None


def read_via_csv(
    path: PathLike, *, class_map: Mapping[str, str | None] | None = None, unknown: str = "report"
) -> ParsedLabels:
    """VIA boxes: the paper's export ``label,x,y,width,height,filename,resX,resY`` (header row
    optional; x, y = top-left corner in the pixels of a resX x resY render), or VIA's own CSV
    export (``filename,file_size,file_attributes,region_count,region_id,
    region_shape_attributes,region_attributes``; rect regions, class = the first text value of
    the region attributes; no image size, so the scan's own is assumed)."""
    path = Path(path)
    classify = _Classifier(class_map, unknown)
    boxes: list[Box] = []
    with _open_text(path) as f:
        reader = csv.reader(f)
        first = True
        native = False
        for row in reader:
            source = f"{path}:{reader.line_num}"
            if not any(c.strip() for c in row):
                continue
            if first:
                first = False
                head = [c.strip().lower() for c in row]
                if head[:2] == ["filename", "file_size"]:
                    native = True
                    continue
                if head and head[0] == "label":
                    continue
            if native:
                box = _via_native_row(row, source, classify)
            else:
                box = _via_row(row, source, classify)
            if box is not None:
                boxes.append(box)
    classify.report(path)
    return ParsedLabels(str(path), "via", tuple(boxes), (), tuple(classify.skipped))


def _via_row(row: list[str], source: str, classify: _Classifier) -> Box | None:
    if len(row) != len(VIA_COLUMNS):
        raise LabelFormatError(
            f"{source}: expected {len(VIA_COLUMNS)} columns "
            f"{','.join(VIA_COLUMNS)}, got {len(row)}: {row!r}"
        )
    label = row[0].strip()
    kind = classify(label, source)
    if kind is None:
        return None
    x, y, w, h = (_float(v, name, source) for v, name in zip(row[1:5], VIA_COLUMNS[1:5]))
    image = row[5].strip()
    if not image:
        raise LabelFormatError(f"{source}: the filename column is empty")
    res_x, res_y = _size(row[6], "resX", source), _size(row[7], "resY", source)
    return _box(image, kind, x, y, w, h, res_x, res_y, source, label, classify.skipped)


def _via_native_row(row: list[str], source: str, classify: _Classifier) -> Box | None:
    if len(row) != 7:
        raise LabelFormatError(
            f"{source}: expected 7 columns of VIA's CSV export "
            f"(filename,...,region_attributes), got {len(row)}"
        )
    try:
        shape = json.loads(row[5] or "{}")
        attrs = json.loads(row[6] or "{}")
    except json.JSONDecodeError as e:
        raise LabelFormatError(f"{source}: region attributes are not JSON ({e.msg})") from None
    if not shape:
        return None  # an image without regions
    if shape.get("name") != "rect":
        raise LabelFormatError(
            f"{source}: only rect regions are supported, got {shape.get('name')!r}"
        )
    label = ""
    for value in attrs.values():
        if isinstance(value, str) and value.strip():
            label = value.strip()
            break
        if isinstance(value, dict):  # checkbox / dropdown: {"option": true}
            chosen = [k for k, v in value.items() if v]
            if chosen:
                label = chosen[0]
                break
    kind = classify(label, source)
    if kind is None:
        return None
    x, y, w, h = (_float(shape.get(k), k, source) for k in ("x", "y", "width", "height"))
    return _box(row[0].strip(), kind, x, y, w, h, None, None, source, label, classify.skipped)


def _text(elem: ET.Element, tag: str, source: str) -> str:
    found = elem.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise LabelFormatError(f"{source}: missing <{tag}>")
    return found.text.strip()


def read_voc(
    path: PathLike, *, class_map: Mapping[str, str | None] | None = None, unknown: str = "report"
) -> ParsedLabels:
    """One Pascal VOC annotation file (one image): ``<filename>``, ``<size>`` and an
    ``<object>`` per box with ``<name>`` and a 1-based inclusive ``<bndbox>``."""
    path = Path(path)
    classify = _Classifier(class_map, unknown)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise LabelFormatError(f"{path}:{line}: not well-formed XML (column {col})") from None
    except OSError as e:
        raise LabelFormatError(f"{path}: cannot read ({e.strerror})") from None
    if root.tag != "annotation":
        raise LabelFormatError(
            f"{path}: the root element is <{root.tag}>, not <annotation> "
            "(is this a Pascal VOC file?)"
        )
    image = _text(root, "filename", str(path))
    size = root.find("size")
    res_x = res_y = None
    if size is not None:
        res_x = _size(_text(size, "width", f"{path}:<size>"), "width", f"{path}:<size>")
        res_y = _size(_text(size, "height", f"{path}:<size>"), "height", f"{path}:<size>")
    boxes: list[Box] = []
    for i, obj in enumerate(root.findall("object")):
        source = f"{path}:<object> {i + 1}"
        label = _text(obj, "name", source)
        kind = classify(label, source)
        if kind is None:
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            raise LabelFormatError(f"{source}: missing <bndbox>")
        xmin, ymin, xmax, ymax = (
            _float(_text(bnd, t, source), t, source) for t in ("xmin", "ymin", "xmax", "ymax")
        )
        box = _box(
            image,
            kind,
            xmin - 1,
            ymin - 1,
            xmax - xmin + 1,
            ymax - ymin + 1,
            res_x,
            res_y,
            source,
            label,
            classify.skipped,
        )
        if box is not None:
            boxes.append(box)
    classify.report(path)
    return ParsedLabels(str(path), "voc", tuple(boxes), (), tuple(classify.skipped))


def read_coco(
    path: PathLike, *, class_map: Mapping[str, str | None] | None = None, unknown: str = "report"
) -> ParsedLabels:
    """COCO object detection JSON: ``images`` (id, file_name, width, height), ``categories``
    (id, name) and ``annotations`` (image_id, category_id, bbox = [x, y, width, height])."""
    path = Path(path)
    classify = _Classifier(class_map, unknown)
    try:
        with open(path, encoding="utf-8-sig") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise LabelFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except OSError as e:
        raise LabelFormatError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise LabelFormatError(
            f"{path}: a COCO file needs lists 'images', 'annotations' and 'categories'"
        )
    images: dict[Any, tuple[str, int | None, int | None]] = {}
    for i, im in enumerate(doc["images"]):
        source = f"{path}:images[{i}]"
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise LabelFormatError(f"{source}: an image needs 'id' and 'file_name'")
        w, h = im.get("width"), im.get("height")
        images[im["id"]] = (
            str(im["file_name"]),
            _size(w, "width", source) if w is not None else None,
            _size(h, "height", source) if h is not None else None,
        )
    cats: dict[Any, str] = {}
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise LabelFormatError(f"{path}:categories[{i}]: a category needs 'id' and 'name'")
        cats[c["id"]] = str(c["name"])
    boxes: list[Box] = []
    for i, a in enumerate(doc["annotations"]):
        source = f"{path}:annotations[{i}]"
        if not isinstance(a, dict):
            raise LabelFormatError(f"{source}: not an object")
        if a.get("image_id") not in images:
            raise LabelFormatError(f"{source}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in cats:
            raise LabelFormatError(
                f"{source}: category_id {a.get('category_id')!r} is not in 'categories'"
            )
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise LabelFormatError(f"{source}: bbox must be [x, y, width, height], got {bbox!r}")
        label = cats[a["category_id"]]
        kind = classify(label, source)
        if kind is None:
            continue
        x, y, w, h = (_float(str(v), n, source) for v, n in zip(bbox, ("x", "y", "w", "h")))
        image, res_x, res_y = images[a["image_id"]]
        box = _box(image, kind, x, y, w, h, res_x, res_y, source, label, classify.skipped)
        if box is not None:
            boxes.append(box)
    classify.report(path)
    return ParsedLabels(str(path), "coco", tuple(boxes), (), tuple(classify.skipped))


def read_points_csv(
    path: PathLike, *, class_map: Mapping[str, str | None] | None = None, unknown: str = "report"
) -> ParsedLabels:
    """Our point CSV: a header naming ``scan, row, col, kind`` and optionally ``radius_nm``
    (other columns are ignored); ``row, col`` in the scan's pixels, radius empty = unknown."""
    path = Path(path)
    classify = _Classifier(class_map, unknown)
    points: list[PointLabel] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in POINT_COLUMNS[:4] if c not in fields]
        if missing:
            raise LabelFormatError(
                f"{path}:1: the header must name scan,row,col,kind[,radius_nm]; missing {missing}"
            )
        reader.fieldnames = fields
        for rec in reader:
            source = f"{path}:{reader.line_num}"
            if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
                continue
            if None in rec:
                raise LabelFormatError(f"{source}: more cells than header columns")
            scan = (rec.get("scan") or "").strip()
            if not scan:
                raise LabelFormatError(f"{source}: the scan column is empty")
            label = (rec.get("kind") or "").strip()
            kind = classify(label, source)
            if kind is None:
                continue
            row = _float(rec.get("row") or "", "row", source)
            col = _float(rec.get("col") or "", "col", source)
            radius_txt = (rec.get("radius_nm") or "").strip()
            radius = _float(radius_txt, "radius_nm", source) if radius_txt else None
            if radius is not None and radius <= 0:
                raise LabelFormatError(f"{source}: radius_nm must be positive, got {radius_txt}")
            points.append(PointLabel(scan, row, col, kind, radius, source, label))
    classify.report(path)
    return ParsedLabels(str(path), "csv", (), tuple(points), tuple(classify.skipped))


# --- writing -------------------------------------------------------------------------------


def _num(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else format(v, ".10g")


def _label(box: Box) -> str:
    """The box's own class name when it agrees with its kind, else "Trough" / "Peak"."""
    if box.label and kind_of(box.label) == box.kind:
        return box.label
    return box.kind.capitalize()


def _need_res(box: Box) -> tuple[int, int]:
    if box.res_x is None or box.res_y is None:
        raise ValueError(
            f"box {box.source or box.image!r} has no image size (res_x, res_y); "
            "set it before writing this format"
        )
    return box.res_x, box.res_y


def write_via_csv(boxes: Iterable[Box], path: PathLike, *, header: bool = False) -> Path:
    """Write boxes as the paper's VIA export (no header row unless ``header``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(VIA_COLUMNS)
        for b in boxes:
            rx, ry = _need_res(b)
            w.writerow(
                [_label(b), _num(b.x0), _num(b.y0), _num(b.width), _num(b.height), b.image, rx, ry]
            )
    return path


def write_voc(boxes: Iterable[Box], folder: PathLike) -> list[Path]:
    """Write one Pascal VOC XML per image into ``folder`` (named by the image's stem)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, list[Box]] = {}
    for b in boxes:
        by_image.setdefault(b.image, []).append(b)
    written = []
    for image, group in sorted(by_image.items()):
        rx, ry = _need_res(group[0])
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = image
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(rx)
        ET.SubElement(size, "height").text = str(ry)
        ET.SubElement(size, "depth").text = "1"
        for b in group:
            if (b.res_x, b.res_y) != (rx, ry):
                raise ValueError(
                    f"boxes of {image!r} disagree on its size: {rx}x{ry} and {b.res_x}x{b.res_y}"
                )
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = _label(b)
            ET.SubElement(obj, "difficult").text = "0"
            bnd = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", b.x0 + 1), ("ymin", b.y0 + 1), ("xmax", b.x1), ("ymax", b.y1)):
                ET.SubElement(bnd, tag).text = _num(v)
        ET.indent(root)
        out = folder / f"{Path(image).stem}.xml"
        ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
        written.append(out)
    return written


def write_coco(boxes: Iterable[Box], path: PathLike) -> Path:
    """Write boxes as one COCO JSON (categories = the distinct class names, ids from 1)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    boxes = list(boxes)
    names = sorted({_label(b) for b in boxes})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    image_ids: dict[str, int] = {}
    images = []
    for b in sorted(boxes, key=lambda b: b.image):
        if b.image not in image_ids:
            rx, ry = _need_res(b)
            image_ids[b.image] = len(image_ids) + 1
            images.append(
                {"id": image_ids[b.image], "file_name": b.image, "width": rx, "height": ry}
            )
    annotations = [
        {
            "id": i + 1,
            "image_id": image_ids[b.image],
            "category_id": cat_id[_label(b)],
            "bbox": [b.x0, b.y0, b.width, b.height],
            "area": b.width * b.height,
            "iscrowd": 0,
        }
        for i, b in enumerate(boxes)
    ]
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id[n], "name": n} for n in names],
    }
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def write_points_csv(points: Iterable[PointLabel], path: PathLike) -> Path:
    """Write points as our CSV: ``scan,row,col,kind,radius_nm`` (radius empty when unknown)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(POINT_COLUMNS)
        for p in points:
            w.writerow(
                [
                    p.scan,
                    _num(p.row),
                    _num(p.col),
                    p.kind,
                    "" if p.radius_nm is None else _num(p.radius_nm),
                ]
            )
    return path


# --- boxes <-> scan pixels -----------------------------------------------------------------


def boxes_to_points(
    boxes: Iterable[Box],
    *,
    nx: int,
    ny: int,
    width_nm: float,
    height_nm: float,
    scan: str | None = None,
) -> list[PointLabel]:
    """Boxes drawn on a render -> points in a scan's ``ny`` x ``nx`` pixel grid.

    The box centre is scaled from the render's pixels (``res_x`` x ``res_y``; the scan's own
    size when the box has none) to the scan's; ``radius_nm`` = half the mean of the box's
    width and height in nm (the paper's boxes include the defect's halo: scale it down for
    masks if needed). Centres falling outside the frame are dropped with a warning.
    ``scan``: the name given to the points (default: each box's image name).

    Raises `LabelFormatError` when a render's aspect ratio differs from the scan's by more than
    1 % (the labels were drawn on another image).
    """
    out: list[PointLabel] = []
    for b in boxes:
        rx = b.res_x or nx
        ry = b.res_y or ny
        if abs((rx / ry) / (nx / ny) - 1) > 0.01:
            raise LabelFormatError(
                f"{b.source or b.image}: a box drawn on a {rx}x{ry} image "
                f"cannot be placed on a {nx}x{ny} scan (different aspect "
                "ratio: was it labelled on another image?)"
            )
        sx, sy = nx / rx, ny / ry
        col = (b.x0 + b.x1) / 2 * sx - 0.5
        row = (b.y0 + b.y1) / 2 * sy - 0.5
        if not (-0.5 <= col <= nx - 0.5 and -0.5 <= row <= ny - 0.5):
            log.warning(
                "%s: box centre (%.1f, %.1f) lies outside the %dx%d scan; dropped",
                b.source or b.image,
                row,
                col,
                ny,
                nx,
            )
            continue
        w_nm = b.width / rx * width_nm
        h_nm = b.height / ry * height_nm
        out.append(
            PointLabel(
                b.image if scan is None else scan,
                row,
                col,
                b.kind,
                0.25 * (w_nm + h_nm),
                b.source,
                b.label,
            )
        )
    return out


def points_to_boxes(
    points: Iterable[PointLabel],
    *,
    nx: int,
    ny: int,
    width_nm: float,
    height_nm: float,
    image: str | None = None,
    res_x: int | None = None,
    res_y: int | None = None,
    default_radius_nm: float = 1.0,
) -> list[Box]:
    """Points in a scan's pixel grid -> square-ish boxes of side 2 x radius on an image of
    ``res_x`` x ``res_y`` pixels (the scan's own size by default), for export.

    ``image``: the image name written in the boxes (default: each point's scan name).
    """
    rx, ry = res_x or nx, res_y or ny
    sx, sy = rx / nx, ry / ny
    out = []
    for p in points:
        r_nm = p.radius_nm if p.radius_nm is not None else default_radius_nm
        cx, cy = (p.col + 0.5) * sx, (p.row + 0.5) * sy
        hw = r_nm / width_nm * rx
        hh = r_nm / height_nm * ry
        out.append(
            Box(
                image or p.scan,
                p.kind,
                cx - hw,
                cy - hh,
                cx + hw,
                cy + hh,
                rx,
                ry,
                p.source,
                p.label,
            )
        )
    return out


def with_image(boxes: Sequence[Box], image: str) -> list[Box]:
    """The same boxes attributed to another image name (e.g. a scan matched by ``--scan``)."""
    return [replace(b, image=image) for b in boxes]
