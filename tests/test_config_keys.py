"""Every documented config key has an effect: each field of the training config schema is read by code outside
`tiodepth_jax/config.py` (the validation in `__post_init__` does not count).

A static check over the package's source (cheap, no training run): a field `section.name` counts as read
where the code accesses `.name` on an expression that is that section (`cfg.checkpoint.keep`, or a name
assigned from `<...>.checkpoint`); a top-level field where it is accessed on a `cfg` / `self.cfg`; a field
of the model section anywhere in `tiodepth_jax/models/` too (the model reads its own config). A field read
only by a method or property of the config classes counts when that method is used outside config.py
(`group.lr_factor(...)` reads `milestones` and `gamma`).
"""

from __future__ import annotations

import ast
import dataclasses
import pickle
import subprocess
import sys
import typing
from pathlib import Path

from tiodepth_jax import config as config_module
from tiodepth_jax.config import GroupConfig, TrainConfig
from tiodepth_jax.models.tiodepth import TiODepthConfig

PACKAGE = Path(config_module.__file__).parent
CONFIG_FILES = {PACKAGE / "config.py", PACKAGE / "schema.py"}
# Fields with no effect on purpose: {dotted path: why}. Empty: every key does something.
INERT: dict[str, str] = {}


def parse(path: Path) -> ast.AST:
    """`ast.parse` of a source file, done in a child interpreter and sent back pickled: CPython 3.11 keeps
    the AST converter's recursion counter per interpreter, so a parse here races with background threads
    that earlier tests leave running (orbax, after tests/test_convert.py) and fails with "AST constructor
    recursion depth mismatch"."""
    code = "import ast, pickle, sys; sys.stdout.buffer.write(pickle.dumps(ast.parse(open(sys.argv[1]).read())))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=True).stdout
    return pickle.loads(out)


def schema_fields() -> list[tuple[str, str]]:
    """(owner, field) of every field: owner is '' for TrainConfig's own fields, else the section name
    ('optim', 'checkpoint', ...; 'group' for the three GroupConfigs)."""
    out = []
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        out.append(("", f.name))
        section = hints[f.name]
        if dataclasses.is_dataclass(section):
            sub_hints = typing.get_type_hints(section)
            for g in dataclasses.fields(section):
                if sub_hints[g.name] is GroupConfig:
                    continue
                out.append((f.name, g.name))
    out += [("group", g.name) for g in dataclasses.fields(GroupConfig)]
    return out


def _tail(node: ast.AST) -> str | None:
    """The last name of an expression: `self.cfg` -> 'cfg', `cfg` -> 'cfg'."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


SECTIONS = {f.name for f in dataclasses.fields(TrainConfig)}
GROUP_NAMES = {"group", "g"}  # the names GroupConfig values go by in train/optim.py and the loop


class Reads(ast.NodeVisitor):
    """(owner, attribute) pairs read in one module, with `x = <...>.section` aliases resolved per module."""

    def __init__(self, tree: ast.AST):
        self.alias: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                tail = _tail(node.value)
                if tail in SECTIONS:
                    self.alias[node.targets[0].id] = tail
        self.pairs: set[tuple[str, str]] = set()
        self.visit(tree)

    def visit_FunctionDef(self, node: ast.FunctionDef):
        if node.name != "__post_init__":  # validation is not an effect
            self.generic_visit(node)

    def owner(self, node: ast.AST) -> str | None:
        tail = _tail(node)
        if tail in ("cfg", "config"):
            return ""
        if isinstance(node, ast.Attribute) and tail in SECTIONS:
            return tail
        if isinstance(node, ast.Name):
            if tail in GROUP_NAMES:
                return "group"
            if tail in SECTIONS:  # a parameter named after its section: optimizer(optim)
                return tail
            return self.alias.get(tail)
        return None

    def visit_Attribute(self, node: ast.Attribute):
        owner = self.owner(node.value)
        if owner is not None:
            self.pairs.add((owner, node.attr))
        self.pairs.add(("*", node.attr))  # any owner: for method names and the models' own config
        self.generic_visit(node)


def config_methods() -> dict[str, set[str]]:
    """{method or property name of a config class: the keys it reads, 'section.field' for `self.<field>`
    and `self.<section>.<field>`} (config.py only, validation excluded)."""
    owners = {"TrainConfig": "", "GroupConfig": "group"}
    owners.update({typing.get_type_hints(TrainConfig)[f.name].__name__: f.name for f in dataclasses.fields(TrainConfig)
                   if dataclasses.is_dataclass(typing.get_type_hints(TrainConfig)[f.name])})
    tree = parse(PACKAGE / "config.py")
    methods: dict[str, set[str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in owners):
        prefix = owners[cls.name] + "." if owners[cls.name] else ""
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            if fn.name.startswith("__"):
                continue
            keys = methods.setdefault(fn.name, set())
            for n in ast.walk(fn):
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self":
                    keys.add(prefix + n.attr)
                elif (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
                      and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"):
                    keys.add(f"{prefix}{n.value.attr}.{n.attr}")
    return methods


def test_every_config_field_is_read():
    reads: set[tuple[str, str]] = set()
    model_reads: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path in CONFIG_FILES:
            continue
        visitor = Reads(parse(path))
        reads |= visitor.pairs
        if path.parent.name == "models":
            model_reads |= {attr for owner, attr in visitor.pairs if owner == "*"}
    used_anywhere = {attr for owner, attr in reads if owner == "*"}
    via_methods = {field for name, fields in config_methods().items() if name in used_anywhere for field in fields}

    unread = []
    for owner, name in schema_fields():
        key = f"{owner}.{name}" if owner else name
        if key in INERT:
            continue
        if (owner, name) in reads or key in via_methods:
            continue
        if owner == "model" and name in model_reads:
            continue
        unread.append(key)
    model_fields = {f.name for f in dataclasses.fields(TiODepthConfig)}
    assert model_fields <= {n for o, n in schema_fields() if o == "model"}
    assert not unread, f"config keys that no code outside config.py reads: {unread}"


def test_the_check_can_fail(tmp_path):
    """A field that nothing reads is reported (the walker is not vacuous)."""
    (tmp_path / "f.py").write_text("def f(cfg):\n    return cfg.checkpoint.keep, cfg.seed\n")
    pairs = Reads(parse(tmp_path / "f.py")).pairs
    assert ("checkpoint", "keep") in pairs and ("", "seed") in pairs
    assert ("checkpoint", "best_metric") not in pairs and ("logging", "keep") not in pairs
