"""Where multi-turn accuracy is lost: by phenomenon and by state slot.

Over the multi-turn user turns (those with an earlier user turn, as ``multi_turn_accuracy``):

- ``phenomena``: for each phenomenon, the turns that show it, with multi-turn accuracy and the shares with
  the intent right and the state right. A turn's phenomena are the ones its annotation lists
  (``phenomena`` on a user turn: ellipsis, reference, correction, ...; see
  ``findial.data.natural.authoring.PHENOMENA``) plus the ones read off the gold annotation:
  ``carry_over`` (a slot keeps an earlier value the turn does not mention), ``slot_set`` (the turn fills
  an empty slot), ``slot_replaced`` (it gives a slot a new value) and ``intent_change`` (its intent differs
  from the previous user turn's).
- ``slots``: for each state slot, how the gold value came about on that turn (``carried``, ``set``,
  ``replaced``; ``absent``: gold has none) and how often the predicted slot equals it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .metrics import _state, _user_turns

DERIVED = ("carry_over", "slot_set", "slot_replaced", "intent_change")


def _gold_slot_kinds(before: dict, after: dict) -> dict[str, str]:
    """slot -> carried | set | replaced for every slot of ``after``."""
    kinds = {}
    for slot, value in after.items():
        if slot not in before:
            kinds[slot] = "set"
        elif before[slot] != value:
            kinds[slot] = "replaced"
        else:
            kinds[slot] = "carried"
    return kinds


def multi_turn_breakdown(gold: Sequence[dict], pred: Sequence[dict], slots: Sequence[str] = ()) -> dict:
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    per_slot: dict[str, dict[str, list[int]]] = {s: {} for s in slots}
    previous: dict[str, tuple[dict, str | None]] = {}  # dialogue id -> (gold state, gold intent) of its last user turn
    for did, _, k, gt, pt in _user_turns(gold, pred):
        g_state, p_state = _state(gt), _state(pt)
        before, last_intent = previous.get(did, ({}, None))
        previous[did] = (g_state, gt.get("intent"))
        if k < 1 or gt.get("intent") is None or gt.get("state") is None:
            continue
        kinds = _gold_slot_kinds(before, g_state)
        names = set(gt.get("phenomena") or ())
        names.update(
            n
            for n, hit in (
                ("carry_over", "carried" in kinds.values()),
                ("slot_set", "set" in kinds.values()),
                ("slot_replaced", "replaced" in kinds.values()),
                ("intent_change", gt["intent"] != last_intent),
            )
            if hit
        )
        intent_ok, state_ok = gt["intent"] == pt.get("intent"), g_state == p_state
        groups["all"].append((intent_ok, state_ok))
        for name in names:
            groups[name].append((intent_ok, state_ok))
        for slot in set(g_state) | set(p_state):
            kind = kinds.get(slot, "absent")
            if kind == "absent" and slot not in p_state:
                continue
            cell = per_slot.setdefault(slot, {}).setdefault(kind, [0, 0])
            cell[0] += 1
            cell[1] += g_state.get(slot) == p_state.get(slot)
    phenomena = {}
    for name in sorted(groups, key=lambda n: (n != "all", n in DERIVED, n)):
        rows = groups[name]
        n = len(rows)
        phenomena[name] = {
            "n": n,
            "multi_turn_accuracy": sum(a and b for a, b in rows) / n,
            "intent_accuracy": sum(a for a, _ in rows) / n,
            "state_accuracy": sum(b for _, b in rows) / n,
        }
    slot_rows = {}
    for slot in sorted(per_slot):
        cells = per_slot[slot]
        row = {kind: {"n": n, "right": right, "accuracy": right / n} for kind, (n, right) in sorted(cells.items()) if n}
        wrong = sum(n - right for n, right in cells.values())
        slot_rows[slot] = {"wrong": wrong, **row}
    return {"phenomena": phenomena, "slots": slot_rows}
