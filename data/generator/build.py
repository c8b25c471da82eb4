"""Build the bundled dialogue corpus from the templates in this folder.

    generate_corpus(out_dir, seed=13, scale=1.0) -> summary dict
    python -m findial.data.generator --out data/corpus --seed 13 [--scale 1.0]

How it works
  * Every template (intent templates in templates_{zh,en}.yaml; supply / vary / correct
    templates in dialogue.yaml) is assigned to exactly one split, stratified per pool
    (~70/10/20, at least one template of every pool in each split), so test
    utterances are never template twins of training ones. Filler values are shared.
  * A dialogue of split S draws only templates of S. 40% are multi-turn dialogues built
    from the scripts in dialogue.yaml, the rest single-turn; the first single-turn
    dialogues of each split cover every (intent, language) pair.
  * Templates are rendered by markup.py (spans computed, glossary auto-annotation), then
    ~25% of user turns get noise (noise.py). The state after each user turn is the
    previous state updated by the turn's mentions in text order (latest wins, no reset).
  * Train supplement (corpus.yaml ``train_supplement``): after validation and test, more train
    dialogues are built that may also draw the train-only templates of train_only/ (least used
    first). Those templates never reach validation or test, and adding some leaves both splits
    byte-identical: they widen the phrasings the models learn from, not what they are scored on.
  * One random.Random(seed) drives everything, so the same seed gives identical files.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from findial.data.labelbook import Glossary, LabelBook
from findial.tracking import atomic_write_text

from .fillers import SLOT_LABEL, STATE_SLOT, Fillers, entity_label
from .markup import Matcher, Seg, assemble, autotag, consistent, parse
from .noise import Noiser

HERE = Path(__file__).resolve().parent
SUPPLEMENT_DIR = HERE / "train_only"
SPLITS = ("train", "validation", "test")
PII_LABELS = ("CARD_NUMBER", "PHONE", "ID_NUMBER", "EMAIL", "PERSON")
LANGS = ("zh", "en")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def _yaml(name: str) -> dict:
    """A data file of this folder (cached: callers must not modify it)."""
    return yaml.load((HERE / name).read_text(encoding="utf-8"), Loader=_Loader)


@lru_cache(maxsize=1)
def _specs() -> tuple[LabelBook, Glossary]:
    return LabelBook.load(), Glossary.load()


def _vowel_sound(word: str) -> bool:
    head = word.split()[0].strip("-")
    if len(head) > 1 and head.isupper():  # an acronym is read letter by letter: an SME, a CD
        return head[0] in "AEFHILMNORSX"
    w = head.lower()
    return w[:1] in "aeio" or (w.startswith("un") and not w.startswith("uni"))


@dataclass
class Template:
    key: tuple  # (kind, name, lang, index): the identity used for the split
    text: str
    emotion: str | None
    toks: list
    split: str = "train"
    uses: int = 0
    supplement: bool = False  # a train-only template (train_only/), drawn by the train supplement only


@dataclass
class Ctx:
    lang: str
    state: dict = field(default_factory=dict)
    task: str | None = None
    asked: set = field(default_factory=set)
    last_fills: dict = field(default_factory=dict)  # slot -> (surface, filter) in the previous user turn
    surf: dict = field(default_factory=dict)  # slot -> surface text of its latest mention


class Builder:
    def __init__(self, seed: int = 13, scale: float = 1.0, train_supplement: float | None = None):
        self.seed, self.scale = seed, scale
        self.rng = random.Random(seed)
        self.cfg = _yaml("corpus.yaml")
        self.supplement_share = self.cfg.get("train_supplement", 0) if train_supplement is None else train_supplement
        self.meta = _yaml("intents.yaml")
        self.dlg = _yaml("dialogue.yaml")
        self.lex = _yaml("lexicon.yaml")
        self.labelbook, self.glossary = _specs()
        self.matcher = Matcher(self.glossary)
        self.fillers = Fillers(self.lex, self.glossary, self.rng)
        self.noise_cfg = _yaml("noise.yaml")
        self.noiser = Noiser(self.noise_cfg, self.glossary, self.rng)
        self.not_mentions = {m.casefold() for m in self.lex["not_mentions"]}
        self.agent = {lang: _yaml(f"templates_{lang}.yaml") for lang in LANGS}
        self.slot_names = set(SLOT_LABEL)
        self.pools: dict[tuple, list[Template]] = {}
        for lang in LANGS:
            for intent, body in self.agent[lang].items():
                self._pool(("intent", intent, lang), body["user"])
            for kind in ("supply", "vary", "correct"):
                for slot, items in self.dlg[kind][lang].items():
                    self._pool((kind, slot, lang), items)
            for emotion, items in self.dlg["wrap"][lang].items():
                self._pool(("wrap", emotion, lang), items)
        self.in_supplement = False
        for lang in LANGS:
            self._load_supplement(lang)
        self.intents = list(self.meta)
        self.supplement_weights = self.cfg.get("supplement_weights", {})  # intent -> weight factor
        unknown = set(self.supplement_weights) - set(self.intents)
        if unknown:
            raise ValueError(f"{HERE / 'corpus.yaml'}: supplement_weights: {sorted(unknown)} not in intents.yaml")
        self.task_intents = [i for i in self.intents if self.meta[i].get("task", True)]
        self.stats: Counter[str] = Counter()
        self.used_templates: dict[str, set] = {s: set() for s in SPLITS}
        self.term_slots: dict[str, list] = defaultdict(list)  # term_id -> intent templates that can draw it
        for key, temps in self.pools.items():
            if key[0] != "intent":
                continue
            for t in temps:
                for tok in t.toks:
                    if tok[0] == "slot" and tok[1] in ("product", "term") and tok[3]:
                        for tid in self.fillers.term_ids(entity_label(tok[1]), tok[2]):
                            self.term_slots[tid].append((key, t))

    # ------------------------------------------------------------ templates and splits
    def _pool(self, key: tuple, items: list[str]) -> None:
        temps = []
        for i, text in enumerate(items):
            emotion, toks = parse(text, self.slot_names)
            temps.append(Template(key + (i,), text, emotion, toks))
        order = list(range(len(temps)))
        random.Random(f"{self.seed}:{'/'.join(key)}").shuffle(order)
        n = len(temps)
        n_test = max(1, round(n * self.cfg["split_share"]["test"])) if n >= 3 else 0
        n_val = max(1, round(n * self.cfg["split_share"]["validation"])) if n >= 3 else 0
        for rank, i in enumerate(order):
            temps[i].split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
        self.pools[key] = temps

    def _load_supplement(self, lang: str) -> None:
        """The train-only templates of ``train_only/`` (same markup; intents as in templates_LANG.yaml,
        follow-ups as in dialogue.yaml's supply / vary / correct). Only the train supplement draws them,
        after validation and test are built, so adding some never changes those splits."""
        for file, kind in ((f"templates_{lang}.yaml", "intent"), (f"dialogue_{lang}.yaml", "follow-up")):
            path = SUPPLEMENT_DIR / file
            if not path.is_file():
                continue
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
            groups = {}
            for name, body in data.items():
                if kind == "intent":  # intent -> {user: [...]}
                    groups[("intent", name, lang)] = body.get("user") if isinstance(body, dict) else None
                elif isinstance(body, dict):  # supply / vary / correct -> slot -> [...]
                    groups.update({(name, slot, lang): items for slot, items in body.items()})
                else:
                    groups[(name, None, lang)] = None
            for key, items in groups.items():
                if key not in self.pools or not isinstance(items, list):
                    raise ValueError(
                        f"{path}: {key[0]} {key[1]!r}: not a list of templates for a pool that "
                        f"templates_{lang}.yaml / dialogue.yaml define"
                    )
                for i, text in enumerate(items):
                    emotion, toks = parse(text, self.slot_names)
                    self.pools[key].append(Template(key + ("supplement", i), text, emotion, toks, "train", 0, True))

    def _eligible(self, t: Template, split: str) -> bool:
        return t.split == split and (self.in_supplement or not t.supplement)

    def pick(self, key: tuple, split: str) -> Template | None:
        cands = [t for t in self.pools.get(key, []) if self._eligible(t, split)]
        if not cands:
            return None
        low = min(t.uses for t in cands)
        return self.rng.choice([t for t in cands if t.uses == low])

    # ------------------------------------------------------------ rendering
    def render(
        self,
        tmpl: Template,
        lang: str,
        override: dict | None = None,
        prev: dict | None = None,
        avoid: dict | None = None,
    ) -> tuple[list[Seg], dict]:
        for _ in range(40):
            segs, fills, ok = [], {}, True
            for tok in tmpl.toks:
                kind = tok[0]
                if kind == "text":
                    segs.append(Seg(tok[1]))
                elif kind == "esc":
                    segs.append(Seg(tok[1], kind="escaped"))
                elif kind == "alt":
                    segs.append(Seg(self.rng.choice(tok[1])))
                elif kind == "lit":
                    segs.append(Seg(tok[1], tok[2], tok[3], "lit"))
                else:
                    _, name, filt, tagged = tok
                    filt = (override or {}).get(name, filt)
                    if not tagged and prev and name in prev:
                        segs.append(Seg(prev[name], kind="untag"))
                        continue
                    surface, tid = self.fillers.draw(name, filt, lang)
                    if tagged and avoid and avoid.get(name) is not None and avoid[name] in (surface, tid):
                        ok = False
                    label = SLOT_LABEL[name] if tagged else None
                    segs.append(Seg(surface, label, tid if tagged else None, "fill" if label else "untag", name))
                    if label:
                        fills[name] = (surface, filt)
            if not ok:
                continue
            tagged_segs = autotag(segs, self.matcher, self.not_mentions)
            if tagged_segs is not None:
                return self._polish(tagged_segs, lang), fills
        raise ValueError(f"cannot render template {tmpl.key}: {tmpl.text!r}")

    def _polish(self, segs: list[Seg], lang: str) -> list[Seg]:
        if lang != "en":
            return segs
        for a, b in zip(segs, segs[1:]):  # "a" / "an" before a filler
            if a.label is None and b.text:
                m = re.search(r"(^|\s)([Aa]n?) $", a.text)
                if m:
                    art = m.group(2)[0] + ("n" if _vowel_sound(b.text) else "")
                    a.text = a.text[: m.start(2)] + art + " "
        first = next((s for s in segs if s.text), None)
        if first is not None and first.label not in PII_LABELS and first.text[0].islower():
            first.text = first.text[0].upper() + first.text[1:]
        return segs

    def user_turn(
        self,
        key: tuple,
        split: str,
        ctx: Ctx,
        intent: str,
        emotion: str | None = None,
        override: dict | None = None,
        prev: dict | None = None,
        avoid: dict | None = None,
        tmpl: Template | None = None,
    ) -> dict | None:
        tmpl = tmpl or self.pick(key, split)
        if tmpl is None:
            return None
        segs, fills = self.render(tmpl, ctx.lang, override, prev, avoid)
        wrap = self.dlg["wrap"]
        if (
            key[0] == "intent"
            and emotion is None
            and tmpl.emotion is None
            and self.meta[intent].get("task", True)
            and self.rng.random() < wrap["share"]
        ):
            emo = self.rng.choices(list(wrap["emotions"]), list(wrap["emotions"].values()))[0]
            wrapped = self.wrap(segs, self.pick(("wrap", emo, ctx.lang), split), ctx.lang)
            if wrapped is not None:
                segs, emotion = wrapped, emo
        if self.rng.random() < self.noise_cfg["share"]:
            for _ in range(2):
                noisy, ops = self.noiser.apply(segs, ctx.lang)
                if ops and consistent(noisy, self.matcher, self.not_mentions):
                    segs = noisy
                    self.stats["noisy_turns"] += 1
                    self.stats.update(f"noise:{o}" for o in ops)
                    break
        tmpl.uses += 1
        for s in segs:
            if s.term_id and s.kind in ("fill", "auto"):
                self.fillers.commit(s.term_id, s.text)
        text, ents = assemble(segs)
        for e in ents:
            slot = STATE_SLOT.get(e["label"])
            if slot:
                ctx.state[slot] = e.get("term_id") or text[e["start"] : e["end"]]
                ctx.surf[slot] = text[e["start"] : e["end"]]
        ctx.last_fills = fills
        self.used_templates[split].add(tmpl.key)
        emo = emotion or tmpl.emotion or self.meta[intent]["emotion"]
        return {
            "speaker": "user",
            "text": text,
            "intent": intent,
            "emotion": emo,
            "entities": ents,
            "state": dict(ctx.state),
        }

    def wrap(self, segs: list[Seg], wtmpl: Template | None, lang: str) -> list[Seg] | None:
        """Put an emotional phrase around an utterance ("*" in the wrapper is the utterance)."""
        if wtmpl is None:
            return None
        before, _, after = wtmpl.text.partition("*")
        segs = [Seg(s.text, s.label, s.term_id, s.kind, s.slot) for s in segs]
        first, last = segs[0], segs[-1]
        if (
            before.rstrip().endswith((",", ":", "，"))
            and lang == "en"
            and first.label not in PII_LABELS
            and not (first.text.startswith("I ") or first.text.startswith("I'"))
        ):
            first.text = first.text[:1].lower() + first.text[1:]
        if after:
            ends = last.text[-1:] in ".?!。？！，,~"
            if lang == "en":
                after = (" " if ends else ". ") + after.lstrip()
            elif after[0] in "，,！!？?。":
                after = after[1:] if ends else after
            elif not ends:
                after = "，" + after
        out = ([Seg(before)] if before else []) + segs + ([Seg(after)] if after else [])
        tagged = autotag(out, self.matcher, self.not_mentions)
        if tagged is not None:
            wtmpl.uses += 1
            self.used_templates[wtmpl.split].add(wtmpl.key)
        return tagged

    def agent_reply(self, intent: str, lang: str, surf: dict | None = None) -> dict:
        """A reference reply; replies with {=slot} echo the current value of a state slot."""
        surf = surf or {}
        ok = [r for r in self.agent[lang][intent]["agent"] if all(k in surf for k in re.findall(r"\{=(\w+)\}", r))]
        text = self.rng.choice(ok)
        return {"speaker": "agent", "text": re.sub(r"\{=(\w+)\}", lambda m: surf[m.group(1)], text)}

    # ------------------------------------------------------------ dialogues
    def weighted_intent(self, pool: list[str], exclude: str | None = None) -> str:
        cands = [i for i in pool if i != exclude]
        boost = self.supplement_weights if self.in_supplement else {}
        return self.rng.choices(cands, [self.meta[i]["weight"] * boost.get(i, 1.0) for i in cands])[0]

    def single(self, split: str, lang: str, intent: str, tmpl: Template | None = None) -> list[dict]:
        ctx = Ctx(lang)
        user = self.user_turn(("intent", intent, lang), split, ctx, intent, tmpl=tmpl)
        if user is None:  # no template left for it: the caller draws another dialogue
            return []
        turns = [user]
        if self.rng.random() < self.cfg["single_agent_reply"]:
            turns.append(self.agent_reply(intent, lang, ctx.surf))
        return turns

    def multi(self, split: str, lang: str) -> list[dict]:
        scripts = self.dlg["scripts"]
        steps = self.rng.choices([s for _, s in scripts], [w for w, _ in scripts])[0]
        ctx = Ctx(lang)
        turns: list[dict] = []
        prev_step: str | None = None
        prev_intent = ""  # set with the first user turn, before any agent reply needs it
        for step in steps:
            surf = dict(ctx.surf)  # what the agent knows before this user turn
            made = self.step(step, split, ctx)
            if made is None:
                continue
            agent_text, user = made
            if turns:
                if agent_text is None:
                    if prev_step == "correct":
                        agent_text = self.rng.choice(self.dlg["agent"][lang]["correct_ack"])
                    elif prev_step == "complain" and step == "human":
                        agent_text = self.rng.choice(self.dlg["agent"][lang]["complain_ack"])
                    else:
                        agent_text = self.agent_reply(prev_intent, lang, surf)["text"]
                turns.append({"speaker": "agent", "text": agent_text})
            turns.append(user)
            prev_step, prev_intent = step, user["intent"]
        if sum(t["speaker"] == "user" for t in turns) < 2:
            return []
        if self.rng.random() < 0.6:
            turns.append(self.agent_reply(prev_intent, lang, ctx.surf))
        return turns

    def step(self, step: str, split: str, ctx: Ctx) -> tuple[str | None, dict] | None:
        lang, a = ctx.lang, self.dlg["agent"][ctx.lang]
        if step in ("task", "topic"):
            intent = self.weighted_intent(self.task_intents, exclude=ctx.task)
            if step == "topic" and ctx.task and self.rng.random() < 0.5:
                dom = self.labelbook.intent_domains[ctx.task]
                same = [i for i in self.task_intents if self.labelbook.intent_domains[i] == dom and i != ctx.task]
                intent = self.rng.choice(same) if same else intent
            ctx.task, ctx.asked = intent, set()
            user = self.user_turn(("intent", intent, lang), split, ctx, intent)
            return (None, user) if user else None
        if step in ("greet", "thanks", "bye", "human", "complain", "affirm", "deny"):
            intent = {
                "greet": "greeting",
                "bye": "goodbye",
                "human": "request_human_agent",
                "complain": "complaint",
            }.get(step, step)
            agent_text = None
            if step in ("affirm", "deny"):
                if ctx.task is None or (step == "affirm" and not self.meta[ctx.task].get("action")):
                    return None
                agent_text = self.rng.choice(a["offer"] if self.meta[ctx.task].get("action") else a["anything_else"])
            if step == "complain":
                ctx.task, ctx.asked = "complaint", set()
            user = self.user_turn(("intent", intent, lang), split, ctx, intent)
            return (agent_text, user) if user else None
        if ctx.task is None:
            return None
        meta = self.meta[ctx.task]
        emo = "anxious" if meta["emotion"] == "anxious" and self.rng.random() < 0.4 else "neutral"
        if step == "supply":
            specs = [
                s
                for s in meta.get("ask", [])
                if s.split(":")[0] not in ctx.asked
                and STATE_SLOT.get(SLOT_LABEL[s.split(":")[0]] or "") not in ctx.state
            ]
            if not specs:
                return None
            slot, _, filt = self.rng.choice(specs).partition(":")
            ctx.asked.add(slot)
            user = self.user_turn(("supply", slot, lang), split, ctx, ctx.task, emo, override={slot: filt or None})
            return (self.rng.choice(a["ask"][slot]), user) if user else None
        if step == "vary":
            specs = meta.get("vary", [])
            if not specs:
                return None
            slot, _, filt = self.rng.choice(specs).partition(":")
            state_slot = STATE_SLOT[entity_label(slot)]
            user = self.user_turn(
                ("vary", slot, lang),
                split,
                ctx,
                ctx.task,
                "neutral",
                override={slot: filt or None},
                avoid={slot: ctx.state.get(state_slot)},
            )
            return (None, user) if user else None
        if step == "correct":
            slots = [s for s in ctx.last_fills if ("correct", s, lang) in self.pools]
            if not slots:
                return None
            slot = self.rng.choice(slots)
            surface, filt = ctx.last_fills[slot]
            user = self.user_turn(
                ("correct", slot, lang),
                split,
                ctx,
                ctx.task,
                "neutral",
                override={slot: filt},
                prev={slot: surface},
                avoid={slot: surface},
            )
            return (None, user) if user else None
        raise ValueError(f"unknown script step {step!r}")

    def boost(self, split: str) -> tuple[str, list[dict]]:
        """A single-turn dialogue that mentions the glossary term least drawn so far in this split."""
        counts = {t: self.fillers.usage[(split, t)] for t in self.glossary.terms}
        low = min(counts.values())
        tid = self.rng.choice([t for t, n in counts.items() if n == low])
        cands = [(key, t) for key, t in self.term_slots.get(tid, []) if self._eligible(t, split)]
        if not cands:
            self.fillers.usage[(split, tid)] += 1  # unreachable here: do not ask again
            return "zh", []
        key, tmpl = self.rng.choice(cands)
        self.fillers.force = tid
        try:
            turns = self.single(split, key[2], key[1], tmpl)
        except ValueError:  # no rendering of this template carries the term: draw another dialogue
            self.fillers.usage[(split, tid)] += 1
            return key[2], []
        finally:
            self.fillers.force = None
        return key[2], turns

    def branch(self, lang: str, domain: str) -> str:
        names = list(self.cfg["branches"])
        w = [
            b["share"] * b["lang"][lang] * b.get("domains", {}).get(domain, 1.0) for b in self.cfg["branches"].values()
        ]
        return self.rng.choices(names, w)[0]

    def build(self) -> dict[str, list[dict]]:
        """All splits; then the train supplement (``train_supplement`` x the train size, more train
        dialogues that also draw the train-only templates, least used first)."""
        self.used_templates = {s: set() for s in SPLITS}
        self.counters: Counter[str] = Counter()
        total = max(1, round(self.cfg["dialogues"] * self.scale))
        out = {split: self.dialogues(split, max(1, round(total * self.cfg["split_share"][split]))) for split in SPLITS}
        extra = round(len(out["train"]) * self.supplement_share)
        if extra:
            self.in_supplement = True
            out["train"] += self.dialogues("train", extra)
            self.in_supplement = False
        self.stats["supplement_dialogues"] = extra
        return out

    def dialogues(self, split: str, n: int) -> list[dict]:
        """n dialogues of one split: every (intent, language) once as a single turn first, then the mix."""
        langs, lw = list(self.cfg["lang_share"]), list(self.cfg["lang_share"].values())
        self.fillers.split = split
        n_multi = round(n * self.cfg["multi_turn_share"])
        cover = [(i, lang) for i in self.intents for lang in LANGS]
        self.rng.shuffle(cover)
        kinds = ["multi"] * n_multi + ["single"] * (n - n_multi)
        self.rng.shuffle(kinds)
        dialogues = []
        for kind in kinds:
            turns: list[dict] = []
            while not turns:
                if kind == "multi":
                    lang = self.rng.choices(langs, lw)[0]
                    turns = self.multi(split, lang)
                elif cover:
                    intent, lang = cover.pop()
                    turns = self.single(split, lang, intent)
                elif self.rng.random() < self.cfg["glossary_boost"]:
                    lang, turns = self.boost(split)
                else:
                    lang = self.rng.choices(langs, lw)[0]
                    turns = self.single(split, lang, self.weighted_intent(self.intents))
            tasks = [t["intent"] for t in turns if t["speaker"] == "user" and self.meta[t["intent"]].get("task", True)]
            first = tasks[0] if tasks else turns[0]["intent"]
            self.counters[lang] += 1
            dialogues.append(
                {
                    "id": f"{lang}-{self.counters[lang]:05d}",
                    "lang": lang,
                    "branch": self.branch(lang, self.labelbook.intent_domains[first]),
                    "turns": turns,
                }
            )
        return dialogues


def summarize(splits: dict[str, list[dict]]) -> dict:
    summary: dict = {"splits": {}, "entities": Counter(), "intents": Counter(), "emotions": Counter()}
    for split, dialogues in splits.items():
        users = [t for d in dialogues for t in d["turns"] if t["speaker"] == "user"]
        summary["splits"][split] = {
            "dialogues": len(dialogues),
            "user_turns": len(users),
            "multi_turn_dialogues": sum(1 for d in dialogues if sum(t["speaker"] == "user" for t in d["turns"]) > 1),
            "lang": dict(sorted(Counter(d["lang"] for d in dialogues).items())),
            "user_turns_by_lang": dict(
                sorted(Counter(d["lang"] for d in dialogues for t in d["turns"] if t["speaker"] == "user").items())
            ),
            "branch": dict(sorted(Counter(d["branch"] for d in dialogues).items())),
            "intents": len({t["intent"] for t in users}),
        }
        for t in users:
            summary["intents"][t["intent"]] += 1
            summary["emotions"][t["emotion"]] += 1
            for e in t["entities"]:
                summary["entities"][e["label"]] += 1
    summary["entities"] = dict(summary["entities"].most_common())
    summary["emotions"] = dict(summary["emotions"].most_common())
    summary["intents_covered"] = len(summary["intents"])
    summary["intents"] = dict(summary["intents"].most_common())
    return summary


def write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def generate_corpus(out_dir: Path, seed: int = 13, scale: float = 1.0, train_supplement: float | None = None) -> dict:
    """Write train/validation/test.jsonl into out_dir (atomically) and return summary counts.
    ``train_supplement`` overrides corpus.yaml's share of extra train dialogues (0: none)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = Builder(seed, scale, train_supplement)
    splits = builder.build()
    for split, records in splits.items():
        write_jsonl(out_dir / f"{split}.jsonl", records)
    summary = summarize(splits)
    summary.update(
        seed=seed,
        scale=scale,
        noisy_turns=builder.stats["noisy_turns"],
        supplement_dialogues=builder.stats["supplement_dialogues"],
        noise_ops={k[6:]: v for k, v in sorted(builder.stats.items()) if k.startswith("noise:")},
        templates={s: len(builder.used_templates[s]) for s in SPLITS},
    )
    return summary
