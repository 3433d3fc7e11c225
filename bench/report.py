"""Where a benchmark's results go: the Markdown table on stdout and in ``<out>/<name>.md``, the
numbers behind it in ``<out>/<name>.json`` (what bench/readme_numbers.py reads)."""
import json
import os


def write_results(out: str, name: str, lines, payload: dict, indent: int = 1) -> str:
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(text)
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump(payload, handle, indent=indent)
    return text
