"""Which sample a scan belongs to: the configurable sample rule.

Rules (``DEFECTWATCH_SAMPLE_RULE``):

- ``folder`` (default): the first folder under the watch root (``root/WSe2-SL445/day2/x.sxm`` ->
  ``WSe2-SL445``). A file directly in the root gets the first ``Name-Id`` token of its file name
  (``STM_WTip_WSe2-SL445_022.sxm`` -> ``WSe2-SL445``), else ``unsorted``. Without a watch root
  the file's own folder names it.
- ``regex:<pattern>``: the ``sample`` group of the pattern searched in the file name (then in
  the path), e.g. ``regex:(?P<sample>WSe2-SL\\d+)``; ``unsorted`` when it does not match.
- ``comment``: a ``sample=NAME`` entry in the Nanonis comment; the folder rule when absent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath

from defectwatch.errors import DefectwatchError
from defectwatch.service.config import check_sample_rule

log = logging.getLogger(__name__)

UNSORTED = "unsorted"
# A "Material-Id" token not glued to letters or digits on its left: WSe2-SL445, MoSe2-M12.
NAME_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?P<sample>[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9]+)")
COMMENT_ENTRY = re.compile(
    r"\bsample\s*=\s*(?:\"(?P<q2>[^\"]+)\"|'(?P<q1>[^']+)'|(?P<bare>[^\s;,]+))", re.IGNORECASE
)


def sample_for(
    path: str | os.PathLike[str],
    *,
    watch_root: str | os.PathLike[str] | None,
    rule: str,
    comment: str | None = None,
) -> str:
    """The sample name of the scan at ``path`` under ``rule`` (never empty)."""
    rule = check_sample_rule(rule)
    p = PurePath(os.path.abspath(path))
    if rule == "comment":
        found = COMMENT_ENTRY.search(comment or "")
        if found:
            return next(v for v in found.group("q2", "q1", "bare") if v).strip()
        return sample_for(path, watch_root=watch_root, rule="folder")
    if rule.startswith("regex:"):
        pattern = re.compile(rule[len("regex:") :])
        found = pattern.search(p.name) or pattern.search(str(p))
        name = (found.group("sample") or "").strip() if found else ""
        return name or UNSORTED
    # folder
    if watch_root is None:
        return p.parent.name or _from_name(p)
    try:
        rel = p.relative_to(os.path.abspath(watch_root))
    except ValueError:
        return p.parent.name or _from_name(p)
    return rel.parts[0] if len(rel.parts) > 1 else _from_name(p)


def _from_name(p: PurePath) -> str:
    found = NAME_TOKEN.search(p.stem)
    return found.group("sample") if found else UNSORTED


def header_comment(path: str | os.PathLike[str]) -> str:
    """The comment of a scan file's header ("" when it has none or cannot be read): an .sxm's
    COMMENT tag, else what its format's reader calls the comment."""
    from defectwatch.pipeline.sxm import MAGIC, header_tags, read_layout

    try:
        with open(path, "rb") as fh:
            if not fh.read(len(MAGIC)).startswith(MAGIC):
                from defectwatch.pipeline.scan import read_scan

                return read_scan(path).comment
        return header_tags(read_layout(path).header_text).get("COMMENT", "")
    except (DefectwatchError, OSError) as exc:
        log.debug("%s: no comment read (%s)", path, exc)
        return ""


def make_sample_for(
    *,
    roots: Sequence[str | os.PathLike[str]],
    rule: str,
    read_comment: Callable[[str], str] = header_comment,
) -> Callable[[str], str]:
    """``sample_for`` bound to the watch roots (the deepest root holding the file wins) and
    the rule, as the job queue wants it: ``path -> sample name``."""
    rule = check_sample_rule(rule)
    absolute = sorted(
        (Path(os.path.abspath(r)) for r in roots), key=lambda r: len(r.parts), reverse=True
    )

    def resolve(path: str) -> str:
        p = Path(os.path.abspath(path))
        root = next((r for r in absolute if p.is_relative_to(r)), None)
        comment = read_comment(path) if rule == "comment" else None
        return sample_for(p, watch_root=root, rule=rule, comment=comment)

    return resolve
