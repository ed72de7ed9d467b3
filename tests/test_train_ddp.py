"""Data-parallel training through torchrun (gloo on CPU): two ranks, one run folder."""
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import run_torchrun


@pytest.mark.slow
def test_torchrun_two_processes(stack_files, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    vol, lab = stack_files
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'task = "membrane"\n[model]\nbase_features = 4\ndepth = 2\n[data]\nimages = "{vol}"\nlabels = "{lab}"\n'
        'val_indices = [3]\npatch_size = 32\npatches_per_epoch = 8\n'
        "[train]\nepochs = 2\nbatch_size = 2\nthreads = 1\n"
    )
    out = run_torchrun(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "biounet.cli", "train",
         "-c", str(cfg), "-o", str(tmp_path / "run"), "--quiet"], tmp_path / "run")
    assert out.returncode == 0, out.stderr[-2000:]
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2  # written once (rank 0), not once per rank
    assert (tmp_path / "run" / "model.safetensors").is_file()
