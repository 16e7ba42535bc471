"""Weight sizes from the local folder or the hub listing: what a candidate weighs, what a download still
fetches, and the plan's lines about them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .. import redact
from ..manifest import Candidate, Manifest
from ..modelfiles import weight_bytes
from ..report import human_bytes

if TYPE_CHECKING:
    from ..observe import Observed
    from .model import Plan


def bytes_to_fetch(listing: list, local: Mapping[str, int]) -> int:
    """What a download still fetches: listed files missing locally or of another size."""
    return sum(f.size for f in listing if local.get(f.path) != f.size)


def weights_of(c: Candidate, observed: Observed) -> tuple[int | None, int | None]:
    """(weight bytes, bytes to fetch); None where not known."""
    local = observed.local_files.get(c.folder, {}) if c.folder is not None else {}
    listing = observed.listings.get((c.source, c.revision)) if c.downloadable else None
    present = c.folder is not None and c.folder in observed.folders_with_model
    if present:
        to_fetch = bytes_to_fetch(listing, local) if isinstance(listing, list) else 0
        return weight_bytes(local, c.quantization), to_fetch
    if isinstance(listing, list) and listing:
        return weight_bytes({f.path: f.size for f in listing}, c.quantization), bytes_to_fetch(listing, local)
    return None, None


def weights_unknown(c: Candidate, observed: Observed) -> str:
    listing = observed.listings.get((c.source, c.revision)) if c.downloadable else None
    if isinstance(listing, str):
        return f"weight size not known (hub listing: {listing})"
    if c.downloadable:
        return "weight size not known until the download lists the hub (`provision plan` does)"
    return "weight size not known (no weights on disk)"


def weights_text(manifest: Manifest, c: Candidate, observed: Observed, to_fetch: int | None, fetched_first: bool,
                  skipped: bool = False) -> str:
    """present | download <source> from <hub> (size) | downloaded if reached (size) | not fetched: skipped
    | missing: <folder>"""
    if c.folder is not None and c.folder in observed.folders_with_model:
        return "present" + (f" ({human_bytes(to_fetch)} changed on the hub)" if to_fetch else "")
    if not c.downloadable:
        return f"missing: {c.folder}" if c.folder else "no local folder"
    listing = observed.listings.get((c.source, c.revision))
    size = f" ({human_bytes(to_fetch)})" if to_fetch is not None else ""
    size = f" (size unknown: {listing})" if to_fetch is None and isinstance(listing, str) else size
    hub = redact.url(manifest.download.endpoint) or manifest.download.hub
    if skipped:
        return f"not fetched: skipped{size}"
    return f"download {c.source} from {hub}{size}" if fetched_first else f"downloaded if reached{size}"


def download_need(plan: Plan) -> tuple[int, list[str]]:
    """(bytes the first candidates still fetch, each folder once; uids whose size the hub did not list)."""
    need, unknown, seen = 0, [], set()
    for step in plan.steps:
        first = next((c for c in step.candidates if c.first), None)
        if first is None or first.folder is None or first.folder in seen:
            continue
        seen.add(first.folder)
        if first.bytes_to_fetch is None and not first.weights.startswith(("present", "missing", "no local")):
            unknown.append(step.uid)
        need += first.bytes_to_fetch or 0
    return need, unknown


def disk_line(plan: Plan, manifest: Manifest, observed: Observed) -> str:
    where = manifest.models_dir
    need, unknown = download_need(plan)
    free = f"{human_bytes(observed.disk_free)} free" if observed.disk_free is not None else "free space unknown"
    fetch = f"{human_bytes(need)} to fetch" if need or not unknown else "size to fetch unknown"
    text = f"{fetch} into {where}, {free}"
    if unknown and need:
        text += f" (plus {', '.join(unknown)}: size unknown)"
    elif unknown:
        text += f" ({', '.join(unknown)}: not listed)"
    if observed.disk_free is not None and need > observed.disk_free:
        plan.warnings.append(f"not enough disk space in {where}: the downloads need {human_bytes(need)}, "
                             f"{human_bytes(observed.disk_free)} free")
    return text
