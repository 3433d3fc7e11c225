"""Prints the README's Quickstart commands, one per line, exactly as the README writes them:
the lines of the first fenced code block under the "## Quickstart" heading. .ci/run runs
what this prints, so CI cannot drift from what the README tells a user to type.

    python3 .ci/readme_quickstart.py [README.md]
"""
import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "README.md"
with open(path, encoding="utf-8") as f:
    text = f.read()
section = re.search(r"^## Quickstart\s*$(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
if section is None:
    sys.exit(f"{path}: no '## Quickstart' section")
block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
if block is None:
    sys.exit(f"{path}: the Quickstart section has no fenced code block")
commands = [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]
if len(commands) != 2:
    sys.exit(f"{path}: expected the Quickstart's two commands (install and run; test), found {len(commands)}")
print("\n".join(commands))
