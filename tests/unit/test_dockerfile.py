"""The image's Dockerfile, checked without a Docker engine.

Parses the Dockerfile into stages and checks what a build would rely on: a
multi-stage build from a slim Python base, compilers only in the build stage, a
numeric non-root USER (the uid node pods run as), entrypoints that exist as
console scripts, COPY sources that exist and are not dropped by .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "cc", "make", "cmake", "python3-dev", "libc6-dev")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Joins backslash continuations and drops comments, keeping each instruction's first line number."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(part for part in buf if part)))
        buf = []
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with ${ARG} substituted in FROM lines."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM, not {keyword}"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, number))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"use the exec (JSON) form, not shell form: {args}"

    return list(json.loads(args))


def test_multi_stage_from_slim_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "the image is built in (at least) two stages: wheels, then runtime"
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", stage.base), stage.base
    assert stages[0].name, "the build stage is named so the final stage can refer to it"


def test_wheels_built_in_first_stage_and_installed_offline(stages: list[Stage], final: Stage) -> None:
    assert any("pip wheel" in i.args for i in stages[0].all("RUN")), "the first stage builds wheels"
    installs = [i.args for i in final.all("RUN") if "pip install" in i.args]
    assert installs, "the final stage installs the wheels"
    assert all("--no-index" in cmd for cmd in installs), "the final stage installs only the built wheels"
    build_name = stages[0].name
    uses_build = [i for i in final.instructions if f"from={build_name}" in i.args.replace(" ", "")]
    assert uses_build, f"the final stage takes its wheels from stage {build_name!r}"


def test_no_compilers_in_final_stage(stages: list[Stage], final: Stage) -> None:
    for instr in final.instructions:
        words = set(re.split(r"[\s;&|]+", instr.args))
        found = sorted(words.intersection(COMPILERS))
        assert not found, f"Dockerfile line {instr.line}: {found} in the final stage (compilers stay in the build)"
    assert any("build-essential" in i.args for i in stages[0].all("RUN")), "compilers belong to the build stage"


def test_final_user_is_numeric_non_root(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: use a numeric uid so runAsNonRoot can verify it"
    assert int(uid) != 0, "USER must not be root"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user}: the group must be numeric and not root"


def test_user_matches_the_uid_node_pods_run_as(final: Stage) -> None:
    from faultlab.operator.reconcile.builders import RUN_AS

    uid = final.all("USER")[-1].args.partition(":")[0]
    assert int(uid) == RUN_AS, f"node pods run as {RUN_AS} (reconcile/builders.py); the image's USER is {uid}"


def console_scripts() -> dict[str, str]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.mark.parametrize("script", ["faultlab", "faultlab-node"])
def test_console_scripts_exist_and_resolve(script: str) -> None:
    scripts = console_scripts()
    assert script in scripts, f"pyproject [project.scripts] lacks {script}"
    module, _, func = scripts[script].partition(":")
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    prefix = next(p for p in package_dirs if module.startswith(p + "."))
    path = ROOT / package_dirs[prefix] / (module.removeprefix(prefix + ".").replace(".", "/") + ".py")
    assert path.is_file(), f"{script} -> {module} but {path.relative_to(ROOT)} does not exist"
    assert re.search(rf"^def {func}\(", path.read_text(), re.M), f"{path.relative_to(ROOT)} defines no {func}()"


def test_entrypoint_is_a_console_script(final: Stage) -> None:
    entry = exec_form(final.all("ENTRYPOINT")[-1].args)
    assert entry[0] in console_scripts(), f"ENTRYPOINT {entry} is not one of the console scripts"
    cmd = exec_form(final.all("CMD")[-1].args)
    assert cmd[:2] == ["operator", "run"], f"the default command runs the operator, not {cmd}"


def ignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    return [ln.rstrip("/") for ln in lines if ln and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """True when .dockerignore drops ``path`` (or a folder above it); `!` exceptions are not used here."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions in .dockerignore are not supported by this check"
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(candidate, pattern.removeprefix("**/")):
                return True
    return False


def copy_sources(stages: list[Stage]) -> list[tuple[int, str]]:
    sources: list[tuple[int, str]] = []
    for stage in stages:
        for instr in stage.all("COPY") + stage.all("ADD"):
            words = shlex.split(instr.args)
            if any(w.startswith("--from") for w in words):
                continue
            paths = [w for w in words if not w.startswith("--")]
            sources += [(instr.line, src) for src in paths[:-1]]
    return sources


def test_copied_files_exist_and_are_not_ignored(stages: list[Stage]) -> None:
    sources = copy_sources(stages)
    assert sources, "the build stage copies the project in"
    patterns = ignore_patterns()
    for line, src in sources:
        assert (ROOT / src).exists(), f"Dockerfile line {line}: COPY {src} but it does not exist"
        assert not ignored(src, patterns), f"Dockerfile line {line}: COPY {src} but .dockerignore excludes it"


def test_everything_the_wheel_needs_is_copied(stages: list[Stage]) -> None:
    copied = {src.rstrip("/") for _, src in copy_sources(stages)}
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    needed = {"pyproject.toml", "setup.py", readme, *package_dirs.values()}
    assert needed <= copied, f"the build stage must COPY {sorted(needed - copied)} for `pip wheel .`"


@pytest.mark.parametrize("path", [".git", ".venv", "tests", ".faultlab", "**/__pycache__"])
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    assert ignored(path.removeprefix("**/"), ignore_patterns()), f".dockerignore must exclude {path}"


def test_parser_sees_stage_names_and_continuations() -> None:
    args, parsed = parse("ARG B=python:3.11-slim\nFROM ${B} AS one\nRUN a \\\n  # note\n  b\nFROM one\nUSER 1\n")
    assert args == {"B": "python:3.11-slim"}
    assert [(s.base, s.name) for s in parsed] == [("python:3.11-slim", "one"), ("one", None)]
    assert parsed[0].instructions[0].args == "a b"
