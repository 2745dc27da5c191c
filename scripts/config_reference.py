"""Prints the config reference (Markdown) generated from the schema in fntrain/config/.

    python scripts/config_reference.py            # print it
    python scripts/config_reference.py --check    # exit 1 if docs/CONFIG.md is stale
    python scripts/config_reference.py --write    # update docs/CONFIG.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from fntrain.config import reference_markdown

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"


if __name__ == "__main__":
    reference = reference_markdown()
    if "--check" in sys.argv:
        sys.exit(0 if REFERENCE.exists() and REFERENCE.read_text() == reference else 1)
    elif "--write" in sys.argv:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(reference)
    else:
        print(reference, end="")
