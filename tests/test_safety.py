"""Nothing a user has is lost: foreign folders, interrupted exports, overwrites, concurrent runs,
changed resumes, unwritable places. Each test reproduces the case for real (a real second process,
a real full or read-only filesystem) and checks what is left on disk."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_run_args, tmpfs, train_error, write_lines

from hfmini.config import parse_config
from hfmini.errors import HfminiError
from hfmini.outputs.checkpoint import TrainState, check_resume_settings, training_settings
from hfmini.run_folder import LOCK_FILE, holds_finished_model, list_checkpoints
from hfmini.training import trainer as train_module
from hfmini.training.trainer import run_training


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def data_args(small_data):
    """Runs of a few seconds on local data, with a checkpoint mid-run."""

    def make(out, *extra):
        return tiny_run_args(out, 6, *small_data, "--save_steps", "3", *extra)

    return make


# --- 1. a folder hfmini did not make is never written into -------------------------------------


def test_a_users_folder_is_refused_and_left_alone(capsys, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "tokenizer_config.json").write_text("{}")
    before = snapshot(mine)
    message = train_error(capsys, *tiny_run_args(mine))
    assert "already holds files that hfmini did not write (README.md, tokenizer_config.json)" in (
        message
    )
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == [
        "README.md",
        "tokenizer_config.json",
    ]
    # --overwrite_output_dir does not make it hfmini's either.
    train_error(capsys, *tiny_run_args(mine, 4, "--overwrite_output_dir", "true"))
    assert snapshot(mine) == before


def test_output_dir_dot_in_a_repository_is_refused(capsys, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# my project")
    monkeypatch.chdir(repo)
    message = train_error(capsys, *tiny_run_args(".", 4))
    assert "output_dir . already holds files that hfmini did not write (README.md)" in message
    assert (repo / "README.md").read_text() == "# my project" and len(list(repo.iterdir())) == 1


def test_an_empty_folder_is_used_and_marked_as_hfminis(tmp_path, data_args):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_training(parse_config(data_args(empty)))
    assert holds_finished_model(empty) and (empty / LOCK_FILE).is_file()


# --- 2 and 9. the final export is atomic; a full disk there is one line --------------------------


def test_full_disk_during_the_final_export_leaves_resumable_checkpoints(
    capsys, tmp_path, data_args
):
    """A real full disk while the final model is written: one line, no half model that blocks
    resume, the checkpoint intact; on a bigger disk the same command with resume finishes."""
    reference = tmp_path / "reference"
    run_training(parse_config(data_args(reference)))
    checkpoint_bytes = sum(len(b) for b in snapshot(reference / "checkpoints").values())
    model_bytes = (reference / "model.safetensors").stat().st_size
    disk = tmp_path / "disk"
    # Room for the checkpoint (written once, under .tmp, then renamed) and the logs, but for only
    # half of the exported weights.
    size = checkpoint_bytes + model_bytes // 2 + 96 * 1024
    with tmpfs(disk, str(size)):
        out = disk / "run"
        message = train_error(capsys, *data_args(out))
        assert message.startswith(f"error: could not write the model to {out} (")
        assert "No space left on device" in message and "--resume_from_checkpoint latest" in message
        assert not (out / ".hfmini-export").exists() and not holds_finished_model(out)
        assert [p.name for p in list_checkpoints(out)] == ["step-3"]
        subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)
        assert train_module.main(data_args(out, "--resume_from_checkpoint", "latest")) == 0
        assert holds_finished_model(out)


def test_a_config_without_weights_is_not_a_finished_model(tmp_path, data_args):
    """What an export killed before its weights leaves (as older hfmini wrote it in place):
    resume is allowed, and the advice never hides that --overwrite_output_dir deletes."""
    out = tmp_path / "out"
    run_training(parse_config(data_args(out)))
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:100])
    assert not holds_finished_model(out)
    run_training(parse_config(data_args(out, "--resume_from_checkpoint", "latest")))
    assert holds_finished_model(out)
    with pytest.raises(
        HfminiError, match=r"--overwrite_output_dir \(which deletes its checkpoints"
    ):
        run_training(parse_config(data_args(out)))


# --- 3. --overwrite_output_dir checks everything before deleting anything -----------------------


def test_overwrite_with_a_typo_deletes_nothing(capsys, tmp_path, data_args):
    out = tmp_path / "out"
    run_training(parse_config(data_args(out)))
    before = snapshot(out)
    message = train_error(
        capsys,
        *data_args(
            out, "--overwrite_output_dir", "true", "--train_file", str(tmp_path / "trian.txt")
        ),
    )
    assert "trian.txt does not exist" in message
    assert snapshot(out) == before  # checkpoints, metrics and model all still there


# --- 4. one run at a time in a folder -----------------------------------------------------------

HOLD_LOCK = """
import sys, time
from hfmini.outputs.output_dir import OutputDirLock
with OutputDirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_first(capsys, tmp_path, data_args):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = train_error(capsys, *data_args(out))
        assert f"is in use by another hfmini run (process {holder.pid})" in message
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of ours written
    finally:
        holder.kill()
        holder.wait()
    # Once the other process is gone, its lock goes with it.
    run_training(parse_config(data_args(out)))
    assert holds_finished_model(out)


# --- 5. a resume with other settings or data is refused -----------------------------------------


@pytest.fixture
def stopped_run(tmp_path, data_args):
    """A run whose final model was lost: only its checkpoint at step 3 and the metrics remain."""
    out = tmp_path / "out"
    run_training(parse_config(data_args(out)))
    for path in out.iterdir():
        if path.is_file() and path.name not in ("metrics.jsonl", LOCK_FILE):
            path.unlink()
    return out


@pytest.mark.parametrize(
    "change, listed",
    [
        (["--learning_rate", "0.01"], "learning_rate 0.003 → 0.01"),
        (["--per_device_train_batch_size", "4"], "per_device_train_batch_size 8 → 4"),
        (
            ["--max_steps", "12"],
            "(the cosine schedule is laid out over the run's length): max_steps 6 → 12",
        ),
        (["--dropout", "0.1"], "dropout 0.0 → 0.1"),
    ],
)
def test_resume_with_changed_training_settings_is_refused(stopped_run, data_args, change, listed):
    with pytest.raises(HfminiError) as refused:
        run_training(
            parse_config(data_args(stopped_run, "--resume_from_checkpoint", "latest", *change))
        )
    assert listed in str(refused.value)
    assert (
        "--init_from_checkpoint CHECKPOINT (its weights and optimizer state, a fresh schedule) with another output_dir"
        in str(refused.value)
    )


def test_a_checkpoint_from_before_a_setting_existed_resumes(stopped_run, data_args):
    """Settings added later (the fine-tuning ones) count as their defaults in older checkpoints."""
    state_file = stopped_run / "checkpoints" / "step-3" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for key in ("model_name_or_path", "use_peft", "lora_r", "lora_target_modules"):
        del state["settings"][key]
    state_file.write_text(json.dumps(state))
    run_training(parse_config(data_args(stopped_run, "--resume_from_checkpoint", "latest")))
    assert (stopped_run / "model.safetensors").is_file()
    # A setting that is not at its default still counts as changed.
    lora = parse_config(tiny_run_args(stopped_run, 6, "--use_peft", "true", finetune_from="x"))
    saved = TrainState(settings=training_settings(lora))
    del saved.settings["use_peft"]
    with pytest.raises(HfminiError, match="use_peft False → True"):
        check_resume_settings(saved, lora)


def test_resume_on_other_data_is_refused(stopped_run, data_args, tmp_path):
    other = write_lines(tmp_path / "other.txt", 150, seed=9)
    args = data_args(stopped_run, "--resume_from_checkpoint", "latest", "--train_file", str(other))
    with pytest.raises(
        HfminiError, match="data differ from the checkpoint's.*--init_from_checkpoint"
    ):
        run_training(parse_config(args))


def test_resume_with_other_logging_and_a_longer_constant_schedule_is_accepted(
    tmp_path, data_args, caplog
):
    out = tmp_path / "out"
    constant = ("--lr_scheduler_type", "constant")
    run_training(parse_config(data_args(out, *constant)))
    (out / "model.safetensors").unlink()
    args = data_args(out, *constant, "--resume_from_checkpoint", "latest", "--logging_steps", "2")
    run_training(parse_config([*args, "--max_steps", "9"]))
    assert "max_steps 6 → 9: the constant learning rate 0.003 goes on unchanged" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 9


# --- 10. places that cannot be written, found before any work ----------------------------------


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_impossible_output_dir(capsys, tmp_path, where):
    if where == "under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    else:
        out = "/proc/hfmini-out"
    message = train_error(capsys, *tiny_run_args(out, 2))
    assert f"output_dir {out} cannot be written (" in message and "choose a folder" in message


def test_read_only_output_dir_fails_before_any_work(capsys, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("hfmini.training.setup.prepare_data", lambda *a, **k: calls.append(1))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        message = train_error(capsys, *tiny_run_args(ro, 2))
    assert "cannot be written (Read-only file system)" in message and not calls


def test_read_only_hf_home_is_one_line(capsys, tmp_path, monkeypatch):
    with tmpfs(tmp_path / "hf", "1m", read_only=True) as hf_home:
        monkeypatch.setenv("HF_HOME", str(hf_home))
        message = train_error(capsys, *tiny_run_args(tmp_path / "out", 2))
    assert f"the Hugging Face cache {hf_home} cannot be written (Read-only file system)" in message
    assert "set HF_HOME" in message
    assert not (tmp_path / "out").exists()  # the folder this run made is removed again


def test_the_lock_file_names_the_running_process(tmp_path):
    from hfmini.outputs.output_dir import OutputDirLock

    with OutputDirLock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_FILE).read_text().strip() == str(os.getpid())
    # Released on leaving: a second claim succeeds.
    with OutputDirLock(tmp_path / "out"):
        pass


def test_the_lock_needs_no_fcntl(tmp_path):
    """Native Windows has no fcntl: with it made unimportable, hfmini still imports and a run's
    folder is still claimed (filelock picks another mechanism) and released."""
    script = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "import hfmini, hfmini.training.trainer\n"
        "from hfmini.outputs.output_dir import OutputDirLock\n"
        "with OutputDirLock(sys.argv[1]):\n"
        "    print(open(sys.argv[1] + '/.hfmini.lock').read().strip())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().isdigit()
    assert not (tmp_path / "out").exists()  # made by the claim, left empty: removed


def test_full_disk_while_logging_on_resume_keeps_the_checkpoint(capsys, stopped_run, data_args):
    """metrics.jsonl on a device that is always full (/dev/full: every write fails with ENOSPC,
    from the kernel): the resumed run ends in one line naming the file, the folder, the bytes it
    needed and the checkpoint to resume from, which is untouched."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    before = snapshot(stopped_run / "checkpoints")
    (stopped_run / "metrics.jsonl").unlink()
    (stopped_run / "metrics.jsonl").symlink_to("/dev/full")
    message = train_error(capsys, *data_args(stopped_run, "--resume_from_checkpoint", "latest"))
    assert message.startswith(
        f"error: no space left on device for metrics.jsonl in {stopped_run} (needs "
    )
    assert message.endswith(
        "free disk space there, then run the same command with --resume_from_checkpoint latest "
        "(step-3 is untouched)"
    )
    assert snapshot(stopped_run / "checkpoints") == before
    assert not holds_finished_model(stopped_run)
