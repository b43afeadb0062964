"""Turn a model spec into a local checkpoint directory.

Spec forms: ``demo`` | a local directory | a ModelScope id (``owner/name``) |
``hf:<repo>``. A spec that cannot be resolved raises ModelSpecError naming the
spec, where it looked and the fix; there is never a fallback to another model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serve_app.engine.demo import DEMO_SPEC, demo_model_dir
from serve_app.engine.errors import ModelSpecError

DEFAULT_MODEL_ID = "iic/nlp_mt5_zero-shot-augment_chinese-base"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FIX = (
    "Set `model` in config.yaml or the MT5_MODEL environment variable to one of: 'demo' (built-in tiny model, "
    "offline), "
    "a local directory holding config.json and the weights, a ModelScope id such as "
    f"'{DEFAULT_MODEL_ID}', or 'hf:<repo>' for the Hugging Face Hub."
)

SpecKind = Literal["demo", "local", "modelscope", "huggingface"]
# What a caller needs of a hub checkpoint: everything (the model replica), or the tokenizer's files only
# (the text deployments: a node that runs no model replica never fetches the weights).
Files = Literal["all", "tokenizer"]
TOKENIZER_FILES = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
]


@dataclass(frozen=True)
class ResolvedSpec:
    spec: str
    kind: SpecKind
    path: Path

    @property
    def is_demo(self) -> bool:
        return self.kind == "demo"


def classify_spec(spec: str) -> SpecKind:
    """Which source a spec names, decided without touching the disk's contents or the network."""
    spec = spec.strip()
    if spec == DEMO_SPEC:
        return "demo"
    if spec.startswith("hf:"):
        return "huggingface"
    if spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir():
        return "local"
    if _REPO_ID.match(spec):
        return "modelscope"
    return "local"


def resolve_spec(spec: str, files: Files = "all") -> ResolvedSpec:
    """Find or fetch the checkpoint a spec names; downloads happen once into the hub's cache.

    `files="tokenizer"` fetches only TOKENIZER_FILES from a hub (a local or demo checkpoint is used as it is)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"Model spec is empty. {_FIX}")
    spec = spec.strip()
    kind = classify_spec(spec)
    if kind == "demo":
        return ResolvedSpec(spec, kind, demo_model_dir())
    if kind == "local":
        return ResolvedSpec(spec, kind, _local_dir(spec))
    if kind == "huggingface":
        return ResolvedSpec(spec, kind, _download_hf(spec[len("hf:") :], _patterns(files)))
    return ResolvedSpec(spec, kind, _download_modelscope(spec, _patterns(files)))


def _patterns(files: Files) -> list[str] | None:
    return TOKENIZER_FILES if files == "tokenizer" else None


def _local_dir(spec: str) -> Path:
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise ModelSpecError(f"Model spec {spec!r} is a local path, but {path} does not exist. {_FIX}")
    if not path.is_dir():
        raise ModelSpecError(f"Model spec {spec!r} points at {path}, which is not a directory. {_FIX}")
    if not (path / "config.json").is_file():
        raise ModelSpecError(
            f"Model spec {spec!r}: {path} has no config.json, so it is not a checkpoint directory "
            f"(expected config.json, pytorch_model.bin or model.safetensors, spiece.model). {_FIX}"
        )
    return path


def _download_modelscope(model_id: str, allow_patterns: list[str] | None = None) -> Path:
    try:
        # modelscope's own snapshot_download delegates to this one; importing `modelscope` itself imports torch.
        from modelscope_hub import compat as modelscope_hub
    except ImportError as exc:  # pragma: no cover - modelscope (which requires modelscope-hub) is a hard dependency
        raise ModelSpecError(
            f"Model spec {model_id!r} is a ModelScope id, but modelscope is not installed: pip install modelscope"
        ) from exc
    try:
        # modelscope shows a progress bar per file and caches under $MODELSCOPE_CACHE.
        return Path(modelscope_hub.snapshot_download(model_id, allow_patterns=allow_patterns))
    except Exception as exc:
        raise ModelSpecError(
            f"Model spec {model_id!r} looked like a ModelScope id, but downloading it from modelscope.cn failed "
            f"({type(exc).__name__}: {exc}). Check the id and the network, or download it once elsewhere and point "
            f"MT5_MODEL at the directory. {_FIX}"
        ) from exc


def _download_hf(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    if not _REPO_ID.match(repo_id):
        raise ModelSpecError(f"Model spec 'hf:{repo_id}' does not name a Hugging Face repo as 'hf:owner/name'. {_FIX}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with transformers
        raise ModelSpecError("huggingface_hub is not installed: pip install huggingface_hub") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:
        raise ModelSpecError(
            f"Model spec 'hf:{repo_id}': downloading from the Hugging Face Hub failed ({type(exc).__name__}: {exc}). "
            f"Check the repo name, the network or HF_TOKEN, or point MT5_MODEL at a local copy. {_FIX}"
        ) from exc


@dataclass(frozen=True)
class PartialDownload:
    """Partial files an interrupted fetch of a hub spec left in the hub's cache."""

    files: list[Path]
    size: int
    resumable: bool  # the hub's client carries on from these bytes; else they are of no use

    def describe(self, spec: str) -> str:
        what = (
            f"an earlier download of {spec!r} stopped part-way ({self.size / 2**20:.1f} MiB in {len(self.files)} "
            "partial file(s))"
        )
        if self.resumable:
            return f"{what}: the ModelScope client resumes them from where they stopped"
        return (
            f"{what}: the Hugging Face client cannot resume them across runs, so they are removed and those files "
            "fetched again"
        )

    def discard_if_useless(self) -> None:
        if not self.resumable:
            for path in self.files:
                path.unlink(missing_ok=True)


def find_partial_downloads(spec: str) -> PartialDownload | None:
    """What an interrupted fetch of `spec` left behind (`*.incomplete` files), or None.

    ModelScope resumes its `<file>.incomplete` parts across runs; huggingface_hub writes each attempt
    to a file of its own and resumes only within one run (a kill -9 leaves its file behind for good)."""
    kind = classify_spec(spec)
    if kind == "huggingface":
        from huggingface_hub import constants

        folders = [Path(constants.HF_HUB_CACHE) / ("models--" + spec[len("hf:") :].replace("/", "--"))]
    elif kind == "modelscope":
        from modelscope_hub.utils.file_utils import get_cache_dir

        owner, name = spec.split("/", 1)
        root = get_cache_dir()
        folders = [
            root / "models" / f"{owner}--{name}",
            root / "models" / owner / name,
            root / "hub" / "models" / owner / name,
        ]
    else:
        return None
    files = sorted(path for folder in folders if folder.is_dir() for path in folder.rglob("*.incomplete"))
    if not files:
        return None
    return PartialDownload(files, sum(path.stat().st_size for path in files), resumable=kind == "modelscope")
