"""`metricsmith chat`, registered by agent.cli: the prompt_toolkit loop around agent.sessions.chat's dispatcher."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import Output
from rich.console import Console
from rich.markup import escape

from agent.authoring.loop import AuthoringSettings, model_defaults
from agent.cli.author import add_model_options, backend_from_args
from agent.cli.console import EXIT_OK, new_run_dir, stdout, worker_count
from agent.data.json_files import read_text_file
from agent.llm.backends.replay import ReplayBackend, ReplayMismatch
from agent.sessions.chat import COMMANDS, HISTORY_NAME, ChatSession, ChatSetup
from agent.sessions.chat_replay import InterruptibleReplay

__all__ = ["SlashCompleter", "cmd_chat", "register", "run_repl"]


def register(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser("chat", help=cmd_chat.__doc__, description=cmd_chat.__doc__)
    chat.add_argument("--annotations", required=True, type=Path, help="COCO JSON file")
    chat.add_argument("--images", type=Path, help="image folder (default: the JSON's folder or its images/)")
    described = chat.add_mutually_exclusive_group()
    described.add_argument("--description", default="", help="what the dataset is, in your words")
    described.add_argument("--description-file", type=Path, help="the same, from a file")
    chat.add_argument("--errors", type=Path, help="errors.json of known label errors: adds eval figures")
    add_model_options(chat)
    chat.add_argument("--library", type=Path, help="library folder (default: $METRICSMITH_LIBRARY)")
    chat.add_argument("--workers", type=worker_count, help="sandbox worker processes")
    chat.add_argument("--out", type=Path, help="run directory (default: runs/chat-N)")
    chat.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    chat.set_defaults(handler=cmd_chat)


class SlashCompleter(Completer):
    """Completes the command name while the line is a bare `/word`."""

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        typed = document.text_before_cursor
        if not typed.startswith("/") or any(character.isspace() for character in typed):
            return
        for name, command in COMMANDS.items():
            if f"/{name}".startswith(typed.lower()):
                yield Completion(f"/{name}", start_position=-len(typed), display_meta=command.help.split("\n")[0])


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter")
    def _submit(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


def run_repl(
    session: ChatSession, *, history: Path | None = None, input: Input | None = None, output: Output | None = None
) -> int:
    """Read lines until /exit or Ctrl-D and hand each to the session; Ctrl-C clears the line or cancels a command."""
    prompt: PromptSession[str] = PromptSession(
        history=FileHistory(str(history)) if history is not None else None,
        completer=SlashCompleter(),
        key_bindings=_key_bindings(),
        multiline=True,
        prompt_continuation="... ",
        input=input,
        output=output,
    )
    console = session.console
    console.print(
        f"[bold]metricsmith chat[/] on {len(session.dataset.images)} images, with {session.backend.name} "
        f"({escape(session.backend.model)}, {session.backend.mode} mode); recording to {escape(str(session.run_dir))}",
        markup=True,
    )
    console.print("/help lists the commands; anything else is a message to the model. Ctrl-D or /exit leaves.")
    while True:
        try:
            line = prompt.prompt("chat> ")
        except KeyboardInterrupt:  # at the prompt, Ctrl-C only clears the line
            continue
        except EOFError:
            console.print(f"transcript: {escape(str(session.writer.path))}")
            break
        try:
            if not session.dispatch(line):
                break
        except KeyboardInterrupt:  # the dispatcher catches it too; this covers the moment around it
            console.print("[yellow]cancelled[/]", markup=True)
        except ReplayMismatch as error:
            console.print(f"[red]replay mismatch[/]: {escape(str(error))}", markup=True)
    return EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk with the model about a dataset, brainstorm metric ideas, write and review them, in one session.

    Slash commands (/help lists them): /ideas, /implement, /run, /show, /approve, /reject, /edit,
    /library, /cost, /save, /exit. The session is recorded in RUN_DIR/transcript.jsonl, and
    `metricsmith replay` re-runs it offline.
    """
    description = (
        read_text_file(args.description_file, "the --description-file") if args.description_file else args.description
    )
    backend = backend_from_args(args)
    replay = backend if isinstance(backend, ReplayBackend) else None
    settings = AuthoringSettings(**model_defaults(backend, grammar=args.grammar))
    run_dir = args.out or new_run_dir("chat")
    setup = ChatSetup(
        annotations=args.annotations,
        images=args.images,
        run_dir=run_dir,
        backend=InterruptibleReplay(replay) if replay is not None else backend,
        description=description,
        errors=args.errors,
        settings=settings,
        library=args.library,
        workers=args.workers,
    )
    console: Console = stdout
    with ChatSession(setup, console) as session:
        code = run_repl(session, history=run_dir / HISTORY_NAME)
    if replay is not None and replay.unused:
        console.print(f"{len(replay.unused)} recorded exchanges were not replayed in this session")
    return code
