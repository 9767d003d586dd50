"""Caffe's NetState rules: which layers of a prototxt the net keeps (include/exclude rules on
phase, level and stages), with the state and rule messages checked as Caffe's parser checks them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from senet_hub.errors import FormatError

from .caffe_format import Quoted, show
from .caffe_layers import _pb_int, _short

# Caffe's own layer filtering (src/caffe/net.cpp FilterNet / StateMeetsRule; caffe.proto NetState,
# NetStateRule) for the net a deploy prototxt becomes in Net(prototxt, TEST): since 2016 (BVLC
# d167e61, "Add level and stages to Net constructor") that constructor sets phase TEST and level 0
# and keeps the file's `state { stage: ... }`; before it the file's level was kept as well.
PHASES = {"TRAIN": 0, "TEST": 1}  # caffe.proto: enum Phase { TRAIN = 0; TEST = 1; }
TEST = PHASES["TEST"]
_INT32 = (-(1 << 31), (1 << 31) - 1)
_RULE_FIELDS = ("phase", "min_level", "max_level", "stage", "not_stage")
_STATE_FIELDS = ("phase", "level", "stage")


@dataclass(frozen=True)
class NetState:
    phase: int = TEST
    level: int = 0
    stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetStateRule:
    phase: int | None = None
    min_level: int | None = None
    max_level: int | None = None
    stage: tuple[str, ...] = ()
    not_stage: tuple[str, ...] = ()


def state_meets_rule(state: NetState, rule: NetStateRule) -> bool:
    """Caffe's Net::StateMeetsRule: every condition the rule sets holds in the state."""
    if rule.phase is not None and rule.phase != state.phase:
        return False
    if rule.min_level is not None and state.level < rule.min_level:
        return False
    if rule.max_level is not None and state.level > rule.max_level:
        return False
    if any(s not in state.stages for s in rule.stage):  # the state must have ALL the rule's stages
        return False
    return not any(s in state.stages for s in rule.not_stage)  # and NONE of its not_stages


def layer_included(state: NetState, include: list[NetStateRule], exclude: list[NetStateRule]) -> bool:
    """Caffe's Net::FilterNet for one layer: kept when any include rule is met or, without include
    rules, when no exclude rule is met (a layer with both kinds is refused before this)."""
    if include:
        return any(state_meets_rule(state, r) for r in include)
    return not any(state_meets_rule(state, r) for r in exclude)


def _int32(v: Any, where: str, key: str) -> int:
    n = _pb_int(v)
    if n is None or not _INT32[0] <= n <= _INT32[1]:
        raise FormatError(f"{where}: bad value {_short(v)} for '{key}': Caffe expects an int32")
    return n


def _phase(v: Any, where: str) -> int:
    """TRAIN/TEST or their numbers 0/1: an enum, written unquoted, as protobuf's text parser takes it."""
    if not isinstance(v, Quoted) and str(v) in PHASES:
        return PHASES[str(v)]
    n = _pb_int(v)
    if n not in (0, 1):
        raise FormatError(f"{where}: bad phase {_short(v)}: Caffe's Phase is TRAIN or TEST (or 0 or 1)")
    return n


def _strings(raw: dict, key: str, where: str) -> tuple[str, ...]:
    vals = raw.get(key, [])
    for v in vals:
        if not isinstance(v, Quoted):
            raise FormatError(f'{where}: {key} {_short(v)} must be a quoted string ({key}: "name")')
    return tuple(str(v) for v in vals)


def _message_fields(raw: Any, fields: tuple[str, ...], singular: tuple[str, ...], where: str) -> dict:
    """A state/rule message checked as Caffe's parser checks it: known fields, singular ones once."""
    if not isinstance(raw, dict):
        raise FormatError(f"{where} must be a message {{ ... }}, got {_short(raw)}")
    for key, vals in raw.items():
        if key not in fields:
            raise FormatError(f"{where}: unknown field '{show(key)}' (Caffe's fields: {', '.join(fields)})")
        if key in singular and len(vals) > 1:
            raise FormatError(f"{where}: '{key}' is given {len(vals)} times; Caffe's parser allows it once")
        if key not in ("stage", "not_stage") and any(isinstance(v, dict) for v in vals):
            raise FormatError(f"{where}: '{key}' must be a value, not a message")
    return raw


def _rule(raw: Any, where: str) -> NetStateRule:
    raw = _message_fields(raw, _RULE_FIELDS, ("phase", "min_level", "max_level"), where)
    return NetStateRule(
        phase=_phase(raw["phase"][0], where) if "phase" in raw else None,
        min_level=_int32(raw["min_level"][0], where, "min_level") if "min_level" in raw else None,
        max_level=_int32(raw["max_level"][0], where, "max_level") if "max_level" in raw else None,
        stage=_strings(raw, "stage", where),
        not_stage=_strings(raw, "not_stage", where),
    )


def net_state(net: dict[str, list[Any]], path: str) -> tuple[NetState, int]:
    """The state Net(prototxt, TEST) filters with, and the level the file itself sets.

    The file's `state { phase: ... }` is overridden by TEST (as Caffe does); its stages are kept.
    """
    msgs = net.get("state", [])
    if not msgs:
        return NetState(), 0
    where = f"{path}: net state"
    if len(msgs) > 1:
        raise FormatError(f"{where}: 'state' is given {len(msgs)} times; Caffe's parser allows it once")
    raw = _message_fields(msgs[0], _STATE_FIELDS, ("phase", "level"), where)
    if "phase" in raw:
        _phase(raw["phase"][0], where)  # checked as Caffe's parser would, then replaced by TEST
    level = _int32(raw["level"][0], where, "level") if "level" in raw else 0
    return NetState(TEST, 0, _strings(raw, "stage", where)), level
