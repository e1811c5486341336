"""The CLI as people meet it: `--help` lists the user commands before the per-rule internals,
every option says what it is, and every command the README or the rules call exists."""

from __future__ import annotations

import re
import subprocess
import sys

from tuneatlas import __version__
from tuneatlas.cli import COMMANDS, build_parser


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_help_lists_user_commands_first_then_internals():
    text = build_parser().format_help()
    user = [c.name for c in COMMANDS if c.group == "user"]
    internal = [c.name for c in COMMANDS if c.group == "internal"]
    assert {
        "validate",
        "catalogue",
        "layouts",
        "livedoor-convert",
        "zsre-convert",
        "compare",
    } <= set(user)
    assert {"prepare", "train", "embed", "table", "plot"} <= set(internal)
    head = text.index("internal commands")
    for name in user:
        assert re.search(rf"^  {re.escape(name)} ", text[:head], re.M), name
    for name in internal:
        assert re.search(rf"^  {re.escape(name)} ", text[head:], re.M), name


def test_every_option_of_every_command_has_help():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"tuneatlas {name} {action.option_strings or action.dest}"


def test_validate_help_says_what_it_checks():
    text = _subparsers()["validate"].format_help()
    for words in ("label", "column", "empty text", "64 MiB", "max_length"):
        assert words in text


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "tuneatlas", "--version"], capture_output=True, text=True
    )
    assert out.stdout.strip() == f"tuneatlas {__version__}"


def test_rules_and_readme_call_existing_commands_and_make_targets(repo):
    names = {c.name for c in COMMANDS}
    rules = "\n".join(p.read_text() for p in (repo / "workflow" / "rules").glob("*.smk"))
    called = set(re.findall(r"-m tuneatlas (?:--threads \{threads\} )?([a-z][a-z0-9-]*)", rules))
    assert called and called <= names, called - names
    readme = (repo / "README.md").read_text()
    in_readme = set(re.findall(r"`tuneatlas ([a-z][a-z0-9-]*)", readme))
    assert "validate" in in_readme and in_readme <= names, in_readme - names
    makefile = (repo / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    made = set(re.findall(r"`make ([a-z][a-z0-9-]*)", readme))
    assert "test" in made and made <= targets, made - targets
