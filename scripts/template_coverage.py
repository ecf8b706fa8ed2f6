"""The full template coverage table: every ComfyUI template surveyed, every supported one run end to end.

    PYTHONPATH=src:tests python scripts/template_coverage.py --out template_coverage.md
    python scripts/template_coverage.py --only classic/default --only current/image_z_image_turbo

Needs the pinned template packages of the ``test`` extra. Each supported template runs through
``latentworks run`` (in this process) on tiny random model files written under the names the template asks
for (tests/support/workflow_fixtures.py), with sizes and steps shrunk by ``--set``. Prints the totals and the
ranked missing node types; ``--out`` writes the whole table as Markdown (docs/results.md records the totals).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from latentworks.nodes import default_registry  # noqa: E402
from support.template_coverage import markdown, survey, templates, totals  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the full Markdown table here")
    p.add_argument("--only", action="append", default=None, metavar="SOURCE/ID", help="run only these")
    p.add_argument("--cache-dir", type=Path, help="keep the tiny model files here between runs")
    p.add_argument("--top", type=int, default=30, help="missing node types to print (default: %(default)s)")
    args = p.parse_args(argv)
    items = templates()
    if not items:
        print("no template package installed: pip install -e '.[test]'", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = survey(
        items, default_registry(), cache_dir=args.cache_dir, run_only=set(args.only) if args.only else None
    )
    table = markdown(rows, top_missing=args.top)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    summary = table[table.index("**") :]
    print(summary)
    failed = [r for r in rows if r.supported and r.converted and not r.ran and "survey only" not in r.error]
    for r in failed:
        print(f"not run: {r.source}/{r.template_id}: {r.error}")
    t = totals(rows)
    print(f"{len(rows)} templates in {time.perf_counter() - t0:.0f} s; ran {t['supported and ran']} of "
          f"{t['supported families']} supported ({100 * t['ran share of supported']:.0f} %)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
