"""The text deployments stay light: no torch in their processes, the same token ids, and only
the tokenizer's files fetched from a hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from serve_app.engine.demo import demo_model_dir
from serve_app.engine.spec import TOKENIZER_FILES, resolve_spec
from serve_app.text.prompts import (
    CLASSIFICATION_TEMPLATE,
    Template,
    classification_values,
)

pytestmark = pytest.mark.unit

SAMPLES = [
    "等了三天还没发货,客服也不回消息",
    "今天阳光明媚 hello world 123 ！？",
    "　全角空格\t和制表符\n换行 <extra_id_0> </s> <pad>",
    "😀 emoji ünïcödé",
]

# What a light replica does on start and per request, in a fresh interpreter; it prints what it saw.
LIGHT_PROCESS = """
import json, sys
import serve_app.ingress.ingress, serve_app.deployments.classifier, serve_app.deployments.generator
from serve_app.engine.spec import resolve_spec
from serve_app.engine.tokenizer import load_tokenizer
from serve_app.text.tokenization import PromptEncoder
from serve_app.text.prompts import Template
encoder = PromptEncoder(load_tokenizer(resolve_spec(sys.argv[1], files="tokenizer").path))
samples = json.loads(sys.argv[2])
print(json.dumps({
    "torch_loaded": sorted(name for name in sys.modules if name == "torch" or name.startswith("torch.")),
    "ids": [encoder.encode(Template("{text}"), {"text": text}).input_ids for text in samples],
    "decoded": [encoder.decode(encoder.encode(Template("{text}"), {"text": text}).input_ids) for text in samples],
}))
"""


def run_light_process(checkpoint: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_PROCESS, checkpoint, json.dumps(SAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_light_deployments_tokenize_without_torch_and_match_auto_tokenizer() -> None:
    path = demo_model_dir()
    seen = run_light_process(str(path))
    assert seen["torch_loaded"] == []
    reference = AutoTokenizer.from_pretrained(str(path))  # what the project used before: imports torch
    assert seen["ids"] == [reference(text)["input_ids"] for text in SAMPLES]
    assert seen["decoded"] == [reference.decode(ids, skip_special_tokens=True).strip() for ids in seen["ids"]]


def test_a_checkpoint_with_only_spiece_model_tokenizes_the_same(tmp_path: Path) -> None:
    """The ModelScope layout ships spiece.model; transformers converts it, with or without torch."""
    source = demo_model_dir()
    for name in ("config.json", "spiece.model"):
        shutil.copy(source / name, tmp_path / name)
    seen = run_light_process(str(tmp_path))
    assert seen["torch_loaded"] == []
    reference = AutoTokenizer.from_pretrained(str(tmp_path))  # the same directory, the way that imports torch
    assert seen["ids"] == [reference(text)["input_ids"] for text in SAMPLES]
    prompt = Template(CLASSIFICATION_TEMPLATE).render(classification_values(SAMPLES[0], ["物流", "售后"]))
    assert reference(prompt)["input_ids"][-1] == reference.eos_token_id


@pytest.mark.parametrize("hub", ["modelscope", "huggingface"])
def test_text_deployments_fetch_only_the_tokenizer_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: str
) -> None:
    import huggingface_hub
    from modelscope_hub import compat as modelscope_download

    asked: list[tuple[str, list[str] | None]] = []

    def stand_in_hub(repo_id: str, *args, allow_patterns: list[str] | None = None, **kwargs) -> str:
        asked.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(modelscope_download, "snapshot_download", stand_in_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in_hub)
    spec = "iic/nlp_mt5_zero-shot-augment_chinese-base" if hub == "modelscope" else "hf:google/mt5-base"
    repo = spec.removeprefix("hf:")
    assert resolve_spec(spec, files="tokenizer").path == tmp_path
    assert resolve_spec(spec).path == tmp_path
    assert asked == [(repo, TOKENIZER_FILES), (repo, None)]
    assert not any(name.endswith((".bin", ".safetensors")) for name in TOKENIZER_FILES)
