"""Publishing: every check before upload, the dry run, and the upload at huggingface_hub's
API boundary. The Hub cannot be reached here: the upload test hands ``publish`` an ``HfApi``
whose ``create_repo`` and ``upload_folder`` record what reaches them instead of sending it
(the only stand-in in this file, at the boundary the issue names); an unreachable endpoint is
tested with the real client."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import run_cli
from huggingface_hub import HfApi

from mergemed.engine import merge
from mergemed.errors import MergemedError
from mergemed.publish import check_folder, publish, write_card

FAKE_TOKEN = "hf_" + "abcdefghijklmnopqrstuvwxyz012345"


@pytest.fixture
def card_ready(tiny_model_pair, tmp_path) -> Path:
    base, other = tiny_model_pair("llama")
    recipe = tmp_path / "linear.yaml"
    recipe.write_text(
        f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.5}}\n"
        f"  - model: {other}\n    parameters: {{weight: 0.5}}\n"
    )
    merged = merge(recipe, tmp_path / "merged").output
    write_card(merged, licence="apache-2.0")
    return merged


class RecordingApi(HfApi):
    """An HfApi that records the calls reaching it instead of sending them."""

    def __init__(self):
        super().__init__(token="hf_unused")
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


def test_dry_run_lists_what_would_go_up_and_uploads_nothing(card_ready):
    api = RecordingApi()
    plan = publish(card_ready, "me/medmerge", dry_run=True, api=api)
    assert api.calls == []
    assert {"README.md", "merge.json", "recipe.yaml", "model.safetensors", "config.json"} <= set(
        plan.files
    )
    assert plan.licence == "apache-2.0"
    assert plan.total_bytes == sum(p.stat().st_size for p in card_ready.iterdir() if p.is_file())


def test_the_upload_sends_the_repo_folder_flag_message_and_files(card_ready):
    api = RecordingApi()
    plan = publish(card_ready, "me/medmerge", private=True, api=api)
    (create, created), (upload, uploaded) = api.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert created == {
        "repo_id": "me/medmerge",
        "repo_type": "model",
        "private": True,
        "exist_ok": True,
    }
    assert uploaded["repo_id"] == "me/medmerge" and uploaded["folder_path"] == str(card_ready)
    assert uploaded["commit_message"] == "mergemed linear merge"
    assert sorted(uploaded["allow_patterns"]) == sorted(plan.files)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_weights", "no .safetensors weights"),
        ("pickle", "holds pickle files (pytorch_model.bin)"),
        ("no_card", "no model card"),
        ("no_template", "no chat template"),
        ("token_in_file", "notes.txt: holds a string shaped like an access token"),
        ("card_numbers", "shows scores but names no evaluation results"),
        ("missing_tensor", "tensors missing"),
    ],
)
def test_each_check_refuses_in_one_line(damage, expected, card_ready, monkeypatch):
    if damage == "no_weights":
        (card_ready / "model.safetensors").unlink()
    elif damage == "pickle":
        (card_ready / "pytorch_model.bin").write_bytes(b"\x80\x04")
    elif damage == "no_card":
        (card_ready / "README.md").unlink()
    elif damage == "no_template":
        (card_ready / "chat_template.jinja").unlink()
    elif damage == "token_in_file":
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        (card_ready / "notes.txt").write_text(f"my token is {FAKE_TOKEN}\n")
    elif damage == "card_numbers":
        text = (card_ready / "README.md").read_text()
        invented = (
            "model-index:\n- name: merged\n  results:\n  - task: {type: text-generation}\n"
            "    dataset: {name: mm_pubmedqa, type: mm_pubmedqa}\n"
            "    metrics:\n    - {type: acc, value: 0.99}\n"
        )
        (card_ready / "README.md").write_text(text.replace("---\n", "---\n" + invented, 1))
    elif damage == "missing_tensor":
        from safetensors.torch import load_file, save_file

        tensors = load_file(card_ready / "model.safetensors")
        tensors.pop("model.norm.weight")
        save_file(tensors, card_ready / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergemedError) as caught:
        check_folder(card_ready, "me/medmerge")
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert FAKE_TOKEN not in message


def test_bad_repo_ids_and_no_token_are_one_line(card_ready, tmp_path, monkeypatch):
    for bad in ("no-namespace", "me/bad name", "a/b/c"):
        with pytest.raises(MergemedError, match="not a Hub repository id"):
            check_folder(card_ready, bad)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    with pytest.raises(MergemedError, match=r"not logged in .*HF_TOKEN"):
        publish(card_ready, "me/medmerge")


def test_an_unreachable_hub_is_one_line_without_the_token(card_ready, tmp_path):
    """The real client against a closed local port: one line, exit 2, the token masked."""
    result = run_cli(
        "publish",
        card_ready,
        "--repo-id",
        "me/medmerge",
        env={
            "HF_TOKEN": FAKE_TOKEN,
            "HF_ENDPOINT": "http://127.0.0.1:9",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "home"),
        },
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "upload to me/medmerge failed" in lines[0], result.stderr
    assert FAKE_TOKEN not in result.stdout + result.stderr


def test_a_conflicting_licence_stops_publishing(card_ready, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(card_ready, folder)
    write_card(folder)  # the tiny parents' cards name no licence: none is decided
    with pytest.raises(MergemedError, match="licence is not decided"):
        check_folder(folder, "me/medmerge")
