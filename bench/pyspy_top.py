"""Summarise a ``py-spy record --format raw`` file: where the sampled CPU went.

    python -m bench.pyspy_top FILE [--top 25] [--thread]

Each line of the file is ``frame;frame;...;leaf COUNT`` (root first). Prints the
share of samples per leaf function ("self") and per function anywhere on the stack
("inclusive"), and with ``--thread`` the share per thread.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE_NO = re.compile(r":\d+\)$")


def _frame(name: str) -> str:
    """'func (file.py:123)' -> 'func (file.py)': group a function's lines together."""
    return _LINE_NO.sub(")", name.strip())


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    total = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f]
        total += count
        if frames and frames[0].startswith(("thread", "process")):
            threads[frames[0]] += count
        if frames:
            leaf[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, leaf, inclusive, threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pyspy_top", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", action="store_true")
    args = parser.parse_args(argv)
    total, leaf, inclusive, threads = summarise(args.file)
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples")
    if args.thread:
        print("\nby thread:")
        for name, count in threads.most_common(args.top):
            print(f"{100 * count / total:6.1f}%  {name}")
    print("\nself (leaf frame):")
    for name, count in leaf.most_common(args.top):
        print(f"{100 * count / total:6.1f}%  {name}")
    print("\ninclusive (anywhere on the stack):")
    for name, count in inclusive.most_common(args.top):
        print(f"{100 * count / total:6.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
