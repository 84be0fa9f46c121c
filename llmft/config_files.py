"""Reading a config: a YAML file (yours, or one shipped with the package) plus `dotted.key=value`
overrides, validated once against the schema in `llmft/config.py`. An unknown key names the closest
valid ones ("did you mean"); every invalid value is reported at once, each with its key, and the file
and line where it has one.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmft.config import Config, ConfigError, valid_keys


def _sections(keys: list[str]) -> set[str]:
    """Every dotted prefix of a key: `train`, `train.lora`, ..."""
    return {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)}


def _initials(name: str) -> str:
    return "".join(word[0] for word in name.split("_") if word)


def suggest_keys(key: str, limit: int = 3) -> list[str]:
    """The dotted keys (or sections) an unknown `key` most likely meant, best first. Each candidate scores
    its best of: 1.0 for a name whose word initials the key's last part is (`lr` -> `learning_rate`), the
    difflib similarity of the last part to a name in the same section, 0.8 for the same name in another
    section, the similarity of the whole dotted key; kept: 0.7 and up, within 0.08 of the best."""
    keys = valid_keys()
    section, _, leaf = key.rpartition(".")
    scores: dict[str, float] = {}
    for name in sorted({*keys, *_sections(keys)}):
        parent, _, last = name.rpartition(".")
        score = difflib.SequenceMatcher(None, key, name).ratio()
        if parent == section:
            score = max(score, 1.0 if len(leaf) > 1 and _initials(last) == leaf.lower() else
                        difflib.SequenceMatcher(None, leaf, last).ratio())
        elif last == leaf and name in keys:
            score = max(score, 0.8)
        if score >= 0.7 and name != key:
            scores[name] = score
    best = max(scores.values(), default=0.0)
    return sorted((n for n, s in scores.items() if s >= best - 0.08), key=lambda n: -scores[n])[:limit]


def unknown_key_message(key: str) -> str:
    """One line for an unknown key: what it probably meant, never the list of every key."""
    found = suggest_keys(key)
    if not found:
        return "unknown key (nothing similar; `llmft finetune --print-config` shows every key)"
    either = ", ".join(f"`{k}`" for k in found[:-1]) + (" or " if len(found) > 1 else "") + f"`{found[-1]}`"
    return f"unknown key; did you mean {either}?"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    keys = valid_keys()
    if key not in keys:
        if key in _sections(keys):
            example = next(k for k in keys if k.startswith(key + "."))
            raise ConfigError(f"--set {key}: a section, not a key; set one of its keys, e.g. {example}")
        raise ConfigError(f"--set {key}: {unknown_key_message(key)}")
    return key.split("."), _override_value(raw)


def _override_value(raw: str) -> Any:
    """YAML scalars and lists the way users write them in the file (ints, floats, bools, null,
    [a, b]); anything YAML reads as a mapping or cannot parse (a sentence with a colon) is the
    plain string."""
    if not raw.strip():
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, dict) else value


def _line_of(path: Path, dotted: list[str]) -> int | None:
    """Line of a (possibly nested) key in a YAML file, for error messages."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in dotted:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == part:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


# a union's branch in an error location (`list[str]`, `literal['all-linear']`, `SweepRange`), not a key
_BRANCH = re.compile(r"[\[\]'(]|^(int|float|str|bool|none|list|dict)$|^[A-Z]\w*$")
_KEY_IN_MESSAGE = re.compile(r"^([a-z_]+(?:\.[\w\[\]]+)+): ")


def _error_key_and_message(err: dict[str, Any]) -> tuple[list[str], str]:
    """The dotted key an error is about (union branches left out) and its message, the key named once: a
    section-level check that names its own key (`sweep.direction: ...`) is reported at that key."""
    loc = [str(p) for p in err["loc"] if not _BRANCH.search(str(p))]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return loc, unknown_key_message(".".join(loc))
    named = _KEY_IN_MESSAGE.match(msg)
    if named and named[1].startswith(".".join(loc)):
        return named[1].split("."), msg[named.end():]
    return loc, msg


def _got(err: dict[str, Any]) -> str:
    value = err.get("input")
    if isinstance(value, dict) or err["type"] == "extra_forbidden":  # a whole section says nothing more
        return ""
    shown = repr(value)
    return f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def validation_errors(exc: ValidationError, file_path: Path | None, from_override: set[str]) -> list[str]:
    """Every validation error as one line naming its key: `--set key: ...` for an override, else
    `<file>, line N: field key: ...`; the branches of one union failing at one key are one line."""
    grouped: dict[str, tuple[list[str], list[str], str]] = {}
    for err in exc.errors():
        loc, msg = _error_key_and_message(err)
        grouped.setdefault(".".join(loc), (loc, [], _got(err)))[1].append(msg)
    lines = []
    for field, (loc, msgs, got) in grouped.items():
        msg = "; or ".join(dict.fromkeys(msgs)) + got
        overridden = next((".".join(loc[:i]) for i in range(len(loc), 0, -1) if ".".join(loc[:i]) in from_override),
                          None)
        if overridden:
            lines.append(f"--set {overridden}: {msg}" if overridden == field else f"--set {overridden}: {field}: {msg}")
            continue
        line = _line_of(file_path, loc) if file_path else None
        where = str(file_path) if file_path else "defaults"
        lines.append(f"{where}, line {line}: field {field or '(root)'}: {msg}" if line
                     else f"{where}: field {field or '(root)'}: {msg}")
    return lines


def config_error(problems: list[str]) -> ConfigError:
    """One line for one problem; several: a count, then one indented line each."""
    if len(problems) == 1:
        return ConfigError(problems[0])
    return ConfigError(f"{len(problems)} config errors:\n" + "\n".join(f"  {p}" for p in problems))


def _read_file(file_path: Path) -> dict[str, Any]:
    if not file_path.is_file():
        raise ConfigError(f"{file_path}: config file not found")
    try:
        loaded = yaml.safe_load(file_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{file_path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{file_path}: top level must be a mapping of sections")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when path is None), apply overrides, validate. Every problem with the
    overrides and the values is reported at once (one ConfigError, a line each)."""
    file_path = Path(path) if path is not None else None
    raw = _read_file(file_path) if file_path is not None else {}
    from_override: set[str] = set()
    problems: list[str] = []
    for item in overrides or []:
        try:
            parts, value = _parse_override(item)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        from_override.add(".".join(parts))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems += validation_errors(exc, file_path, from_override)
    if problems:
        raise config_error(problems)
    return cfg


# ---- where a config named on the command line is: a file, else one shipped with the package ----

def shipped_dir(package: str, checkout: str, marker: str) -> Path | None:
    """A folder shipped as package data `llmft.<package>` (a wheel, or an editable install, which maps it to
    the checkout's top-level folder), else the checkout's `<checkout>/` beside the package: the first that
    holds `marker`."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(f"llmft.{package}")
    except ImportError:
        spec = None
    here = Path(__file__).resolve().parent
    found = list(spec.submodule_search_locations or []) if spec else []
    places = [*found, here / package, here.parent / checkout]
    return next((Path(p) for p in places if (Path(p) / marker).is_file()), None)


def shipped_configs_dir() -> Path | None:
    """The configs shipped with llmft (the checkout's configs/)."""
    return shipped_dir("configs", "configs", "finetune.yaml")


def shipped_config_names() -> list[str]:
    folder = shipped_configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def resolve_config_path(name: str | Path) -> Path:
    """A config argument as a file: an existing file first, then the shipped config of that name (a
    bare name such as `classify`, or `configs/classify.yaml` run from outside the checkout)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bare = path.name.removesuffix(".yaml").removesuffix(".yml")
    folder = shipped_configs_dir()
    if not path.is_absolute() and str(path.parent) in (".", "configs") and folder is not None:
        shipped = folder / f"{bare}.yaml"
        if shipped.is_file():
            return shipped
    names = shipped_config_names()
    close = difflib.get_close_matches(bare, names, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`? " if close else ""
    raise ConfigError(f"{name}: config file not found; {hint}shipped configs: {', '.join(names) or 'none'}")
