"""The commands in the README's and docs/'s shell blocks run scripts that exist, with flags they take;
their relative links resolve inside the repository.

Every ```bash / ```sh / ```shell block of README.md and docs/*.md is read as a shell would:
backslash continuations joined, comments dropped, each line split into commands on `&&`,
`||`, `;`, `|` and `&`, leading `NAME=value` assignments set aside. A command runs a script of
this repository when it is

    python [-u ...] SCRIPT.py ...          python -m megatron_core.X ... / python -m bench.X ...
    torchrun [launcher flags] SCRIPT.py    deepspeed [--hostfile F ...] SCRIPT.py
    mpirun [...] python SCRIPT.py          python -m megatron_core.launch [deepspeed's flags] SCRIPT.py
    bash scripts/X.sh ...                  ./SCRIPT.py, ./scripts/X.sh

and then:

- the script must exist (a command naming a .py or .sh of the repository that is not there
  fails, wherever the docs put it);
- every `--flag` given to a Python script must appear in `python SCRIPT --help` (run once per
  script, in this checkout, forked from the session's warm server); the flags before the script of `python -m megatron_core.launch`
  are checked against its own --help, those of other launchers (torchrun, deepspeed,
  mpirun) are not ours to check;
- a launch script (scripts/*.sh) passes its arguments on with `"$@"` to the entry points
  named on those lines (`launch pretrain_gpt.py "${FLAGS[@]}" "$@"`, `torchrun ...
  pretrain_gpt.py "$@"`), so its flags must appear in those entry points' --help; a script
  that passes nothing on takes no flags. The `NAME=value` assignments before it must name a
  variable the script (or a file it sources) reads, unless the variable is one of the
  process environment's own (CUDA_*, NCCL_*, GLOO_*, OMP_*, PYTHON*, TORCH_*, MASTER_*, ...).

Commands of other programs (pip, git, curl, pytest, ...) are skipped, except that a path of
the repository they name (tests/..., scripts/..., hostfiles/...) must exist too.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.harness.entry_points import run_forked

REPO = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}
# Launchers whose own flags are not ours; the script they run is the first *.py argument.
PY_LAUNCHERS = {"torchrun", "deepspeed"}
MPI_LAUNCHERS = {"mpirun", "mpiexec"}
# `python -m` modules of this repository that launch a script, as deepspeed does.
LAUNCHER_MODULES = {"megatron_core.launch"}
COMMAND_SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<<", "<<<", ">|"}
# Python options that take a value (`python -W error x.py`).
PYTHON_OPTIONS_WITH_VALUE = {"-W", "-X", "-Q"}
# Variables of the process environment, not a launch script's settings.
ENVIRONMENT_PREFIXES = ("CUDA_", "NCCL_", "GLOO_", "OMP_", "MKL_", "PYTHON", "TORCH_", "MASTER_", "NVIDIA_")
ENVIRONMENT_NAMES = {"PATH", "HOME", "LD_LIBRARY_PATH", "WORLD_SIZE", "RANK", "LOCAL_RANK", "TMPDIR"}
# Top-level folders of the repository: an argument under one of them names a file that must exist.
REPO_FOLDERS = {"bench", "csrc", "docs", "examples", "hostfiles", "megatron_core", "scripts", "tests", "tools"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Command:
    """One command of a shell block: where it is written, its words, its leading assignments."""
    where: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Invocation:
    """A script of this repository that a command runs, and the arguments it gives it."""
    script: str                 # repo-relative path
    args: list[str]
    launcher_help_of: Optional[str] = None   # a repo launcher module whose --help checks launcher_args
    launcher_args: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading the blocks


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of the block's first line, its lines) for each shell-language fenced block."""
    blocks, fence, language, start, lines = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence, language, start, lines = match.group(1), match.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and not stripped.strip(fence[0]):
            if language in SHELL_LANGUAGES:
                blocks.append((start, lines))
            fence = None
        else:
            lines.append(line)
    return blocks


def command_lines(block: list[str], first_line: int) -> list[tuple[int, str]]:
    """The block's logical lines (continuations joined), without blank and comment-only lines."""
    lines, pending, pending_start = [], "", 0
    for offset, line in enumerate(block):
        if not pending:
            pending_start = first_line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        if pending.strip() and not pending.lstrip().startswith("#"):
            lines.append((pending_start, pending))
        pending = ""
    if pending.strip() and not pending.lstrip().startswith("#"):
        lines.append((pending_start, pending))
    return lines


def split_commands(line: str, where: str) -> list[Command]:
    """The commands of one logical line: split on the shell's separators, redirections dropped."""
    line = re.sub(r"(?<![\w-])\d+(?=>)", "", line)        # `2>&1`, `2> err`: the descriptor goes with the redirection
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words, skip_next = [], [], False
    for token in lexer:
        if skip_next:
            skip_next = False
            continue
        if token in COMMAND_SEPARATORS:
            commands.append(words)
            words = []
        elif token in REDIRECTIONS:
            skip_next = True
        elif token not in {"(", ")"}:
            words.append(token)
    commands.append(words)
    result = []
    for words in commands:
        env = {}
        while words and ASSIGNMENT.match(words[0]):
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        if words or env:
            result.append(Command(where, words, env))
    return result


def documented_commands(path: Path, text: Optional[str] = None) -> list[Command]:
    text = path.read_text(encoding="utf-8") if text is None else text
    name = path.relative_to(REPO) if path.is_absolute() and REPO in path.parents else path
    commands = []
    for first_line, block in shell_blocks(text):
        for number, line in command_lines(block, first_line):
            commands.extend(split_commands(line, f"{name}:{number}"))
    return commands


# ---------------------------------------------------------------------------------------------
# Which script a command runs


def _module_file(module: str) -> str:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__main__.py"):
        if (REPO / candidate).is_file():
            return candidate
    return f"{base}.py"


def _is_repo_module(module: str) -> bool:
    return module.split(".")[0] in {"megatron_core", "bench"}


def _script_token(words: list[str]) -> Optional[int]:
    """Index of the first word that names a Python script (launchers put theirs first)."""
    for index, word in enumerate(words):
        if word.endswith(".py") and not word.startswith("-"):
            return index
    return None


def _python_invocation(words: list[str]) -> Optional[Invocation]:
    """`python [options] SCRIPT args` or `python -m MODULE args` (words[0] is the interpreter)."""
    index = 1
    while index < len(words):
        word = words[index]
        if word == "-m":
            if index + 1 >= len(words):
                return None
            module, rest = words[index + 1], words[index + 2:]
            if not _is_repo_module(module):
                return None          # pytest, pip, ...: another program
            if module in LAUNCHER_MODULES:
                at = _script_token(rest)
                if at is None:
                    return Invocation(_module_file(module), rest)
                return Invocation(rest[at], rest[at + 1:], launcher_help_of=_module_file(module),
                                  launcher_args=rest[:at])
            return Invocation(_module_file(module), rest)
        if word == "-c" or word == "-":
            return None
        if word in PYTHON_OPTIONS_WITH_VALUE:
            index += 2
            continue
        if word.startswith("-"):
            index += 1
            continue
        return Invocation(word, words[index + 1:])
    return None


def find_invocation(command: Command) -> Optional[Invocation]:
    """The repository script the command runs, or None for another program."""
    words = command.words
    if not words:
        return None
    program = os.path.basename(words[0])
    if program in PYTHONS:
        return _python_invocation(words)
    if program in PY_LAUNCHERS:
        at = _script_token(words[1:])
        return None if at is None else Invocation(words[at + 1], words[at + 2:])
    if program in MPI_LAUNCHERS:
        for index, word in enumerate(words[1:], 1):
            if os.path.basename(word) in PYTHONS:
                return _python_invocation(words[index:])
        return None
    if program in {"bash", "sh"}:
        rest = [word for word in words[1:] if not word.startswith("-")]
        if rest and rest[0].endswith(".sh"):
            at = words.index(rest[0])
            return Invocation(words[at], words[at + 1:])
        return None
    if words[0].startswith("./") or words[0].endswith((".py", ".sh")):
        return Invocation(words[0], words[1:])
    return None


# ---------------------------------------------------------------------------------------------
# What a script takes


def _repo_path(path: str) -> str:
    return os.path.normpath(path[2:] if path.startswith("./") else path)


@functools.lru_cache(maxsize=None)
def python_help(script: str) -> str:
    """`python SCRIPT --help` (or `python -m MODULE --help` for a package module) in this checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if script.startswith(("megatron_core/", "bench/")):
        module = script[:-3].replace("/__main__", "").replace("/", ".")
        argv = [sys.executable, "-m", module, "--help"]
    else:       # a script's --help forks from the session's warm server (its imports paid once there)
        argv = [sys.executable, script, "--help"]
        done = run_forked(script, ["--help"], timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"`{script} --help` exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return done.stdout
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv[1:])}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def _shell_sources(script: str) -> list[str]:
    """The script and the files it sources (`source scripts/x.sh`, `. scripts/x.sh`), repo-relative."""
    text = (REPO / script).read_text(encoding="utf-8")
    sourced = re.findall(r"^\s*(?:source|\.)\s+([\w./-]+)", text, flags=re.MULTILINE)
    return [script, *[s for s in sourced if (REPO / s).is_file()]]


def forwarded_entry_points(script: str) -> list[str]:
    """The repository .py scripts a shell script passes its own arguments to ("$@")."""
    targets = []
    for line in (REPO / script).read_text(encoding="utf-8").splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if '"$@"' not in code:
            continue
        for word in re.findall(r"[\w./-]+\.py\b", code):
            if (REPO / word).is_file() and word not in targets:
                targets.append(word)
    return targets


def shell_reads(script: str, name: str) -> bool:
    pattern = re.compile(r"\$\{?" + re.escape(name) + r"\b")
    return any(pattern.search((REPO / path).read_text(encoding="utf-8")) for path in _shell_sources(script))


def _is_environment(name: str) -> bool:
    return name in ENVIRONMENT_NAMES or name.startswith(ENVIRONMENT_PREFIXES)


def flags_of(args: list[str]) -> list[str]:
    """The long flags among a script's arguments (`[--x 2]` as the docs write optional ones)."""
    flags = []
    for word in args:
        word = word.strip("[]")
        if word.startswith("--") and len(word) > 2:
            flags.append(word.split("=", 1)[0])
    return flags


def in_help(flag: str, help_text: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", help_text) is not None


# ---------------------------------------------------------------------------------------------
# The check


def repo_paths_named(command: Command) -> list[str]:
    """Arguments that name a file under one of the repository's folders (tests/x.py, hostfiles/2x8)."""
    paths = []
    for word in [*command.words, *command.env.values()]:
        word = word.strip("[]")
        if word.startswith("--") and "=" in word:
            word = word.split("=", 1)[1]
        if word.startswith("./"):
            word = word[2:]
        if "/" not in word or any(c in word for c in "*?$<>{}:"):
            continue
        if word.split("/", 1)[0] in REPO_FOLDERS:
            paths.append(word)
    return paths


def check_commands(commands: list[Command], help_of: Callable[[str], str] = python_help) -> list[str]:
    """One sentence per problem: a script or repository file that does not exist, a flag a script lacks."""
    problems = []
    invocations = [(command, find_invocation(command)) for command in commands]
    _prefetch_help([inv for _, inv in invocations if inv is not None], help_of)
    for command, invocation in invocations:
        script = None if invocation is None else _repo_path(invocation.script)
        for path in repo_paths_named(command):
            if _repo_path(path) != script and not (REPO / path).exists():
                problems.append(f"{command.where}: {path} does not exist in the repository")
        if invocation is None:
            continue
        if not (REPO / script).is_file():
            problems.append(f"{command.where}: runs {script}, which does not exist in the repository")
            continue
        if invocation.launcher_help_of:
            launcher_help = help_of(invocation.launcher_help_of)
            for flag in flags_of(invocation.launcher_args):
                if not in_help(flag, launcher_help):
                    problems.append(f"{command.where}: {flag} is not in the --help of {invocation.launcher_help_of}")
        flags = flags_of(invocation.args)
        if script.endswith(".sh"):
            for name in command.env:
                if not _is_environment(name) and not shell_reads(script, name):
                    problems.append(f"{command.where}: {script} does not read {name}")
            targets = forwarded_entry_points(script)
            if flags and not targets:
                problems.append(f"{command.where}: {script} passes no arguments on, but is given {', '.join(flags)}")
                continue
            helps = {target: help_of(target) for target in targets} if flags else {}
            for flag in flags:
                if not any(in_help(flag, text) for text in helps.values()):
                    problems.append(f"{command.where}: {flag} (passed on by {script}) is not in the --help "
                                    f"of {', '.join(targets)}")
        elif script.endswith(".py"):
            if flags:
                text = help_of(script)
                for flag in flags:
                    if not in_help(flag, text):
                        problems.append(f"{command.where}: {flag} is not in the --help of {script}")
    return problems


def _prefetch_help(invocations: list[Invocation], help_of: Callable[[str], str]) -> None:
    """Run the --help of every script the commands need, a few at a time (each is a cold import)."""
    if help_of is not python_help:
        return
    scripts = set()
    for invocation in invocations:
        script = _repo_path(invocation.script)
        if not (REPO / script).is_file():
            continue
        if invocation.launcher_help_of and flags_of(invocation.launcher_args):
            scripts.add(invocation.launcher_help_of)
        if flags_of(invocation.args):
            scripts.update(forwarded_entry_points(script) if script.endswith(".sh") else [script])
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(_help_or_nothing, sorted(scripts)))


def _help_or_nothing(script: str) -> None:
    try:
        python_help(script)
    except (RuntimeError, subprocess.TimeoutExpired):
        pass   # reported when the check asks for it again (lru_cache does not keep exceptions)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_documented_commands_run_scripts_that_exist_with_flags_they_take(doc):
    commands = documented_commands(doc)
    problems = check_commands(commands)
    assert not problems, "\n".join(problems)


def test_the_docs_have_shell_blocks_to_check():
    """The README's two fresh-machine commands are found, so the parsing sees the blocks at all."""
    commands = documented_commands(REPO / "README.md")
    runs = {_repo_path(inv.script) for inv in map(find_invocation, commands) if inv is not None}
    assert "scripts/demo.sh" in runs
    assert any(command.words[:3] == ["python", "-m", "pytest"] for command in commands)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as dashes."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            anchors.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc):
    problems = []
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.DOTALL)
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if REPO not in target.parents:
            problems.append(f"{doc.name}: {link} points outside the repository")
        elif not target.exists():
            problems.append(f"{doc.name}: {link} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            problems.append(f"{doc.name}: {link} names no heading of {target.name}")
    assert not problems, "\n".join(problems)


FAKE_DOC = """
Some prose with `python tools/not_here.py` outside a block: not a command.

```bash
python tools/no_such_tool.py --input x.jsonl
python tools/preprocess_data.py --input corpus.jsonl --no-such-flag 1 \\
    --output-prefix data/zh --append-eod   # a comment --not-a-flag
bash scripts/no_such_script.sh --lr 1
NO_SUCH_VARIABLE=1 CUDA_VISIBLE_DEVICES=0 bash scripts/demo.sh
pip install --no-such-pip-flag nothing && cat hostfiles/no_such_hostfile
torchrun --nproc-per-node 2 no_such_entry.py --lr 1
```

```python
python tools/in_a_python_block.py --ignored
```
"""


@pytest.mark.quick
def test_the_checker_reports_a_missing_script_a_missing_flag_and_a_missing_file():
    commands = documented_commands(Path("FAKE.md"), FAKE_DOC)
    problems = check_commands(commands)
    report = "\n".join(problems)
    assert "runs tools/no_such_tool.py, which does not exist" in report
    assert "--no-such-flag is not in the --help of tools/preprocess_data.py" in report
    assert "runs scripts/no_such_script.sh, which does not exist" in report
    assert "runs no_such_entry.py, which does not exist" in report
    assert "scripts/demo.sh does not read NO_SUCH_VARIABLE" in report
    assert "hostfiles/no_such_hostfile does not exist" in report
    # what is right, or not ours, is not reported
    for fine in ("--input", "--output-prefix", "--append-eod", "--not-a-flag", "CUDA_VISIBLE_DEVICES",
                 "--no-such-pip-flag", "not_here", "in_a_python_block"):
        assert fine not in report, report
    assert len(problems) == 6, report


@pytest.mark.quick
def test_commands_are_split_as_a_shell_splits_them():
    (command,) = documented_commands(Path("X.md"), "```sh\nA=1 B='x y' python -u tools/t.py \\\n  --a=1 [--b 2]\n```\n")
    assert command.env == {"A": "1", "B": "x y"}
    invocation = find_invocation(command)
    assert invocation.script == "tools/t.py" and flags_of(invocation.args) == ["--a", "--b"]
    first, second, tee, third = documented_commands(
        Path("X.md"), "```shell\npip install -e . && python -m bench.reshard --rounds 1 | tee x; mpirun -np 2 "
                      "-x MASTER_ADDR=h python pretrain_gpt.py --lr 1 > log 2>&1\n```\n")
    assert find_invocation(first) is None
    assert find_invocation(second).script == "bench/reshard.py"
    assert tee.words == ["tee", "x"] and find_invocation(tee) is None
    assert find_invocation(third).script == "pretrain_gpt.py" and find_invocation(third).args == ["--lr", "1"]
    launch = find_invocation(Command("x", ["python", "-m", "megatron_core.launch", "--hostfile", "h", "pretrain_gpt.py", "--lr", "1"]))
    assert (launch.script, launch.launcher_args, launch.args) == ("pretrain_gpt.py", ["--hostfile", "h"], ["--lr", "1"])
    assert forwarded_entry_points("scripts/pretrain_llama_7b.sh") == ["pretrain_gpt.py"]
    assert forwarded_entry_points("scripts/demo.sh") == ["pretrain_gpt.py"]
