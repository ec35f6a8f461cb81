"""Write the dashboards' JSON (dashboards/*.json) from their code; ``--check`` fails if the files are stale.

    python -m dashboards.build [--check]

Import the JSON files into Grafana (Dashboards → New → Import), or point Grafana's file provisioning at the
folder. The same expressions can be listed with ``expressions()``; the tests parse every one with promtool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import attention, overview, systems

# Beside the code: cluster/monitoring packs dashboards/*.json into the ConfigMap Grafana's sidecar loads.
OUT = Path(__file__).resolve().parent
BOARDS = {"overview": overview, "attention": attention, "systems": systems}


def render(name: str) -> str:
    return json.dumps(BOARDS[name].build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panels(name: str) -> list[dict]:
    """Every panel of a dashboard (rows skipped), as the JSON Grafana imports."""
    return [p for p in json.loads(render(name))["panels"] if p.get("type") != "row"]


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL expression) for every query of every panel."""
    return [(name, p["title"], t["expr"]) for name in BOARDS for p in panels(name) for t in p.get("targets", [])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if a committed JSON file differs from the code")
    args = p.parse_args(argv)
    stale = []
    for name in BOARDS:
        path, text = OUT / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale (run `python -m dashboards.build`): " + ", ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
