"""Every `python -m pipelines.dpo COMMAND [--option ...]` the README and docs/ name exists in the CLI: the command,
its subcommand where it has some (`arena export`), and each `--option` written after it on the same line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `pipelines.dpo` followed by words and options up to the end of the command (a backtick, a table bar, a paren)
COMMAND = re.compile(r"pipelines\.dpo((?:\s+[^\s`|)]+)+)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def unknown_commands(pages: list[Path], parser: argparse.ArgumentParser, root: Path = ROOT) -> list[str]:
    problems = []
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for match in COMMAND.finditer(line):
                words = match.group(1).split()
                where = f"{page.relative_to(root)}:{number}"
                commands = _subcommands(parser)
                if words[0] not in commands:
                    if re.fullmatch(r"[a-z][a-z-]*", words[0]):
                        problems.append(f"{where}: no command {words[0]!r}")
                    continue
                name, command = words[0], commands[words[0]]
                nested = _subcommands(command)
                if len(words) > 1 and words[1] in nested:
                    name, command = f"{name} {words[1]}", nested[words[1]]
                options = _options(command)
                problems += [f"{where}: {name} has no {option}"
                             for option in OPTION.findall(" ".join(words[1:])) if option not in options]
    return problems


def test_every_command_and_option_the_docs_name_exists():
    from pipelines.dpo import build_parser

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert unknown_commands(pages, build_parser()) == []


def test_an_unknown_command_or_option_is_reported(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    arena = sub.add_parser("arena")
    arena.add_argument("--port")
    export = arena.add_subparsers().add_parser("export")
    export.add_argument("--out")
    page = tmp_path / "a.md"
    page.write_text("`python -m pipelines.dpo arena --port 1` `python -m pipelines.dpo arena export --out D`\n"
                    "`python -m pipelines.dpo arena --out D` `python -m pipelines.dpo areana`\n")
    assert unknown_commands([page], parser, tmp_path) == [
        "a.md:2: arena has no --out", "a.md:2: no command 'areana'"]
