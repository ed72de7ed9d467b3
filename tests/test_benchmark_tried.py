"""benchmarks/: every result JSON says how it was made, and every benchmarks/tried JSON is named in its README's
file table with the command that made it, so a row in the tried table can always be traced to a file.

The experiments of benchmarks/tried/ are over: their scripts are kept to reproduce the JSONs, and one smoke test
checks that they still load against today's biounet (and that val_holdout.py, which reads the tried JSONs,
still reproduces its own); the suite tests the product, not the ended experiments.
"""
import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TRIED = BENCH / "tried"


def named_files(readme: str) -> list[str]:
    """The first column of the file table: | `name.json` | run | scored with |."""
    return re.findall(r"^\| `([^`]+\.json)` \|", readme, re.M)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_named_files_reads_only_the_file_column():
    text = "| `a.json` | run | x |\n| change | `b.json` |\n| `c-*.json` | r | s |\n"
    assert named_files(text) == ["a.json", "c-*.json"]


def test_every_tried_json_is_in_the_file_table_and_back():
    names = named_files((TRIED / "README.md").read_text())
    files = sorted(p.name for p in TRIED.glob("*.json"))
    assert files, "benchmarks/tried holds no result JSONs"
    unlisted = [f for f in files if not any(fnmatch.fnmatch(f, n) for n in names)]
    missing = [n for n in names if not any(fnmatch.fnmatch(f, n) for f in files)]
    assert not unlisted, f"in benchmarks/tried but not in its README's file table: {unlisted}"
    assert not missing, f"named in benchmarks/tried/README.md but not there: {missing}"
    assert len(names) == len(set(names)), "a file is named twice in the table"


def test_every_result_json_under_benchmarks_records_its_commit_and_command():
    """Top-level ``commit`` and ``command`` (written by benchmarks/_report.py since #48), or a ``provenance``
    object (added to the older files by benchmarks/tried/add_provenance.py)."""
    files = sorted(BENCH.glob("*.json")) + sorted(TRIED.glob("*.json"))
    assert len(files) > 90
    lacking = []
    for path in files:
        data = json.loads(path.read_text())
        assert isinstance(data, dict), path.name
        record = data.get("provenance") if "provenance" in data else data
        if not (isinstance(record, dict) and re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", str(record.get("commit", "")))
                and isinstance(record.get("command"), str) and record["command"].strip()):
            lacking.append(str(path.relative_to(ROOT)))
    assert not lacking, f"no commit and command (run benchmarks/tried/add_provenance.py): {lacking}"


def test_tried_provenance_names_the_file_it_describes_and_the_table_as_its_source():
    for path in TRIED.glob("*.json"):
        prov = json.loads(path.read_text())["provenance"]
        assert prov["source"] == "benchmarks/tried/README.md table" and prov["config"], path.name
        assert "--json ..." not in prov["command"], path.name
        if "--json" in prov["command"] and path.name != "dsb2018-nuclei-lovasz.json":
            assert path.name in prov["command"], path.name


def test_add_provenance_adds_one_key_keeps_the_rest_and_runs_once(tmp_path, monkeypatch):
    ap = _load(TRIED / "add_provenance.py")
    monkeypatch.setattr(ap, "TRIED", tmp_path)
    monkeypatch.setattr(ap, "commit_of", lambda path: "0123456789abcdef0123456789abcdef01234567")
    rows = ap.table_rows("| `x-*.json` | the named pair | `benchmarks/dsb_compare.py A B --json ...` (bootstrap) |\n"
                         "| `y.json` | `biounet train --out runs/y` | the script itself |\n"
                         "| `z.json` | the same with `--set train.seed=1` | `benchmarks/dsb2018.py --json ...` |\n")
    original = {"a": "runs/a", "b": "dsb2018-nuclei", "scores": [0.5, {"dsb": 0.25}]}
    path = tmp_path / "x-1.json"
    path.write_text(json.dumps(original, indent=1))
    assert ap.add(path, rows)
    data = json.loads(path.read_text())
    prov = data.pop("provenance")
    assert data == original and list(json.loads(path.read_text()))[-1] == "provenance"
    assert path.read_text().startswith('{\n "a"')  # the file's own indent kept
    assert prov["command"] == "benchmarks/dsb_compare.py runs/a dsb2018-nuclei --json benchmarks/tried/x-1.json"
    assert prov["commit"].startswith("0123") and prov["config"] == "the named pair"
    before = path.read_text()
    assert not ap.add(path, rows) and path.read_text() == before  # a second run changes nothing
    z = tmp_path / "z.json"
    z.write_text("{}")
    ap.add(z, rows)
    assert json.loads(z.read_text())["provenance"]["config"] == "biounet train --out runs/y; the same with --set train.seed=1"


def test_the_tried_scripts_still_load_and_val_holdout_reproduces_its_json(tmp_path):
    """The one smoke test of the ended experiments."""
    scripts = sorted(TRIED.glob("*.py"))
    assert len(scripts) >= 10
    for path in scripts:  # imports resolve against today's biounet; main() is not run
        assert callable(getattr(_load(path), "main", None)), path.name
    out = tmp_path / "vh.json"
    res = subprocess.run([sys.executable, str(TRIED / "val_holdout.py"), "--json", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    committed = json.loads((TRIED / "val-holdout.json").read_text())
    committed.pop("provenance")
    assert json.loads(out.read_text()) == committed
