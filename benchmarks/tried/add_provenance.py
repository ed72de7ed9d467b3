"""Give every result JSON under benchmarks/ a "provenance" object: the commit, the command and the config.

    .venv/bin/python benchmarks/tried/add_provenance.py            # write it into the files that lack it
    .venv/bin/python benchmarks/tried/add_provenance.py --check    # list the files that lack it, exit 1 if any

Results written since issue #48 record ``commit`` and ``command`` themselves (``benchmarks/_report.py``,
``provenance``); the files written before did not. For those this adds

    "provenance": {"commit": ..., "commit_from": ..., "command": ..., "config": ..., "source": ...}

as the file's last key, every other key and value left as it was (the file is rewritten with the indent it
had). Where it comes from:

* ``benchmarks/tried/*.json``: the file table of benchmarks/tried/README.md. ``command`` is its "scored
  with" column (the command that wrote the JSON; "the script itself" and "the run's metrics.json" rows take
  the "run" column), ``config`` its "run" column (the model scored and how it was trained). A command the
  table spells out elsewhere with ``--json <this file>`` wins over a wildcard row; for ``compare-*.json``
  the wildcard's ``A B`` are the file's own ``a`` and ``b``.
* ``benchmarks/results-*.json``: :data:`TOP`, the command and config as the README and docs/ cite them.
* ``commit``: ``git log --format=%H -1 -- <file>``, the commit that added or last changed the file. The
  result was computed with the code of that commit or an earlier one (runs are not committed); where the
  table or the docs name the model's own commit, ``config`` says so.

A file that already has ``provenance`` (or top-level ``commit`` and ``command``) is left alone, so running
this again changes nothing.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
TRIED = BENCH / "tried"
TABLE_SOURCE = "benchmarks/tried/README.md table"
COMMIT_FROM = ("git log --format=%H -1 -- <file>: the commit that added or last changed the file; the result was "
               "computed with its code or an earlier commit's")

# results-*.json at the top level: (command, config, where it is cited)
TOP = {
    "results-dsb2018.json": (
        "benchmarks/dsb2018.py --json benchmarks/results-dsb2018.json",
        "the shipped dsb2018-nuclei (three networks averaged); the 56 held-out images",
        "README.md (DSB 2018 nuclei) and docs/dsb2018-nuclei.md"),
    "results-dsb2018-pair.json": (
        "benchmarks/dsb2018.py --json benchmarks/results-dsb2018-pair.json",
        "the previous shipped dsb2018-nuclei, the two plain networks of the recipe (model at commit 3fa31ea), "
        "post-processed as now",
        "README.md and docs/dsb2018-nuclei.md"),
    "results-dsb2018-single.json": (
        "benchmarks/dsb2018.py --json benchmarks/results-dsb2018-single.json",
        "the previous shipped dsb2018-nuclei, the seed-0 network alone (model at commit 1ddd472)",
        "README.md and docs/dsb2018-nuclei.md"),
    "results-dsb2018-member2.json": (
        "benchmarks/dsb2018.py --model <the seed-1 run> --json benchmarks/results-dsb2018-member2.json",
        "the seed-1 network alone: biounet train --config configs/dsb2018.toml --set train.seed=1 "
        "--set data.split_seed=0 (same images, other initialisation and patches)",
        "docs/dsb2018-nuclei.md"),
    "results-dsb2018-member3.json": (
        "benchmarks/dsb2018.py --model <the weight-map run> --json benchmarks/results-dsb2018-member3.json",
        "the weight-map network alone: biounet train --config configs/dsb2018.toml --set data.weight_map=true",
        "docs/dsb2018-nuclei.md"),
    "results-dsb2018-holdout.json": (
        "benchmarks/dsb2018.py --json benchmarks/results-dsb2018-holdout.json",
        "base width 24, the same recipe (model at commit 8873c24), nothing picked on the held-out images",
        "docs/dsb2018-nuclei.md and docs/speed.md"),
    "results-dsb2018-quick.json": (
        "benchmarks/dsb2018.py --model <the quick run> --json benchmarks/results-dsb2018-quick.json",
        "biounet train --config configs/dsb2018-quick.toml (20 epochs, width 16)",
        "docs/training.md"),
    "results-dsb-post-seedh.json": (
        "benchmarks/dsb_post.py --no-refine --grid min_score=0 --json benchmarks/results-dsb-post-seedh.json",
        "the shipped dsb2018-nuclei; seeds at interior peaks 0.5 above their saddle (post.seed_h)",
        "docs/dsb2018-nuclei.md"),
    "results-dsb-post-minscore.json": (
        "benchmarks/dsb_post.py --no-refine --grid seed_h=0 --grid seed_threshold=0.5,0.6,0.7,0.8,0.9 "
        "--json benchmarks/results-dsb-post-minscore.json",
        "the shipped dsb2018-nuclei; threshold seeds, unsure objects dropped (post.min_score)",
        "docs/dsb2018-nuclei.md"),
    "results-dsb-time.json": (
        "benchmarks/dsb_time.py --json benchmarks/results-dsb-time.json",
        "the shipped dsb2018-nuclei against issue #13's model read from git (its baseline key names the commit)",
        "docs/dsb2018-nuclei.md"),
    "results-isbi2012.json": (
        "benchmarks/isbi2012.py --json benchmarks/results-isbi2012.json",
        "the shipped isbi2012-membrane (configs/isbi2012.toml); validation slices 20-24 of train-volume.tif",
        "README.md (ISBI 2012 membranes) and docs/isbi2012-membrane.md"),
    "results-speed.json": (
        "benchmarks/speed.py --tile-sweep --json benchmarks/results-speed.json",
        "one network of dsb2018-nuclei on one 2048x2048 image, 2-core CPU (pip install monai for its row)",
        "README.md and docs/speed.md"),
    "results-speed-run1.json": (
        "benchmarks/speed.py --tile-sweep --json benchmarks/results-speed-run1.json",
        "the run of benchmarks/speed.py before results-speed.json, the same day and machine",
        "docs/speed.md"),
    "results-inference.json": (
        "benchmarks/inference.py --sizes 2048 8192 --json benchmarks/results-inference.json",
        "a random-weight U-Net (base_features 8, depth 4) tiled against MONAI's sliding window; its env key "
        "says the rest",
        "README.md and docs/speed.md"),
}


def table_rows(readme: str) -> list[tuple[str, str, str]]:
    """(file or pattern, run, scored with) of each row of the file table: | `name.json` | run | scored with |."""
    rows = []
    for line in readme.splitlines():
        m = re.match(r"^\| `([^`]+\.json)` \| (.*) \| (.*) \|\s*$", line)
        if m:
            rows.append((m.group(1), m.group(2).strip(), m.group(3).strip()))
    return rows


def plain(text: str) -> str:
    """Table markdown as plain text: backticks dropped."""
    return text.replace("`", "").strip()


def cited_command(rows: list[tuple[str, str, str]], name: str) -> str | None:
    """A command the table spells out with ``--json <name>`` (e.g. a compare file named in another row)."""
    for _, run, scored in rows:
        for span in re.findall(r"`([^`]+)`", f"{run} {scored}"):
            if re.search(rf"--json \S*{re.escape(name)}\b", span):
                return span.strip()
    return None


def resolved_run(rows: list[tuple[str, str, str]], i: int) -> str:
    """Row ``i``'s run column, a "the same with ..." row spelled out from the rows above it."""
    run = plain(rows[i][1])
    if run.startswith("the same with") and i > 0:
        return f"{resolved_run(rows, i - 1)}; {run}"
    return run


def tried_provenance(path: Path, rows: list[tuple[str, str, str]], data: dict) -> dict:
    """The provenance of one benchmarks/tried JSON, read from the README's file table."""
    exact = [r for r in rows if r[0] == path.name]
    match = exact or [r for r in rows if fnmatch.fnmatch(path.name, r[0])]
    if not match:
        raise SystemExit(f"{path.name}: not in the file table of benchmarks/tried/README.md; add a row first")
    i = rows.index(match[0])
    pattern, _, scored = match[0]
    config = resolved_run(rows, i)
    notes = None
    command = cited_command(rows, path.name)
    if command is None and (scored == "the script itself" or scored.startswith("the run's `metrics.json`")):
        # the run wrote the JSON itself (star_rays.py), or the JSON is the run's own metrics.json
        spans = [c for c in re.findall(r"`([^`]+)`", rows[i][1]) if c.startswith("benchmarks/")]
        command = spans[0] if spans and not rows[i][1].startswith("the same") else config
        notes = plain(scored) if scored != "the script itself" else None
    elif command is None:
        # the span that writes this file ("--json ..."), the rest of the cell kept as notes
        spans = [c for c in re.findall(r"`([^`]+)`", scored) if "--json ..." in c]
        command = spans[0] if spans else plain(scored)
        notes = plain(scored) if plain(scored) != command else None
        if pattern != path.name and "A B" in command and {"a", "b"} <= set(data):
            command = command.replace("A B", f"{data['a']} {data['b']}", 1)  # the wildcard row's A and B
    command = command.replace("--json ...", f"--json benchmarks/tried/{path.name}")
    out = {"command": command, "config": config, "source": TABLE_SOURCE}
    if notes:
        out["notes"] = notes
    return out


def top_provenance(path: Path) -> dict:
    if path.name not in TOP:
        raise SystemExit(f"{path.name}: no command known for it; add it to TOP in {Path(__file__).name}")
    command, config, cited = TOP[path.name]
    return {"command": command, "config": config, "source": f"{cited} (TOP in benchmarks/tried/add_provenance.py)"}


def commit_of(path: Path) -> str:
    out = subprocess.run(["git", "log", "--format=%H", "-1", "--", str(path.relative_to(ROOT))], cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode or not out.stdout.strip():
        raise SystemExit(f"{path}: git knows no commit of it (not committed yet?)")
    return out.stdout.strip()


def has_provenance(data: dict) -> bool:
    prov = data.get("provenance")
    if isinstance(prov, dict) and prov.get("commit") and prov.get("command"):
        return True
    return bool(data.get("commit")) and bool(data.get("command"))


def result_files() -> list[Path]:
    """Every result JSON under benchmarks/: the top level and tried/."""
    return sorted(BENCH.glob("*.json")) + sorted(TRIED.glob("*.json"))


def dump_like(data: dict, text: str) -> str:
    """``data`` written with the indent ``text`` was written with (and its final newline, if it had one)."""
    for indent in (2, 1, 4, None):
        if json.dumps(json.loads(text), indent=indent) == text.rstrip("\n"):
            break
    else:
        indent = 2
    return json.dumps(data, indent=indent) + ("\n" if text.endswith("\n") else "")


def add(path: Path, rows: list[tuple[str, str, str]]) -> bool:
    """Add provenance to one file; False when it had it already."""
    text = path.read_text()
    data = json.loads(text)
    if has_provenance(data):
        return False
    prov = tried_provenance(path, rows, data) if path.parent == TRIED else top_provenance(path)
    data["provenance"] = {"commit": commit_of(path), "commit_from": COMMIT_FROM, **prov}
    path.write_text(dump_like(data, text))
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only list the files without provenance")
    args = ap.parse_args()
    rows = table_rows((TRIED / "README.md").read_text())
    if args.check:
        missing = [p for p in result_files() if not has_provenance(json.loads(p.read_text()))]
        for p in missing:
            print(p.relative_to(ROOT))
        sys.exit(1 if missing else 0)
    changed = [p for p in result_files() if add(p, rows)]
    print(f"provenance added to {len(changed)} file(s); {len(result_files()) - len(changed)} had it")


if __name__ == "__main__":
    main()
