"""High-content screening plates: which submitted files are which fields of which wells, and the plate's OME-NGFF.

A submission declares a plate by a name and the pattern its image files are named by::

    plates:
      - name: plate1
        pattern: "plate1/{row}{column}_f{field}.tif"

``{row}`` is a row's capital letter (``B``, ``AA``) or number (``2``, counted from 1: ``B``); ``{column}`` a column number;
``{field}`` the field's number (optional: one field per well); ``{acquisition}`` (optional) the acquisition's
number when the plate was imaged more than once; ``*`` any characters but ``/``. A pattern matches whole paths.
A file may instead give its position itself (``well: {plate, row, column, field}``). Each field is one image:
it goes through every stage on its own (its QC, its lineage) and is published under the plate's store, an
OME-NGFF plate (``plates/<name>.ome.zarr/<row>/<column>/<field>/``) with the ``plate`` and ``well`` metadata
that plate readers (ome-zarr-py, napari, vizarr) follow. A well's fields are numbered 0, 1, … in the order of
their numbers in the file names.

``detect`` proposes a plate for ``zarrchive submission new`` from the usual names of screening software.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Iterable

from zarrchive.ngff import NGFF_VERSION as NGFF_PLATE_VERSION
from zarrchive.records import FileEntry, PlateDeclaration, WellPosition, row_name

PLACEHOLDERS = {
    "row": r"(?P<row>[A-Z]{1,2}|\d{1,3})",  # capital letters, as plates label rows, or a number
    "column": r"(?P<column>\d{1,3})",
    "field": r"(?P<field>\d{1,5})",
    "acquisition": r"(?P<acquisition>\d{1,4})",
}
PLATES = "plates"  # a version's folder of plates


def plate_store(name: str) -> str:
    """Where a plate is in a version: ``plates/<name>.ome.zarr``."""
    return f"{PLATES}/{name}.ome.zarr"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a plate's file pattern (whole paths); ValueError saying what is wrong.

    ``*`` matches as little as it can. A ``{row}`` is read as a number only where a character that is not a
    digit follows it and no number precedes it (``r{row}c{column}``); beside another placeholder or before ``*``
    it is a capital letter (``{row}{column}``: ``B03``). Two numbers with nothing between them (``{column}{field}``) cannot be told apart: refused."""
    tokens = re.split(r"(\{[^{}]*\}|\*)", pattern)
    out, seen, after_number = "", set(), None  # after_number: the placeholder just before, when read as a number
    for i, token in enumerate(tokens):
        if not token:
            continue
        if token == "*" or not (token.startswith("{") and token.endswith("}")):
            out += r"[^/]*?" if token == "*" else re.escape(token)
            after_number = None
            continue
        name = token[1:-1]
        if name not in PLACEHOLDERS:
            raise ValueError(f"{token} is not a placeholder of a plate pattern (use {{row}}, {{column}}, "
                             "{field}, {acquisition} or *)")
        if name in seen:
            raise ValueError(f"{token} appears twice")
        seen.add(name)
        following = next((t for t in tokens[i + 1:] if t), "")
        numeric = name != "row" or bool(not after_number and following and following[0] not in "{*"
                                        and not following[0].isdigit())
        if numeric and after_number:
            raise ValueError(f"{{{after_number}}}{token}: two numbers with nothing between them cannot be told "
                             "apart: name the files with a separator")
        out += PLACEHOLDERS[name] if numeric else r"(?P<row>[A-Z]{1,2})"
        after_number = name if numeric else None
    if "row" not in seen or "column" not in seen:
        raise ValueError("needs {row} and {column}")
    return re.compile(out)


def row_index(name: str) -> int:
    """``A`` -> 0, ``Z`` -> 25, ``AA`` -> 26."""
    number = 0
    for letter in name.upper():
        number = number * 26 + ord(letter) - ord("A") + 1
    return number - 1


def place_fields(plates: list[PlateDeclaration], files: list[FileEntry]) -> list[FileEntry]:
    """``files`` with the well position of each image file a plate's pattern names (fields numbered in each
    well in the order of their numbers). ValueError naming the plate and the files when a pattern names no file,
    a file is named twice, two files are one field, or a position names a plate that is not declared."""
    if not plates and not any(e.well for e in files):
        return files
    names = [p.name for p in plates]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"plates: {', '.join(dupes)} declared twice")
    found: dict[str, tuple[str, str, str, int, int | None]] = {}  # path -> (plate, row, column, number, acquisition)
    for plate in plates:
        if plate.pattern is None:
            continue
        try:
            regex = compile_pattern(plate.pattern)
        except ValueError as exc:
            raise ValueError(f"plates ({plate.name}): pattern {plate.pattern!r}: {exc}") from None
        matched = 0
        for entry in files:
            if entry.kind != "image" or not (hit := regex.fullmatch(entry.path)):
                continue
            matched += 1
            if entry.path in found:
                raise ValueError(f"plates: {entry.path} is named by the patterns of both {found[entry.path][0]} and "
                                 f"{plate.name}")
            if entry.well and entry.well.plate != plate.name:
                raise ValueError(f"plates ({plate.name}): {entry.path} is named by this plate's pattern, and its "
                                 f"own well places it in plate {entry.well.plate}: keep one")
            if entry.well:  # the position it gives (or was given by this pattern before) stands
                continue
            groups = hit.groupdict()
            try:
                row = row_name(groups["row"])
            except ValueError as exc:
                raise ValueError(f"plates ({plate.name}): {entry.path}: {exc}") from None
            acquisition = int(groups["acquisition"]) if groups.get("acquisition") is not None else None
            found[entry.path] = (plate.name, row, str(int(groups["column"])), int(groups.get("field") or 0),
                                 acquisition)
        if not matched:
            raise ValueError(f"plates ({plate.name}): pattern {plate.pattern!r} names none of the image files "
                             "listed under files")
    for entry in files:
        if entry.well and entry.well.plate not in names:
            raise ValueError(f"{entry.path}: its well names plate {entry.well.plate!r}, which plates does not "
                             "declare")
        if entry.well and entry.kind != "image":
            raise ValueError(f"{entry.path}: only an image file is a field of a plate (this one is kind "
                             f"{entry.kind})")
    numbers: dict[tuple[str, str, str], set[tuple[int, int]]] = defaultdict(set)
    for plate, row, column, number, acquisition in found.values():
        numbers[(plate, row, column)].add((acquisition or 0, number))
    index = {key: {n: i for i, n in enumerate(sorted(values))} for key, values in numbers.items()}
    placed = []
    for entry in files:
        if entry.path in found:
            plate, row, column, number, acquisition = found[entry.path]
            field = index[(plate, row, column)][(acquisition or 0, number)]
            entry = entry.model_copy(update={"well": WellPosition(plate=plate, row=row, column=column, field=field,
                                                                  acquisition=acquisition)})
        placed.append(entry)
    seen: dict[tuple[str, str], str] = {}
    for entry in placed:
        if entry.well:  # (a field's path is its place in the plate, whatever its acquisition)
            key = (entry.well.plate, entry.well.path)
            if key in seen:
                raise ValueError(f"plates ({entry.well.plate}): {seen[key]} and {entry.path} are both field "
                                 f"{entry.well.path}: one file per field (a file holds every channel of its field)")
            seen[key] = entry.path
    return placed


def renumber_fields(outcomes: list[Any]) -> list[Any]:
    """The image outcomes with the published fields of each well numbered 0, 1, … in their order: a field that
    failed leaves no gap (plate readers take the first well's field paths for every well)."""
    wells: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for o in outcomes:
        if o.well and o.status == "published" and not o.label_of:
            wells[(o.well.plate, o.well.well)].append(o)
    number = {o.image_id: i for fields in wells.values()
              for i, o in enumerate(sorted(fields, key=lambda o: (o.well.acquisition or 0, o.well.field)))}
    return [o.model_copy(update={"well": o.well.model_copy(update={"field": number[o.image_id]})})
            if o.image_id in number and o.well.field != number[o.image_id] else o for o in outcomes]


# ---------------------------------------------------------------- OME-NGFF


def plate_attributes(name: str, fields: Iterable[WellPosition], ngff: str = NGFF_PLATE_VERSION) -> dict[str, Any]:
    """The ``plate`` metadata of a plate of ``fields``: rows and columns (those holding a well), wells, how many
    fields a well has at most, and the acquisitions when there are several."""
    fields = list(fields)
    rows = sorted({f.row for f in fields}, key=row_index)
    columns = sorted({f.column for f in fields}, key=lambda c: (int(c) if c.isdigit() else 0, c))
    wells = sorted({(f.row, f.column) for f in fields}, key=lambda w: (rows.index(w[0]), columns.index(w[1])))
    per_well: dict[tuple[str, str], set[int]] = defaultdict(set)
    for f in fields:
        per_well[(f.row, f.column)].add(f.field)
    plate: dict[str, Any] = {
        "name": name,
        "rows": [{"name": r} for r in rows],
        "columns": [{"name": c} for c in columns],
        "wells": [{"path": f"{r}/{c}", "rowIndex": rows.index(r), "columnIndex": columns.index(c)}
                  for r, c in wells],
        "field_count": max(len(v) for v in per_well.values()),
    }
    acquisitions = sorted({f.acquisition for f in fields if f.acquisition is not None})
    if acquisitions:
        plate["acquisitions"] = [{"id": a} for a in acquisitions]
    if ngff == "0.4":
        plate["version"] = "0.4"
    return plate


def well_attributes(fields: Iterable[WellPosition], ngff: str = NGFF_PLATE_VERSION) -> dict[str, Any]:
    """The ``well`` metadata of one well: its fields' paths (and acquisitions)."""
    images = []
    for f in sorted(fields, key=lambda f: f.field):
        images.append({"path": str(f.field), **({"acquisition": f.acquisition} if f.acquisition is not None
                                                 else {})})
    return {"images": images, **({"version": "0.4"} if ngff == "0.4" else {})}


def plate_documents(name: str, fields: list[WellPosition], ngff: str = NGFF_PLATE_VERSION) -> dict[str, Any]:
    """The metadata objects of a plate's groups (the plate, its rows, its wells) by path inside the plate's
    store: ``zarr.json`` each (Zarr v3, NGFF 0.5), or ``.zgroup`` and ``.zattrs`` (Zarr v2, NGFF 0.4)."""
    def group(attributes: dict[str, Any] | None) -> dict[str, Any]:
        if ngff == "0.5":
            ome = {"ome": {"version": "0.5", **attributes}} if attributes else {}
            return {"zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": ome}}
        return {".zgroup": {"zarr_format": 2}, **({".zattrs": attributes} if attributes else {})}

    documents: dict[str, Any] = dict(group({"plate": plate_attributes(name, fields, ngff)}))
    by_well: dict[tuple[str, str], list[WellPosition]] = defaultdict(list)
    for f in fields:
        by_well[(f.row, f.column)].append(f)
    for row in sorted({f.row for f in fields}):
        documents.update({f"{row}/{k}": v for k, v in group(None).items()})
    for (row, column), members in sorted(by_well.items()):
        documents.update({f"{row}/{column}/{k}": v
                          for k, v in group({"well": well_attributes(members, ngff)}).items()})
    return documents


# ---------------------------------------------------------------- plates an OME-XML describes


def ome_plate_positions(xml: str, folder: str = "") -> dict[int, WellPosition]:
    """The well position of each image (by its index in the OME-XML) that the document's plates place: screening
    software writes its plate layout there (``Plate`` / ``Well`` Row and Column, counted from 0 / ``WellSample``
    Index with its ``ImageRef``). A well's fields are numbered in the order of their indices; acquisitions
    (``PlateAcquisition``) are kept when there are several and every sample is in one. The plate is named after
    the OME-XML's plate and the submitted ``folder`` it lies in (two acquisitions in two folders are two plates,
    even when the software names both ``Plate:0``). ValueError when the layout cannot be read."""
    from xml.etree import ElementTree

    def tag(element: ElementTree.Element) -> str:
        return element.tag.rsplit("}", 1)[-1]

    root = ElementTree.fromstring(xml)
    image_index = {e.get("ID"): i for i, e in enumerate(x for x in root if tag(x) == "Image")}
    positions: dict[int, WellPosition] = {}
    for number, plate in enumerate(x for x in root if tag(x) == "Plate"):
        own = plate.get("Name") or plate.get("ID") or f"plate{number}"
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{folder}_{own}" if folder else own).strip("_-")[-64:].strip("_-")
        name = name if name and name[0].isalnum() else f"plate{number}"
        acquisitions = [a for a in plate if tag(a) == "PlateAcquisition"]
        acquisition_of = {ref.get("ID"): i for i, a in enumerate(acquisitions) for ref in a
                          if tag(ref) == "WellSampleRef"} if len(acquisitions) > 1 else {}
        for well in (w for w in plate if tag(w) == "Well"):
            row, column = int(well.get("Row", 0)), int(well.get("Column", 0))
            samples = []
            for sample in (s for s in well if tag(s) == "WellSample"):
                ref = next((r.get("ID") for r in sample if tag(r) == "ImageRef"), None)
                if ref in image_index:
                    samples.append((acquisition_of.get(sample.get("ID")), int(sample.get("Index", 0)),
                                    image_index[ref]))
            if any(s[0] is None for s in samples):  # a sample outside every acquisition: acquisitions not kept
                samples = [(None, index, image) for _, index, image in samples]
            for field, (acquisition, _, image) in enumerate(sorted(samples, key=lambda s: (s[0] or 0, s[1]))):
                positions[image] = WellPosition(plate=name, row=row_name(str(row + 1)), column=str(column + 1),
                                                field=field, acquisition=acquisition)
    return positions


# ---------------------------------------------------------------- proposing a plate for a folder

# File names screening software writes, tried in order: (regex on the file name, the pattern's words for it).
NAMINGS = (
    (re.compile(r"^(?P<pre>.*?)r(?P<row>\d{1,2})c(?P<column>\d{1,2})f(?P<field>\d{1,4})(?P<post>\D.*)$"),
     "r{row}c{column}f{field}"),  # PerkinElmer Operetta/Opera, Harmony export
    (re.compile(r"^(?P<pre>.*?)(?P<row>[A-P])(?P<column>\d{1,2})(?P<mid>[_-]?(?:s|f|site|fld|field)[_-]?)"
                r"(?P<field>\d{1,4})(?P<post>\D.*)$"), "{row}{column}{mid}{field}"),  # MetaXpress, ImageXpress, CV7000
    (re.compile(r"^(?P<pre>.*?)(?P<row>[A-P])(?P<column>\d{2})(?P<post>\.[A-Za-z0-9.]+)$"), "{row}{column}"),
)


def detect(paths: list[str]) -> list[dict[str, str]]:
    """Plates proposed for the image files ``paths``: each folder whose image files (two or more) are all named
    by one of the usual screening namings, one field per file; as ``plates`` entries (name, pattern)."""
    folders: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        folder, _, name = path.rpartition("/")
        folders[folder].append(name)
    proposed = []
    for folder, names in sorted(folders.items()):
        if len(names) < 2:
            continue
        for regex, words in NAMINGS:
            first = regex.match(names[0])
            if not first:
                continue
            middle = re.escape(first.groupdict().get("mid") or "")
            body = words.replace("{mid}", middle.replace("\\", ""))
            pattern = (f"{folder}/" if folder else "") + _literal(first["pre"]) + body + _literal(first["post"])
            entries = [FileEntry(path=(f"{folder}/" if folder else "") + n) for n in names]
            name = re.sub(r"[^A-Za-z0-9_-]+", "_", folder.rsplit("/", 1)[-1] or "plate").strip("_-") or "plate"
            try:
                placed = place_fields([PlateDeclaration(name=name[:64], pattern=pattern)], entries)
            except ValueError:
                continue
            if all(e.well for e in placed):
                taken = {p["name"] for p in proposed}
                unique = next(n for n in (name[:64], *(f"{name[:60]}_{i}" for i in range(2, 1000)))
                              if n not in taken)
                proposed.append({"name": unique, "pattern": pattern})
                break
    return proposed


def _literal(text: str) -> str:
    """A file name's text as a pattern's (a brace or star cannot be written in a pattern: ``*`` stands for it)."""
    return re.sub(r"[{}*]", "*", text)
