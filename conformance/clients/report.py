"""Verdicts of the clients suite from the records conftest.py writes (CLIENTS_RESULTS).

    report.py candidates RESULTS          node ids of the sidecar runs that would count as regressions
    report.py table RESULTS [RERUN...]    the table (case x path), the failures, and on the last line
                                          "regressions N"; RERUN files hold reruns of candidates

A case regresses when its sidecar run fails (or errs) while its direct run passed, or, for a
``sidecar_only`` case (an RFC rule for the sidecar alone), whenever its sidecar run fails. A
candidate that passes in any rerun is shown as flaky and not counted. A failing direct run never
counts: it is a limit of the backend or of the setup, not of the sidecar.

Standard library only, so that it runs with any python3.
"""

from __future__ import annotations

import json
import sys

SHORT = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "skip"}


def load(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)


def rows(results: list[dict]) -> dict[str, dict]:
    """case -> {"direct": rec, "sidecar": rec, "sidecar_only": bool}, in test order."""
    table: dict[str, dict] = {}
    for r in results:
        row = table.setdefault(r["case"], {"sidecar_only": False})
        row[r["via"]] = r
        row["sidecar_only"] |= r["sidecar_only"]
    return table


def candidate(row: dict) -> bool:
    side, direct = row.get("sidecar"), row.get("direct")
    if side is None or side["outcome"] not in ("failed", "error"):
        return False
    return row["sidecar_only"] or (direct is not None and direct["outcome"] == "passed")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("candidates", "table"):
        print(__doc__, file=sys.stderr)
        return 2
    table = rows(load(argv[1]))
    if argv[0] == "candidates":
        for row in table.values():
            if candidate(row):
                print(row["sidecar"]["nodeid"])
        return 0

    reruns: dict[str, list[str]] = {}
    for path in argv[2:]:
        for r in load(path):
            reruns.setdefault(r["nodeid"], []).append(r["outcome"])

    regressions = 0
    width = max([len(c) for c in table] + [30]) + 2
    print('\nclients (rows: case; columns: path; "!" marks a regression; n/a: a sidecar-only rule)')
    print(f"  {'case':<{width}}{'direct':<10}sidecar")
    for case, row in table.items():
        cells = []
        for via in ("direct", "sidecar"):
            r = row.get(via)
            cell = "missing" if r is None else SHORT.get(r["outcome"], r["outcome"])
            if via == "direct" and row["sidecar_only"] and r is not None and r["outcome"] == "skipped":
                cell = "n/a"
            if via == "sidecar" and candidate(row):
                again = reruns.get(r["nodeid"], [])
                if "passed" in again:
                    cell = f"flaky({cell}; reruns {again.count('passed')}/{len(again)} passed)"
                else:
                    cell += "!"
                    regressions += 1
            cells.append(cell)
        print(f"  {case:<{width}}{cells[0]:<10}{cells[1]}")
    print("  paths: direct = client -> backend; sidecar = client -> datastream-sidecar (requestTimeout 1s) -> backend")

    shown = 0
    for case, row in table.items():
        for via in ("direct", "sidecar"):
            r = row.get(via)
            if r is None or r["outcome"] == "passed":
                continue
            if r["outcome"] == "skipped":
                if not row["sidecar_only"]:
                    print(f"  note: {case} via {via} skipped: {r['message']}")
                continue
            if shown == 0:
                print("clients failures (end of pytest's report; full output in pytest.txt):")
            shown += 1
            print(f"  {case} via {via}: {r['outcome']}")
            lines = [line for line in r["message"].splitlines() if line.strip()]
            for line in lines[-25:]:
                print("      " + line[:300])
    for case, row in table.items():
        r = row.get("direct")
        if row["sidecar_only"] and r is not None and r["outcome"] == "skipped":
            print(f"  {case} (sidecar-only) direct: {r['message']}")
    print(f"regressions {regressions}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
