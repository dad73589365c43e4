"""Where every stage reads and writes, relative to one workdir (DESIGN section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    workdir: Path

    @classmethod
    def at(cls, workdir: str | Path | None = None) -> "Paths":
        from llm_asr.config import project_root

        return cls(Path(workdir).resolve() if workdir else project_root())

    @property
    def corpus(self) -> Path:
        return self.workdir / "data" / "corpus"

    @property
    def manifests(self) -> Path:
        return self.workdir / "data" / "manifests"

    @property
    def ood(self) -> Path:
        """The out-of-domain test set, MLS layout (stage prepare_ood)."""
        return self.workdir / "data" / "ood"

    @property
    def features(self) -> Path:
        return self.workdir / "data" / "features"

    @property
    def cache(self) -> Path:
        """Downloads (Debian text packages, MLS archives), shared by every workdir."""
        import os

        from llm_asr.config import REPO_ROOT

        return Path(os.environ.get("LLM_ASR_CACHE") or REPO_ROOT / ".cache")

    @property
    def ctc_model(self) -> Path:
        return self.workdir / "models" / "ctc"

    @property
    def speech_llm_model(self) -> Path:
        return self.workdir / "models" / "speech_llm"

    @property
    def reports(self) -> Path:
        return self.workdir / "reports"

    @property
    def mlflow_db(self) -> Path:
        return self.workdir / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.workdir / "mlartifacts"
