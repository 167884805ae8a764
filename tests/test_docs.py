"""The user documentation (README.md, docs/*.md) against the repository: configuration keys and
defaults, README's shape, no internal or lab wording, and links that resolve.

Reads files only (no recbole_dsl import), so it runs in a second."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
PROPERTIES = ROOT / "properties"

SETUP_COMMANDS = [
    'pip install torch==2.13.0 -e ".[test]" && python run_recbole_dsl.py',
    "python -m pytest",
]
KEY_TABLE_HEADER = ["key", "default", "allowed", "meaning"]
README_MAX_LINES = 260

# Words that say how or when the work was done, or point at files users do not get (the project's
# internal LOSSES.md and DESIGN.md; case-sensitive, so docs/losses.md is not one of them).
LAB_WORDS = re.compile(
    r"(?i:\bsessions?\b|\bissues?\b|closing notes?|foundation issue|design card)|\b(?:LOSSES|DESIGN)\.md\b"
)
# Legitimate uses of those words, removed before the search (extend with care).
ALLOWED_PHRASES = re.compile(r"GitHub issues?", re.IGNORECASE)


def user_docs():
    return [README] + sorted(DOCS.glob("*.md"))


def key_files():
    return [PROPERTIES / "overall.yaml"] + sorted((PROPERTIES / "loss").glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict), f"{path} is not a mapping of keys"
    return data


def split_row(line: str):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def key_tables(text: str):
    """Rows of every `| key | default | allowed | meaning |` table, as (heading, key, default
    cell); heading is the last Markdown heading above the table."""
    rows, heading, in_table = [], "", False
    for line in text.splitlines():
        if line.startswith("#"):
            heading, in_table = line, False
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        cells = split_row(line)
        if [c.lower() for c in cells] == KEY_TABLE_HEADER:
            in_table = True
            continue
        if not in_table or set(line.replace("|", "").strip()) <= set("-: "):
            continue
        m = re.fullmatch(r"`([A-Za-z_][A-Za-z0-9_]*)`", cells[0])
        if m:
            rows.append((heading, m.group(1), cells[1] if len(cells) > 1 else ""))
    return rows


def documented_default(cell: str):
    m = re.fullmatch(r"`([^`]*)`", cell.strip())
    assert m, f"default cell {cell!r} is not one backquoted YAML value"
    return yaml.safe_load(m.group(1))


# -------------------------------------------------------------------------- (a) configuration keys
def test_configuration_documents_every_plugin_key_and_only_those():
    rows = key_tables(CONFIGURATION.read_text(encoding="utf-8"))
    assert rows, "docs/configuration.md has no | key | default | allowed | meaning | table"
    documented = {key for _, key, _ in rows}
    yaml_keys = set()
    for path in key_files():
        yaml_keys |= set(load_yaml(path))
    missing = sorted(yaml_keys - documented)
    unknown = sorted(documented - yaml_keys)
    assert not missing, f"keys of properties/ missing from docs/configuration.md: {missing}"
    assert not unknown, f"keys in docs/configuration.md that no properties/ file defines: {unknown}"


@pytest.mark.parametrize("path", key_files(), ids=lambda p: str(p.relative_to(PROPERTIES)))
def test_each_properties_file_has_its_table_with_its_defaults(path):
    """Tables under a heading that names `properties/<file>.yaml` list exactly that file's keys,
    each with the file's default."""
    rel = path.relative_to(ROOT).as_posix()
    rows = [(key, cell) for heading, key, cell in key_tables(CONFIGURATION.read_text(encoding="utf-8"))
            if f"`{rel}`" in heading]
    assert rows, f"docs/configuration.md has no key table under a heading naming `{rel}`"
    data = load_yaml(path)
    assert sorted(k for k, _ in rows) == sorted(data), f"keys of the `{rel}` tables differ from {rel}"
    for key, cell in rows:
        assert documented_default(cell) == data[key], f"{rel}: {key} documented as {cell}, file has {data[key]!r}"


# ------------------------------------------------------------------------------- (b) README shape
def test_readme_is_short_and_starts_with_the_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    body = [line for line in lines if line.strip()]
    assert body[0].startswith("# "), "README.md starts with its title"
    assert body[1].startswith("```"), "the first thing after the title is the set-up code block"
    assert body[2:4] == SETUP_COMMANDS, f"README.md's first commands are {body[2:4]}"
    assert body[4].startswith("```")


# ------------------------------------------------------------------------------ (c) no lab wording
@pytest.mark.parametrize("path", user_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_user_docs_have_no_lab_words(path):
    hits = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for m in LAB_WORDS.finditer(ALLOWED_PHRASES.sub("", line)):
            hits.append(f"line {n}: {m.group(0)!r} in {line.strip()[:100]!r}")
    assert not hits, f"{path.relative_to(ROOT)}: " + "; ".join(hits)


def test_lab_word_filter_catches_and_spares():
    def caught(s):
        return bool(LAB_WORDS.search(ALLOWED_PHRASES.sub("", s)))

    for bad in ("as this session showed", "Session 3", "the foundation issue", "a closing note",
                "see LOSSES.md", "../shared/DESIGN.md", "the design card", "issues found"):
        assert caught(bad), bad
    for good in ("report it on GitHub issues", "sessional", "reissued", "the loss function",
                 "[losses](losses.md#bsl)", "docs/losses.md"):
        assert not caught(good), good


# ---------------------------------------------------------------------------- (d) relative links
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"^#+\s*", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    out, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            out.add(slug(line))
    return out


def links(path: Path):
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            yield m.group(1)


@pytest.mark.parametrize("path", user_docs(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path):
    bad = []
    for target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


def test_docs_pages_exist():
    for name in ("configuration", "losses", "samplers-and-protocols", "tuning", "models", "dsl",
                 "saved-models", "extending", "recbole-compat"):
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"
