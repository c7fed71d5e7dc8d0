"""Rectangles to blank chosen by header: the project's rule file (``deid/data/pixel_rules.yaml``).

Format (YAML; documented with examples in the shipped file and docs/DEIDENTIFICATION.md)::

    version: 1
    rules:
      - id: acme-x200-banner          # unique; appears in each instance's pixel record
        description: patient banner   # optional, free text
        enabled: true                 # optional, default true
        match:                        # every key given must match; an empty match matches every image
          Modality: US                # a string, or a list of strings (any of them); case-insensitive;
          Manufacturer: "ACME*"       # shell wildcards * ? [..] allowed
          ManufacturerModelName: [X200, X200 PRO]
          Rows: 480                   # an integer or a list of integers
          Columns: 640
          SOPClassUID: 1.2.840.10008.5.1.4.1.1.6.1
        boxes:                        # x0, y0, x1, y1 in pixels, half-open; a negative value counts from the
          - [0, 0, 640, 40]           # right / bottom edge ([-120, 0, 99999, 30]: the top right 120 x 30
          - [-120, 0, 99999, 30]      # pixels); boxes are clipped to the image
        outside_ultrasound_regions: false  # true: blank everything outside the regions that
                                           # SequenceOfUltrasoundRegions lists (images without it: nothing)

Matching keys are the attributes named above (Modality, Manufacturer, ManufacturerModelName, Rows, Columns,
SOPClassUID); an unknown key, a malformed box or a duplicate id is an error when the file is loaded, naming the
rule, so that a typo never silently disables a rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from dicom_relay.deid.errors import DeidError

Box = tuple[int, int, int, int]
TEXT_KEYS = ("Modality", "Manufacturer", "ManufacturerModelName", "SOPClassUID")
INT_KEYS = ("Rows", "Columns")
RULE_KEYS = {"id", "description", "enabled", "match", "boxes", "outside_ultrasound_regions"}


class RuleError(DeidError):
    """The pixel rule file is not valid; the message names the rule and the problem."""


@dataclass(frozen=True)
class Rule:
    id: str
    match: tuple[tuple[str, tuple], ...]  # (keyword, accepted values) pairs
    boxes: tuple[Box, ...] = ()
    outside_ultrasound_regions: bool = False
    description: str = ""

    def matches(self, header: dict) -> bool:
        for key, accepted in self.match:
            value = header.get(key)
            if key in INT_KEYS:
                if value not in accepted:
                    return False
            elif not any(fnmatch.fnmatchcase(str(value or "").strip().upper(), a) for a in accepted):
                return False
        return True


def _header(ds) -> dict:
    out = {k: str(ds.get(k, "") or "").strip() for k in TEXT_KEYS}
    for k in INT_KEYS:
        v = ds.get(k)
        out[k] = int(v) if v is not None else None
    return out


def _parse_rule(raw, n: int) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"rule #{n} is not a mapping")
    rid = str(raw.get("id") or "").strip()
    if not rid:
        raise RuleError(f"rule #{n} has no id")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RuleError(f"rule {rid}: unknown key(s) {', '.join(sorted(unknown))}")
    match = raw.get("match") or {}
    if not isinstance(match, dict):
        raise RuleError(f"rule {rid}: match must be a mapping")
    pairs = []
    for key, value in match.items():
        values = value if isinstance(value, list) else [value]
        if key in INT_KEYS:
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise RuleError(f"rule {rid}: {key} must be an integer or a list of integers")
            pairs.append((key, tuple(values)))
        elif key in TEXT_KEYS:
            pairs.append((key, tuple(str(v).strip().upper() for v in values)))
        else:
            raise RuleError(f"rule {rid}: cannot match on {key!r} (allowed: {', '.join(TEXT_KEYS + INT_KEYS)})")
    boxes = []
    for b in raw.get("boxes") or []:
        if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in b)):
            raise RuleError(f"rule {rid}: a box must be [x0, y0, x1, y1] in integer pixels")
        boxes.append(tuple(b))
    outside = raw.get("outside_ultrasound_regions", False)
    if not isinstance(outside, bool):
        raise RuleError(f"rule {rid}: outside_ultrasound_regions must be true or false")
    if not boxes and not outside:
        raise RuleError(f"rule {rid}: blanks nothing (give boxes or outside_ultrasound_regions: true)")
    return Rule(rid, tuple(pairs), tuple(boxes), outside, str(raw.get("description") or ""))


@dataclass(frozen=True)
class RuleSet:
    """The enabled rules of one rule file, in file order."""

    rules: tuple[Rule, ...]
    source: str

    @classmethod
    def parse(cls, text: str, source: str = "<text>") -> "RuleSet":
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RuleError(f"pixel rule file {source} is not valid YAML ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise RuleError(f"pixel rule file {source} must be a mapping with version: 1")
        raw_rules = doc.get("rules") or []
        if not isinstance(raw_rules, list):
            raise RuleError(f"pixel rule file {source}: rules must be a list")
        rules, seen = [], set()
        for n, raw in enumerate(raw_rules, 1):
            rule = _parse_rule(raw, n)
            if rule.id in seen:
                raise RuleError(f"pixel rule file {source}: duplicate rule id {rule.id}")
            seen.add(rule.id)
            if raw.get("enabled", True) is not False:
                rules.append(rule)
        return cls(tuple(rules), source)

    def boxes_for(self, ds) -> list[tuple[str, list[Box]]]:
        """``(rule id, boxes in frame pixels)`` of every rule matching ``ds``'s header (clipped, non-empty)."""
        return _boxes_for(self, _key(ds), _us_regions(ds))


def _key(ds) -> tuple:
    return tuple(sorted(_header(ds).items()))


def _us_regions(ds) -> tuple[Box, ...] | None:
    """The regions of SequenceOfUltrasoundRegions as boxes (x1, y1 inclusive in DICOM, made half-open)."""
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None
    out = []
    for item in seq:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            return None  # an incomplete region list cannot say what is outside: the rule does nothing
        out.append((x0, y0, x1 + 1, y1 + 1))
    return tuple(out)


@lru_cache(maxsize=1024)
def _boxes_for(rules: RuleSet, key: tuple, regions: tuple[Box, ...] | None) -> list[tuple[str, list[Box]]]:
    # Cached: a series repeats the same header key, so the rules are evaluated once per kind of image.
    header = dict(key)
    rows, cols = header.get("Rows"), header.get("Columns")
    if not rows or not cols:
        return []
    out = []
    for rule in rules.rules:
        if not rule.matches(header):
            continue
        boxes = [_clip(b, cols, rows) for b in rule.boxes]
        if rule.outside_ultrasound_regions and regions:
            boxes += outside(regions, cols, rows)
        boxes = [b for b in boxes if b is not None]
        if boxes:
            out.append((rule.id, boxes))
    return out


def _clip(b: Box, width: int, height: int) -> Box | None:
    """``b`` inside the frame; a negative coordinate counts from the right (x) or bottom (y) edge."""
    x0, y0, x1, y1 = (v + (width if i % 2 == 0 else height) if v < 0 else v for i, v in enumerate(b))
    x0, x1 = max(0, min(x0, width)), max(0, min(x1, width))
    y0, y1 = max(0, min(y0, height)), max(0, min(y1, height))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def outside(regions: tuple[Box, ...], width: int, height: int) -> list[Box]:
    """Boxes covering every pixel of a width x height frame that no region covers (row bands, then gaps)."""
    regions = [r for r in (_clip(r, width, height) for r in regions) if r is not None]
    ys = sorted({0, height, *(r[1] for r in regions), *(r[3] for r in regions)})
    out = []
    for y0, y1 in zip(ys, ys[1:]):
        spans = sorted((r[0], r[2]) for r in regions if r[1] <= y0 and r[3] >= y1)
        x = 0
        for s0, s1 in spans:
            if s0 > x:
                out.append((x, y0, s0, y1))
            x = max(x, s1)
        if x < width:
            out.append((x, y0, width, y1))
    return out


DEFAULT_RULES = "pixel_rules.yaml"


def load(path: str | Path | None = None) -> RuleSet:
    """The rule file at ``path``, or the shipped one (``dicom_relay/deid/data/pixel_rules.yaml``)."""
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"pixel rule file cannot be read ({exc.strerror or type(exc).__name__})") from None
        return RuleSet.parse(text, p.name)
    return _shipped()


@lru_cache(maxsize=1)
def _shipped() -> RuleSet:
    text = resources.files("dicom_relay.deid").joinpath("data", DEFAULT_RULES).read_text(encoding="utf-8")
    return RuleSet.parse(text, DEFAULT_RULES)
