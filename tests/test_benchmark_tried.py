"""benchmarks/tried/: every result JSON is named in its README's file table with the command that made it,
and every file the table names is there, so a row in the tried table can always be traced to a file."""
import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRIED = ROOT / "benchmarks" / "tried"


def named_files(readme: str) -> list[str]:
    """The first column of the file table: | `name.json` | run | scored with |."""
    return re.findall(r"^\| `([^`]+\.json)` \|", readme, re.M)


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


def test_every_tried_json_parses():
    for path in TRIED.glob("*.json"):
        assert isinstance(json.loads(path.read_text()), dict), path.name
