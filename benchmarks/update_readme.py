"""Copies the benchmark scripts' markdown tables into README.md.

    python benchmarks/update_readme.py [--results benchmarks/results]

Every `benchmarks/results/<name>/*.md` written by a benchmark script goes
between the README's `<!-- results:start -->` and `<!-- results:end -->`
markers, so the figures there are the scripts' output, never typed by hand.
"""

import argparse
import pathlib

from neurolite_keras import atomic_io

START, END = "<!-- results:start -->", "<!-- results:end -->"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args()
    sections = []
    for table in sorted(pathlib.Path(args.results).glob("*/*.md")):
        sections.append(f"From `{table}`:\n\n{table.read_text().strip()}\n")
    readme = pathlib.Path(args.readme).read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    body = "\n".join(sections) or "_No results yet._\n"
    atomic_io.write_text(args.readme, f"{head}{START}\n{body}{END}{tail}")
    print(f"updated {args.readme} with {len(sections)} table(s)")


if __name__ == "__main__":
    main()
