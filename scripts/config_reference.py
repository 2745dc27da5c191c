"""Prints the config reference (Markdown) generated from the schema in fntrain/config.py.

    python scripts/config_reference.py            # print it
    python scripts/config_reference.py --check    # exit 1 if README.md's copy is stale
    python scripts/config_reference.py --write    # update README.md in place
"""

from __future__ import annotations

import sys
from pathlib import Path

from fntrain.config import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def readme_with(reference: str) -> str:
    text = README.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference}{END}{tail}"


if __name__ == "__main__":
    reference = reference_markdown()
    if "--check" in sys.argv:
        sys.exit(0 if README.read_text() == readme_with(reference) else 1)
    elif "--write" in sys.argv:
        README.write_text(readme_with(reference))
    else:
        print(reference, end="")
