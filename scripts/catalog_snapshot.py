"""Write provision/catalog/snapshot.json.gz from the installed xinference (the pinned version).

    .venv/bin/python scripts/catalog_snapshot.py           # write it
    .venv/bin/python scripts/catalog_snapshot.py --check   # exit 1 when the committed snapshot differs

The snapshot is what a client-only install (`pip install .`, no xinference) knows of Xinference's built-in
models. tests/test_catalog.py fails when it and the pinned package disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provision.catalog import sources  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    catalog = sources.from_package()
    if catalog is None:
        print("xinference is not installed here: run scripts/bootstrap first", file=sys.stderr)
        return 2
    if catalog.version != sources.PINNED_XINFERENCE:
        print(f"installed xinference {catalog.version}, pinned {sources.PINNED_XINFERENCE}", file=sys.stderr)
        return 2
    data = sources.snapshot_document(catalog)
    if args.check:
        same = sources.SNAPSHOT.exists() and sources.SNAPSHOT.read_bytes() == data
        print("snapshot up to date" if same else "snapshot differs from the installed xinference")
        return 0 if same else 1
    sources.SNAPSHOT.write_bytes(data)
    print(f"wrote {sources.SNAPSHOT} ({len(data)} bytes, {len(catalog.families)} families, xinference {catalog.version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
