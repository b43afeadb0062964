"""CTranslate2 beside our engine: the same checkpoint converted, the same token ids, fidelity before speed.

The conversion goes through CTranslate2's own Transformers converter, with the model loaded by
our loader (serve_app.engine.loading): under transformers 5 the stock path ties lm_head to the
embeddings for mT5, and the converter then scales the decoder output by d_model^-0.5, which
is wrong for mT5's untied head (docs/model.md, "transformers 5"). Our loader keeps the head
untied and says so in the config, so the converter leaves the output unscaled. Before any speed
is reported, CTranslate2's float32 label probabilities must match ours to `MATCH_TOLERANCE` on
the demo model. The benchmark checkpoint's random weights amplify rounding (two float32 kernels
move its probabilities by far more than 1e-5), so there CTranslate2's top label must agree with
ours on most inputs, as transformers' own float32 forward does (a wrong conversion agrees by chance).

CTranslate2 runs in a child process of its own (`CT2Process`), called in turn with our engine:
in one process, our engine ran 10-25 % slower after a CTranslate2 call and stayed so (each
bundles its own OpenMP and BLAS), which a side-by-side must not measure.

Classification in CTranslate2 is `score_batch`: one (prompt, label) pair per candidate, so the
encoder runs once per label (its API has no shared-encoder scoring). Generation is
`translate_batch` with the same sampling knobs as ours.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

MATCH_TOLERANCE = 1e-5  # float32 against float32, on the demo model (well-conditioned weights)
# On random mT5-base weights: the share of inputs whose float32 top label must agree with ours (three times chance
# with 4 labels; transformers' own float32 forward agrees on 97-100 %).
RANDOM_WEIGHTS_AGREEMENT = 0.75


def available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def convert(checkpoint: Path, quantization: str) -> Path:
    """The CTranslate2 model of `checkpoint` in `quantization` (float32, int8, ...), converted once into a folder beside
    it."""
    import ctranslate2.converters.transformers as ct2_transformers

    from serve_app.engine.loading import load_model
    from serve_app.engine.tokenizer import load_tokenizer

    target = checkpoint.parent / f"{checkpoint.name}-ct2-{quantization}"
    if (target / "model.bin").is_file():
        return target

    class OurLoading(ct2_transformers.TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            loaded = load_model(str(model_name_or_path), "cpu", "float32", relay_head=False)
            assert (
                loaded.model.config.tie_word_embeddings is False
                or loaded.model.lm_head.weight is loaded.model.shared.weight
            )
            return loaded.model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return load_tokenizer(Path(model_name_or_path))

    OurLoading(str(checkpoint)).convert(
        str(target), quantization=None if quantization == "float32" else quantization, force=True
    )
    return target


class CT2Engine:
    """A CTranslate2 Translator over token ids: ids become the converted vocabulary's strings and back."""

    def __init__(self, model_dir: Path, compute_type: str, threads: int) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(
            str(model_dir), device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
        )
        self.vocabulary = _vocabulary(model_dir)
        self.index = {token: i for i, token in enumerate(self.vocabulary)}
        self.compute_type = compute_type

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.vocabulary[i] for i in ids]

    def label_log_scores(self, prompt_ids: list[int], labels: list[list[int]]) -> list[float]:
        """Each label's summed log-probability (its tokens and </s>), teacher-forced: what our scoring computes."""
        source = self.tokens(prompt_ids)  # with its </s>, as T5 reads it
        results = self.translator.score_batch([source] * len(labels), [self.tokens(label) for label in labels])
        return [sum(result.log_probs) for result in results]

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int
    ) -> list[list[int]]:
        import ctranslate2

        sources = [self.tokens(ids) for ids in prompts]
        ctranslate2.set_random_seed(seed)  # its sampling seed is process-wide
        results = self.translator.translate_batch(
            sources,
            beam_size=1,
            sampling_topk=top_k,
            sampling_topp=top_p,
            sampling_temperature=temperature,
            max_decoding_length=max_new_tokens,
            max_batch_size=len(sources),
            return_scores=False,
        )
        return [[self.index[token] for token in result.hypotheses[0]] for result in results]


class CT2Process:
    """CTranslate2 engines in a child process: `engine(model_dir, compute_type, threads)` returns a
    stand-in with CT2Engine's methods, each call run there while this process waits."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no torch state inherited
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def call(self, key: tuple[str, str, int], method: str, *args: Any) -> Any:
        self._pipe.send((key, method, args))
        ok, value = self._pipe.recv()
        if not ok:
            raise RuntimeError(f"CTranslate2 child process: {value}")
        return value

    def engine(self, model_dir: Path, compute_type: str, threads: int) -> RemoteEngine:
        key = (str(model_dir), compute_type, threads)
        self.call(key, "load")
        return RemoteEngine(self, key)

    def close(self) -> None:
        self._pipe.send(None)
        self._process.join(timeout=30)

    def __enter__(self) -> CT2Process:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RemoteEngine:
    """A CT2Engine living in a CT2Process."""

    def __init__(self, process: CT2Process, key: tuple[str, str, int]) -> None:
        self.process, self.key, self.compute_type = process, key, key[1]

    def label_log_scores(self, prompt_ids: list[int], labels: list[list[int]]) -> list[float]:
        return self.process.call(self.key, "label_log_scores", prompt_ids, labels)

    def generate(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int
    ) -> list[list[int]]:
        return self.process.call(self.key, "generate", prompts, max_new_tokens, temperature, top_k, top_p, seed)


def _serve(pipe) -> None:
    engines: dict[tuple[str, str, int], CT2Engine] = {}
    while (message := pipe.recv()) is not None:
        key, method, args = message
        try:
            if method == "load":
                engines.setdefault(key, CT2Engine(Path(key[0]), key[1], key[2]))
                pipe.send((True, None))
            else:
                pipe.send((True, getattr(engines[key], method)(*args)))
        except Exception as error:  # noqa: BLE001 - the parent reports it
            pipe.send((False, f"{type(error).__name__}: {error}"))


def _vocabulary(model_dir: Path) -> list[str]:
    for name in ("shared_vocabulary.json", "target_vocabulary.json"):
        if (model_dir / name).is_file():
            return json.loads((model_dir / name).read_text())
    for name in ("shared_vocabulary.txt", "target_vocabulary.txt"):
        if (model_dir / name).is_file():
            return (model_dir / name).read_text(encoding="utf-8").split("\n")[:-1]
    raise FileNotFoundError(f"no vocabulary file in {model_dir}")


def timed(run, *args) -> tuple[float, Any]:
    started = time.perf_counter()
    out = run(*args)
    return time.perf_counter() - started, out
