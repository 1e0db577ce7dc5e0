"""Tables and plots for people: what the CLI prints, and figures from result files."""

import json
from pathlib import Path


def write_data(path: Path, results: dict) -> Path:
    """A run's full results as compact JSON (one line: these files carry every run's measurements and traces, and
    indentation doubled their size); read them with `json.load` or `jq`."""
    path.write_text(json.dumps(results, separators=(",", ":"), default=str) + "\n")
    return path
