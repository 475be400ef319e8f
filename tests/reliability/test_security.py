"""Nothing a user receives is executed: a crafted pickle, whose unpickling would create a marker file, placed in
the torch hub cache and in every file tc2ssl reads, is refused with a one-line error and never runs."""
from __future__ import annotations

import builtins
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import TINY, assert_one_line_error

from tc2ssl.errors import ConfigError
from tc2ssl.train.checkpoint import CHECKPOINT_NAME


class Payload:
    """Unpickling this calls exec(...), which creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def crafted_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)})


def crafted_torch_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a crafted pickle was executed"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


def test_the_payload_is_live(tmp_path):
    """The crafted file does run code when unpickled without restriction (so the tests below test something)."""
    marker = tmp_path / "ran"
    crafted_torch_file(tmp_path / "x.pth", marker)
    torch.load(tmp_path / "x.pth", weights_only=False)
    assert marker.exists()


def test_a_crafted_file_in_the_hub_cache_is_refused(cli, tmp_path, torch_home, marker):
    crafted_torch_file(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    rc, _, err = cli("pretrain", *TINY, "model.backbone=resnet18", "model.pretrained=true",
                     f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "resnet18-f37072fd.pth is not the published file", "f37072fd")


def test_a_crafted_file_with_a_matching_hash_prefix_is_still_not_unpickled(tmp_path, torch_home, marker):
    """Even a file whose name carries its own sha256 prefix is read with weights_only=True."""
    from tc2ssl.models.pretrained import load_verified_state_dict

    staging = crafted_torch_file(tmp_path / "evil.pth", marker)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    cached = torch_home / "hub" / "checkpoints" / f"evil-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    staging.rename(cached)
    with pytest.raises(ConfigError, match="could not be read as weights"):
        load_verified_state_dict(f"https://example.invalid/models/evil-{prefix}.pth")


def test_offline_without_cached_weights_is_one_line(cli, tmp_path, torch_home, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    rc, _, err = cli("pretrain", *TINY, "model.backbone=resnet18", "model.pretrained=true",
                     f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "could not download the pretrained weights", "copy it to",
                          str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"))


def test_timm_offline_without_cached_weights_is_one_line(cli, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    rc, _, err = cli("pretrain", *TINY, "model.backbone=timm:resnet18", "model.pretrained=true",
                     f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, "could not load timm's pretrained weights for 'resnet18'", "model.pretrained=false")


def test_evaluating_a_received_pretrained_run_does_not_touch_the_cache(cli, tmp_path, torch_home, marker):
    """A received run folder whose config says model.pretrained=true: its encoder comes from encoder.safetensors
    (the hub cache is not read); the random-init baseline needs the ImageNet weights and refuses the crafted ones."""
    from tc2ssl.config import load_config, to_dict, to_yaml
    from tc2ssl.models import build_backbone
    from tc2ssl.train.checkpoint import export_encoder

    crafted_torch_file(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth", marker)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        np.savez(data / f"{split}.npz", images=np.zeros((8, 16, 16), np.uint8), labels=np.arange(8) % 2)
    cfg = load_config((), ["model.backbone=resnet18", "data.name=npz", f"data.root={data}",
                           f"out={tmp_path / 'run'}"])
    run = Path(cfg.out)
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg).replace("pretrained: false", "pretrained: true"))
    export_encoder(run / "encoder.safetensors", build_backbone(cfg.model, 1),
                   {"backbone": "resnet18", "in_channels": 1, "resolution": 16, "config": to_dict(cfg)})
    rc, _, err = cli("evaluate", str(run), "eval.random_init_baseline=false", "eval.probe_cs=[1.0]",
                     "eval.probe_max_iter=20")
    assert rc == 0, err
    rc, _, err = cli("evaluate", str(run), "eval.probe_cs=[1.0]", "eval.probe_max_iter=20")
    assert_one_line_error(rc, err, "is not the published file")


@pytest.fixture
def stopped_run(cli, tmp_path):
    out = tmp_path / "run"
    rc, _, err = cli("pretrain", *TINY, "train.epochs=2", "train.max_steps=2", f"out={out}")
    assert rc == 0, err
    return out


def test_a_crafted_checkpoint_is_not_unpickled(cli, stopped_run, marker):
    crafted_torch_file(stopped_run / CHECKPOINT_NAME, marker)
    rc, _, err = cli("pretrain", *TINY, "train.epochs=2", f"out={stopped_run}", "train.resume=true")
    assert_one_line_error(rc, err, "corrupt or not a tc2ssl checkpoint")


def test_a_pickle_as_encoder_is_not_unpickled(cli, stopped_run, marker):
    (stopped_run / "encoder.safetensors").write_bytes(crafted_pickle(marker))
    rc, _, err = cli("evaluate", str(stopped_run))
    assert_one_line_error(rc, err, "not a readable safetensors file")
    torch.save({"w": Payload(marker)}, stopped_run / "encoder.safetensors")   # a torch zip file, likewise
    rc, _, err = cli("evaluate", str(stopped_run))
    assert_one_line_error(rc, err, "not a readable safetensors file")


def test_a_pickle_in_metrics_jsonl_is_not_unpickled(cli, stopped_run, marker):
    metrics = stopped_run / "metrics.jsonl"
    metrics.write_bytes(crafted_pickle(marker) + b"\n" + metrics.read_bytes())
    rc, _, err = cli("pretrain", *TINY, "train.epochs=2", f"out={stopped_run}", "train.resume=true")
    assert_one_line_error(rc, err, "metrics.jsonl, line 1: not a metrics record")


def test_a_python_tag_in_a_run_config_is_not_constructed(cli, stopped_run, marker):
    config = stopped_run / "config.yaml"
    config.write_text(f"seed: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n"
                      + config.read_text())
    rc, _, err = cli("evaluate", str(stopped_run))
    assert_one_line_error(rc, err, "not valid YAML")
    rc, _, err = cli("pretrain", *TINY, "train.epochs=2", f"out={stopped_run}")   # a new run: refused, unread
    assert_one_line_error(rc, err, "already holds files")


@pytest.mark.parametrize("how", ["pickle named .npz", "object array in an npz"])
def test_a_pickle_in_an_npz_is_not_unpickled(how, cli, tmp_path, marker):
    path = tmp_path / "data.npz"
    if how == "pickle named .npz":
        path.write_bytes(crafted_pickle(marker))
    else:
        np.savez(path, images=np.array([Payload(marker), None], dtype=object))
    rc, _, err = cli("pretrain", *TINY, "data.name=npz", f"data.root={path}", f"out={tmp_path / 'run'}")
    assert_one_line_error(rc, err, str(path), "not a readable .npz file")


def test_a_crafted_preset_is_not_constructed(cli, tmp_path, marker):
    preset = tmp_path / "evil.yaml"
    preset.write_text(f"seed: !!python/object/apply:builtins.exec [\"open({str(marker)!r}, 'w').close()\"]\n")
    rc, _, err = cli("config", "-p", str(preset))
    assert_one_line_error(rc, err, "not valid YAML")
