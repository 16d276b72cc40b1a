"""A checker of the Mermaid ``stateDiagram-v2`` subset ism emits (tests only).

Grammar, one statement per line::

    diagram    := "stateDiagram-v2" NL statement*
    statement  := comment | classdef | state | transition | note | class | ""
    comment    := "%%" TEXT
    classdef   := "classDef" NAME CSS            CSS := prop ":" value ("," prop ":" value)*
    state      := "state" '"' LABEL '"' "as" ID
    transition := END "-->" END [":" TEXT]       END := ID | "[*]"
    note       := "note" ("left" | "right") "of" ID NL TEXT-lines "end note"
    class      := "class" ID ("," ID)* NAME
    ID         := [A-Za-z_][A-Za-z0-9_]*, not a keyword (ids cannot contain "-")

plus what Mermaid needs to mean what we mean: every id is declared once before use, every
class is defined, labels hold no quote, semicolon, hash, brace or ``-->``.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["MermaidError", "ParsedStateDiagram", "parse_state_diagram"]

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_KEYWORDS = {"state", "note", "end", "class", "classdef", "direction", "as", "click"}
_FORBIDDEN = re.compile(r'[";#{}]|-->')
_CSS = re.compile(r"^[a-z-]+:[^,;\s:][^,;:]*(,[a-z-]+:[^,;\s:][^,;:]*)*$")
_STATE = re.compile(rf'^state "([^"]+)" as ({_ID})$')
_TRANSITION = re.compile(rf"^({_ID}|\[\*\]) --> ({_ID}|\[\*\])(?: : (.+))?$")
_CLASSDEF = re.compile(rf"^classDef ({_ID}) (\S+(?: \S+)*)$")
_CLASS = re.compile(rf"^class ({_ID}(?:,{_ID})*) ({_ID})$")
_NOTE = re.compile(rf"^note (left|right) of ({_ID})$")


class MermaidError(ValueError):
    """The text is not in the grammar; the message names the line."""


@attrs.frozen
class ParsedStateDiagram:
    """What a diagram declares: states (id → label), transitions, classes (id → class)."""

    states: dict[str, str]
    transitions: list[tuple[str, str, str]]
    classes: dict[str, str]
    notes: list[str]

    def labels(self) -> set[str]:
        """Every state label."""
        return set(self.states.values())


def _check_text(text: str, where: str) -> None:
    if _FORBIDDEN.search(text):
        raise MermaidError(f"{where}: label holds a character Mermaid would misread: {text!r}")


def parse_state_diagram(source: str) -> ParsedStateDiagram:
    """Parse ``source`` or raise :class:`MermaidError` naming the first bad line."""
    lines = source.split("\n")
    if lines[-1] != "":
        raise MermaidError("the source does not end in a newline")
    if lines[0] != "stateDiagram-v2":
        raise MermaidError(f"line 1: expected 'stateDiagram-v2', got {lines[0]!r}")
    states: dict[str, str] = {}
    transitions: list[tuple[str, str, str]] = []
    classdefs: set[str] = set()
    classes: dict[str, str] = {}
    notes: list[str] = []
    note_open = False
    for number, raw in enumerate(lines[1:-1], start=2):
        where = f"line {number}"
        line = raw.strip()
        if note_open:
            if line == "end note":
                note_open = False
            else:
                _check_text(line, where)
                notes.append(line)
            continue
        if not line or line.startswith("%%"):
            continue
        if m := _CLASSDEF.match(line):
            if not _CSS.match(m.group(2).replace(" ", "")):
                raise MermaidError(f"{where}: bad CSS {m.group(2)!r}")
            classdefs.add(m.group(1))
        elif m := _STATE.match(line):
            label, sid = m.groups()
            _check_text(label, where)
            _check_id(sid, where)
            if sid in states:
                raise MermaidError(f"{where}: state {sid} declared twice")
            states[sid] = label
        elif m := _TRANSITION.match(line):
            src, dst, label = m.group(1), m.group(2), m.group(3) or ""
            for end in (src, dst):
                if end != "[*]" and end not in states:
                    raise MermaidError(f"{where}: {end} used before its state line")
            _check_text(label, where)
            transitions.append((src, dst, label))
        elif m := _NOTE.match(line):
            if m.group(2) not in states:
                raise MermaidError(f"{where}: note on undeclared {m.group(2)}")
            note_open = True
        elif m := _CLASS.match(line):
            ids, name = m.group(1).split(","), m.group(2)
            if name not in classdefs:
                raise MermaidError(f"{where}: class {name} has no classDef")
            for sid in ids:
                if sid not in states:
                    raise MermaidError(f"{where}: class on undeclared {sid}")
                classes[sid] = name
        else:
            raise MermaidError(f"{where}: not a stateDiagram-v2 statement: {line!r}")
    if note_open:
        raise MermaidError("a note is not closed with 'end note'")
    return ParsedStateDiagram(states, transitions, classes, notes)


def _check_id(sid: str, where: str) -> None:
    if sid.lower() in _KEYWORDS:
        raise MermaidError(f"{where}: {sid!r} is a Mermaid keyword")
