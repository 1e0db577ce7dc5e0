"""Draw a saved validation's two plots again from its results file.

    python -m benchmarks.replot VALIDATION.json[.gz] [...] [--out DIR]

`qroute validate` writes its results (`validation-*.json`; kept here gzipped) beside a CSV and two PNGs: predicted
against measured per run (`-scatter.png`) and the predicate's choice against the measured fastest over rows x chunk
tokens (`-crossover.png`). Both are drawn from the results alone (`rows`, `metrics.decisions`), so only the results
are kept under benchmarks/results for older validations; this draws the plots again, into DIR (default: beside each
file), named as `validate` names them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qroute.calibration.reprice import read_validation
from qroute.errors import QrouteError
from qroute.report.validation import plot_validation


def stem_of(path: str) -> str:
    """validation-TAG-DATE.json[.gz] -> validation-TAG-DATE."""
    name = Path(path).name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])  # fmt: skip
    p.add_argument("validations", nargs="+", help="validation results files (qroute validate --out), .json or .json.gz")
    p.add_argument("--out", help="folder for the PNGs (default: beside each file)")
    args = p.parse_args(argv)
    written = []
    for path in args.validations:
        try:
            results = read_validation(path)
        except QrouteError as exc:
            raise SystemExit(f"replot: {exc}") from None
        if "decisions" not in results["metrics"]:
            raise SystemExit(f"replot: validation file {path!r} has no metrics.decisions: expected `qroute validate`'s results")
        out = Path(args.out) if args.out else Path(path).parent
        out.mkdir(parents=True, exist_ok=True)
        written += plot_validation(results, out / stem_of(path))
    for f in written:
        print(f)
    return written


if __name__ == "__main__":
    main()
