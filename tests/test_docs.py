"""The documentation holds together: links and #anchors resolve, `actprm` commands in code blocks parse,
and the files the docs name exist.

Checked files: README.md, BENCHMARKS.md, CHANGELOG.md and docs/*.md. Fast (no job runs): the CLI's parser is
built once and each command is parsed, never run.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest

from actprm.cli import VERBS, build_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])
#: pages other work adds; links to them are allowed before they exist
PENDING = {REPO / "docs" / "python-api.md"}

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
#: paths of the project's own files named in prose or code: configs/..., examples/..., bench/..., scripts/... and the like
PROJECT_PATH = re.compile(
    r"(?<![\w./~-])((?:configs|examples|bench|scripts|data_schemas|pipelines|tests|actprm|docs)/[\w.*/-]*(?:::\w+)?)")
PY_MODULE = re.compile(r"python3? -m ((?:actprm|pipelines|bench)(?:\.\w+)+)")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")


# ------------------------------------------------------------------ markdown reading


def split_code(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, code lines) with their line numbers: code is inside ``` fences or indented by 4+ spaces."""
    prose, code = [], []
    in_fence = False
    for no, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence or line.startswith("    ") and line.strip():
            code.append((no, line))
        else:
            prose.append((no, line))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation but - and _ dropped, spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    for _, line in prose:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Every relative link and #anchor of a markdown file that does not resolve."""
    problems = []
    cache: dict[Path, set[str]] = {}
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    for no, line in prose:
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)}:{no}: {target}"
            if not dest.exists():
                if dest not in PENDING:
                    problems.append(f"{where}: no such file")
                continue
            if anchor:
                if dest.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not markdown")
                    continue
                if dest not in cache:
                    cache[dest] = anchors(dest)
                if anchor not in cache[dest]:
                    problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


# ------------------------------------------------------------------ commands


def commands(path: Path) -> list[tuple[int, str]]:
    """Command lines of code blocks (continuation lines joined), with their first line number."""
    _, code = split_code(path.read_text(encoding="utf-8"))
    out, buf, start, last = [], "", 0, -2
    for no, line in code:
        if buf and no != last + 1:
            out.append((start, buf))
            buf = ""
        if not buf:
            start = no
        stripped = line.strip()
        buf = f"{buf} {stripped[:-1]}" if stripped.endswith("\\") else f"{buf} {stripped}"
        last = no
        if not stripped.endswith("\\"):
            out.append((start, buf.strip()))
            buf = ""
    if buf:
        out.append((start, buf.strip()))
    return out


def actprm_argv(line: str) -> list[str] | None:
    """The argv after `actprm` (or `python -m pipelines.VERB`) in a shell line, cut at a pipe; None if none."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    for stop in ("|", "||", "&&", ";", ">", "2>&1"):
        if stop in tokens:
            tokens = tokens[:tokens.index(stop)]
    i = 0
    while i < len(tokens) and re.match(r"^\w+=", tokens[i]):  # VAR=value prefixes
        i += 1
    if i < len(tokens) and tokens[i] == "actprm":
        return tokens[i + 1:]
    for j in range(len(tokens) - 2):
        if tokens[j] in ("python", "python3") and tokens[j + 1] == "-m" and tokens[j + 2].startswith("pipelines."):
            module = tokens[j + 2].split(".", 1)[1]
            verb = {"import_model": "import"}.get(module, module.replace("_", "-"))
            return [verb, *tokens[j + 3:]] if verb in VERBS else None
    return None


def command_problems(parser: argparse.ArgumentParser, line: str) -> list[str]:
    """What is wrong with one `actprm ...` command: an unknown verb or flag, or arguments the parser refuses."""
    argv = actprm_argv(line)
    if not argv:
        return []
    verb = argv[0]
    if verb.startswith("-"):  # actprm --help, actprm --version
        return [] if verb in ("--help", "-h", "--version") else [f"unknown option {verb}"]
    if PLACEHOLDER.match(verb) or "<" in verb:  # actprm VERB --help
        return []
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if verb not in sub.choices:
        return [f"unknown verb {verb!r}"]
    options = {o for a in sub.choices[verb]._actions for o in a.option_strings}
    problems = []
    for tok in argv[1:]:
        if tok == "--":
            break
        if tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            if flag not in options:
                problems.append(f"{verb} has no flag {flag}")
    placeholders = any(PLACEHOLDER.match(t) or "<" in t or t.startswith("[") for t in argv[1:])
    if not problems and not placeholders and "--help" not in argv:
        try:
            parser.parse_args(argv)
        except (Exception, SystemExit) as exc:  # _Parser.error raises UserError
            problems.append(f"refused by the parser: {exc}")
    return problems


# ------------------------------------------------------------------ paths


def missing_paths(path: Path) -> list[str]:
    """Files of the project named in the text (configs/, examples/, bench/, scripts/, ...; `python -m` modules)."""
    problems = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        names = [m.group(1) for m in PROJECT_PATH.finditer(line)]
        names += [m.group(1).replace(".", "/") + ".py" for m in PY_MODULE.finditer(line)]
        for name in names:
            name = name.rstrip(".,:;")
            test = None
            if "::" in name:
                name, test = name.split("::", 1)
            if re.search(r"[A-Z]{2,}|<|\bNNN", name):  # a placeholder: configs/loop/NAME.yaml
                continue
            where = f"{path.relative_to(REPO)}:{no}: {name}"
            if "*" in name:
                if not list(REPO.glob(name)):
                    problems.append(f"{where}: matches no file")
                continue
            target = REPO / name
            if name.endswith(".py") and not target.exists() and (REPO / name[:-3] / "__init__.py").exists():
                continue  # python -m on a package
            if not target.exists():
                if target not in PENDING:
                    problems.append(f"{where}: no such file")
            elif test and f"def {test}(" not in target.read_text(encoding="utf-8"):
                problems.append(f"{where}: no test {test}")
    return problems


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_anchors_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_actprm_commands_in_code_blocks_parse(path, parser):
    problems = [f"{path.relative_to(REPO)}:{no}: {p}: {line}"
                for no, line in commands(path) for p in command_problems(parser, line)]
    assert problems == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_files_named_in_the_docs_exist(path):
    assert missing_paths(path) == []


def test_the_checks_catch_what_they_are_for(tmp_path, parser, monkeypatch):
    """Each check fails on a broken page: a missing file, a missing anchor, a bad verb or flag, a missing config."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "real.yaml").write_text("a: 1\n")
    page = tmp_path / "page.md"
    page.write_text("# A title: with `code`\n\n## Two words\n\n"
                    "[ok](#a-title-with-code) [ok](#two-words) [ok](configs/real.yaml)\n"
                    "[bad](#three-words) [bad](missing.md) [bad](page.md#nowhere)\n"
                    "`[not a link](nowhere.md)`\n\n"
                    "    actprm score --input x --output y\n"
                    "    actprm scorez --input x\n"
                    "    actprm score --inputs x\n"
                    "    actprm loop --config configs/loop/NAME.yaml\n"
                    "    actprm score --dtype float99 --input x --output y\n\n"
                    "See configs/real.yaml and configs/gone.yaml.\n")
    links = broken_links(page)
    assert [p.split(": ", 1)[1] for p in links] == ["#three-words: no heading with anchor #three-words",
                                                    "missing.md: no such file",
                                                    "page.md#nowhere: no heading with anchor #nowhere"]
    found = {line: command_problems(parser, line) for _, line in commands(page)}
    assert found["actprm score --input x --output y"] == []
    assert found["actprm scorez --input x"] == ["unknown verb 'scorez'"]
    assert found["actprm score --inputs x"] == ["score has no flag --inputs"]
    assert found["actprm loop --config configs/loop/NAME.yaml"] == []
    assert found["actprm score --dtype float99 --input x --output y"][0].startswith("refused by the parser")
    assert [p.rsplit(": ", 1)[0].split(": ", 1)[1] for p in missing_paths(page)] == ["configs/gone.yaml"]


def test_slugs_follow_github():
    assert slug("One pass (stream mode)") == "one-pass-stream-mode"
    assert slug("`filter`: scoring a corpus on Ray") == "filter-scoring-a-corpus-on-ray"
    assert slug("The judge: labels from a model over any OpenAI-compatible endpoint") == \
        "the-judge-labels-from-a-model-over-any-openai-compatible-endpoint"
    assert slug("Dependencies, and why each is there") == "dependencies-and-why-each-is-there"
    assert slug("snake_case stays") == "snake_case-stays"
