"""Stage outputs are replaced atomically: a writer that dies half way leaves the previous file whole."""

from __future__ import annotations

import numpy as np
import pytest
from lhotse import CutSet, MonoCut, Recording
from lhotse.audio import AudioSource

from llm_asr.data.manifests import atomic_to_file
from llm_asr.features import load_cmvn, save_cmvn
from llm_asr.training.checkpoint import atomic_save, load_checkpoint


def _cuts(n: int) -> CutSet:
    recs = [Recording(f"r{i}", [AudioSource("file", [0], f"data/corpus/{i}.flac")], 16000, 16000, 1.0) for i in range(n)]
    return CutSet.from_cuts(MonoCut(r.id, 0.0, 1.0, 0, recording=r) for r in recs)


class Died(Exception):
    pass


def test_manifest_writer_killed_half_way_keeps_the_old_manifest(tmp_path, monkeypatch):
    path = tmp_path / "cuts_train.jsonl.gz"
    atomic_to_file(_cuts(3), path)
    real = CutSet.to_file

    def dies(self, p):
        real(self, p)
        open(p, "r+b").truncate(20)  # a torn temp file, then the process "dies"
        raise Died

    monkeypatch.setattr(CutSet, "to_file", dies)
    with pytest.raises(Died):
        atomic_to_file(_cuts(5), path)
    monkeypatch.setattr(CutSet, "to_file", real)
    assert len(CutSet.from_file(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_checkpoint_and_cmvn_writers_never_leave_a_torn_file(tmp_path, monkeypatch):
    import torch

    atomic_save({"w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(torch, "save", lambda obj, f: (f.write(b"PK\x03\x04torn"), (_ for _ in ()).throw(Died())))
    with pytest.raises(Died):
        atomic_save({"w": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temp file is gone
    save_cmvn(tmp_path / "cmvn.json", np.zeros(4), np.ones(4), 10)
    assert load_cmvn(tmp_path / "cmvn.json")[1].tolist() == [1.0] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "cmvn.json"]


def test_equal_manifests_are_equal_bytes_whenever_written(tmp_path, monkeypatch):
    """gzip stamps the time into its header; ours does not, so reruns and DVC hashes agree."""
    import time

    atomic_to_file(_cuts(3), tmp_path / "a.jsonl.gz")
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    atomic_to_file(_cuts(3), tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
