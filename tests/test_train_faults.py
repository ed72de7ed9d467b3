"""Training survives faults: SIGKILL mid-run then --resume ends exactly where an uninterrupted run ends; SIGINT says how to resume."""
import signal
import subprocess
import sys
import time

import pytest
import torch


def _config(tmp_path, stack_files, epochs: int):
    vol, lab = stack_files
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'task = "membrane"\n[model]\nbase_features = 4\ndepth = 2\n[data]\nimages = "{vol}"\nlabels = "{lab}"\n'
        "val_indices = [3]\npatch_size = 32\npatches_per_epoch = 24\n"
        f'[train]\nepochs = {epochs}\nbatch_size = 4\nschedule = "cosine"\nthreads = 1\n'
    )
    return cfg


def _train(cfg, out, *extra):
    return [sys.executable, "-m", "biounet.cli", "train", "-c", str(cfg), "-o", str(out), "--quiet", *extra]


def _wait_for_epochs(proc, history, n: int, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if history.is_file() and len(history.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {proc.stderr.read()[-500:]}")
        time.sleep(0.02)
    pytest.fail("training did not reach the epoch to interrupt")


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(stack_files, tmp_path):
    epochs = 6
    cfg = _config(tmp_path, stack_files, epochs)
    straight = subprocess.run(_train(cfg, tmp_path / "straight"), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-1000:]
    proc = subprocess.Popen(_train(cfg, tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(proc, tmp_path / "killed" / "history.jsonl", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)  # never half-written
    assert state["epoch"] + 1 < epochs
    resumed = subprocess.run(_train(cfg, tmp_path / "killed", "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-1000:]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == epochs - 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not list((tmp_path / "killed").glob(".*tmp*"))  # no temporary files left behind


@pytest.mark.slow
def test_ctrl_c_exits_cleanly_and_says_how_to_resume(stack_files, tmp_path):
    # A suite started in the background (`nohup make test &`) runs with SIGINT ignored, which children
    # inherit and Python then leaves alone: the run never saw the signal and finished its 40 epochs with
    # status 0. The child gets the default disposition back, as a terminal's Ctrl-C would find it, and
    # more epochs than can run before the signal arrives.
    cfg = _config(tmp_path, stack_files, 100_000)
    proc = subprocess.Popen(_train(cfg, tmp_path / "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_epochs(proc, tmp_path / "run" / "history.jsonl", 1)
        t0 = time.time()  # the history line comes just before last.pt: wait for the state the message names
        while not (tmp_path / "run" / "last.pt").is_file() and time.time() - t0 < 60:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted:" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_before_the_first_epoch_ends_says_nothing_was_saved_and_the_same_command_starts_over(
        stack_files, tmp_path):
    """#51: it claimed 'last.pt holds epoch 0 ... --resume', which then found no state, and a fresh run with the
    same --out was refused as 'already holds a run'."""
    cfg = tmp_path / "slow.toml"
    cfg.write_text(_config(tmp_path, stack_files, 1).read_text().replace("patches_per_epoch = 24",
                                                                         "patches_per_epoch = 1000000"))
    out = tmp_path / "run"
    proc = subprocess.Popen(_train(cfg, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        while not (out / "config.json").is_file():  # setup is done: the first epoch is under way
            if proc.poll() is not None or time.time() - t0 > 120:
                pytest.fail(f"training did not start: {proc.stderr.read()[-500:]}")
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-1000:]
    assert not (out / "last.pt").exists()
    assert "no epoch was saved yet" in err and "holds epoch" not in err and "Traceback" not in err
    resume = subprocess.run(_train(cfg, out, "--resume"), capture_output=True, text=True, timeout=120)
    assert resume.returncode == 2 and "nothing to resume" in resume.stderr and "Traceback" not in resume.stderr
    again = subprocess.run(_train(_config(tmp_path, stack_files, 1), out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-1000:]
    assert (out / "last.pt").is_file()
