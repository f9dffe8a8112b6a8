"""Adapters on the Hugging Face hub, offline: the model card save_adapter writes, load_adapter("user/repo")
reading a folder laid out as huggingface_hub's cache, and push_to_hub's upload with HfApi's methods
replaced by recorders (nothing here touches the network)."""
import copy
import hashlib
import json

import huggingface_hub
import pytest
import torch
import yaml

import adapters
import share
from test_adapters import attached, batch, tiny

CARD_DATA = dict(run="lora_xnli", base_model="meta-llama/Llama-3.1-8B",
                 config=dict(name="lora_xnli", task="xnli", method="lora", lr=3e-3, train_source=None),
                 train_sources={"multi_nli": 100000}, versions=dict(torch="2.13.0", transformers="5.24.0"))


def front_matter(card):
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def trained_lora():
    model = attached(tiny(), "lora")
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_model_card_records_config_data_versions_and_matching_scores(tmp_path):
    folder = tmp_path / "run" / "adapter"
    adapters.save_adapter(trained_lora(), folder, extra=CARD_DATA)
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "xprefix" and meta["base_model"] == "meta-llama/Llama-3.1-8B"
    assert {"xprefix", "lora", "xnli"} <= set(meta["tags"])
    assert "| multi_nli | 100,000 |" in card and "| transformers | 5.24.0 |" in card
    assert '"lr": 0.003' in card and "Not evaluated yet" in card

    # evaluate.py's results.json beside the adapter: shown only if it scored these very weights
    digest = hashlib.sha256((folder / "adapter.safetensors").read_bytes()).hexdigest()
    results = dict(task="xnli", metric="accuracy", languages=["en", "de"], adapter_sha256=digest,
                   rows={"base": {"en": {"accuracy": 50.0}, "de": {"accuracy": 40.0}},
                         "lora": {"en": {"accuracy": 80.0}, "de": {"accuracy": 61.25}}})
    (folder.parent / "results.json").write_text(json.dumps(results))
    card = share.model_card(folder)
    assert "| | en | de | avg |" in card and "| base | 50.0 | 40.0 | 45.0 |" in card
    assert "| lora | 80.0 | 61.2 | 70.6 |" in card and "Not evaluated yet" not in card
    (folder.parent / "results.json").write_text(json.dumps(dict(results, adapter_sha256="0" * 64)))
    assert "Not evaluated yet" in share.model_card(folder)

    # a base model that is a local folder is no hub id: left out of the metadata
    adapters.save_adapter(trained_lora(), tmp_path / "local", extra=dict(CARD_DATA, base_model=str(tmp_path)))
    assert "base_model" not in front_matter((tmp_path / "local" / "README.md").read_text())


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE at a temporary folder and HF_HUB_OFFLINE on, as huggingface_hub reads them (it
    reads the variables when imported, so its constants are set too)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_adapter_from_a_hub_repo_id_reads_the_cache(tmp_path, offline_hub_cache):
    base = tiny()
    model = trained_lora()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub_cache / "models--someone--xnli-lora"
    adapters.save_adapter(model, repo / "snapshots" / commit, extra=CARD_DATA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    loaded = adapters.load_adapter(copy.deepcopy(base), "someone/xnli-lora", attn_backend="torch").eval()
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    assert adapters.read_adapter_config(base, "someone/xnli-lora", method="lora")["run"] == "lora_xnli"
    with pytest.raises(ValueError, match="'someone/missing' is no local folder, and the hub repo someone/missing "
                                         "could not be fetched"):
        adapters.load_adapter(copy.deepcopy(base), "someone/missing")
    with pytest.raises(ValueError, match="holds no adapter"):  # not shaped like a repo id: a local path, missing
        adapters.load_adapter(copy.deepcopy(base), str(tmp_path / "nowhere"))


@pytest.fixture
def recorded_hub(monkeypatch):
    """HfApi.create_repo and upload_folder replaced: each call and the files it would upload recorded."""
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kw):
        from pathlib import Path
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()
                 if allow_patterns is None or p.name in allow_patterns}
        calls.append(("upload_folder", repo_id, dict(kw, files=files)))
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_tensors_config_and_card(tmp_path, recorded_hub):
    folder = tmp_path / "adapter"
    (folder).mkdir()
    (folder / "adapter.safetensors.tmp").write_text("a crash's leftover: never uploaded")
    adapters.save_adapter(trained_lora(), folder, extra=CARD_DATA, push_to_hub="someone/xnli-lora")
    (create, repo_id, kw), (upload, repo_id2, uploaded) = recorded_hub
    assert (create, repo_id, kw["exist_ok"], kw["repo_type"]) == ("create_repo", "someone/xnli-lora", True, "model")
    assert (upload, repo_id2) == ("upload_folder", "someone/xnli-lora")
    files = uploaded["files"]
    assert sorted(files) == ["README.md", "adapter.safetensors", "adapter_config.json"]
    assert files["adapter.safetensors"] == (folder / "adapter.safetensors").read_bytes()
    assert json.loads(files["adapter_config.json"])["train_sources"] == {"multi_nli": 100000}
    assert front_matter(files["README.md"].decode())["library_name"] == "xprefix"
    assert 'load_adapter(model, "someone/xnli-lora")' in files["README.md"].decode()


def test_push_errors_are_clear(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    adapters.save_adapter(trained_lora(), folder)
    with pytest.raises(ValueError, match="'not a repo' is not a hub repo id"):
        share.push_adapter(folder, "not a repo")
    with pytest.raises(ValueError, match="holds no adapter to push"):
        share.push_adapter(tmp_path / "empty", "someone/repo")

    def not_logged_in(self, repo_id, **kw):
        raise huggingface_hub.errors.LocalTokenNotFoundError("Token is required (`token=True`)")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", not_logged_in)
    with pytest.raises(ValueError, match=r"could not push .* someone/repo \(LocalTokenNotFoundError: Token is required"):
        share.push_adapter(folder, "someone/repo")
