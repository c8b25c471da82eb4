"""Which branch a node is, and its dialogues: the corpus `branch` field, or a local file on a real SuperNode.

Simulation: node ``partition-id`` i is ``branches[i]`` and reads the shared corpus filtered by branch.
Deployment: the SuperNode says who it is, ``--node-config "branch='beijing' train-file='/data/train.jsonl'
val-file='/data/val.jsonl'"``; a file named there is the branch's own data and is used whole.
"""

from __future__ import annotations

import os
from pathlib import Path

from findial.data.corpus import corpus_files, load_corpora, load_corpus
from findial.data.labelbook import Glossary, LabelBook

_CORPORA: dict[tuple, list[dict]] = {}


def branch_of(node_config, branches: list[str]) -> str:
    """The branch a node serves; it must be one of the run's ``branches``."""
    if "branch" in node_config:
        branch = str(node_config["branch"])
    elif "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(branches):
            raise ValueError(f"node config partition-id={pid}: the run has {len(branches)} branches {branches}")
        branch = branches[pid]
    else:
        raise ValueError("node config: set branch='<name>' (deployment) or partition-id (simulation)")
    if branch not in branches:
        raise ValueError(f"node config branch={branch!r} is not one of the run's branches {branches}")
    return branch


def _load(spec, labelbook: LabelBook, glossary: Glossary) -> list[dict]:
    """``load_corpora(spec)``, kept while its files are unchanged."""
    key = tuple((path, repeat, os.path.getmtime(path)) for path, repeat in corpus_files(spec))
    if key not in _CORPORA:
        _CORPORA.clear()
        _CORPORA[key] = load_corpora(spec, labelbook, glossary)
    return _CORPORA[key]


def branch_dialogues(cfg, node_config, split: str, branch: str) -> list[dict]:
    """The dialogues of ``branch`` for ``split`` ('train' or 'val'); they never leave this process."""
    labelbook = LabelBook.load(cfg.labels.ontology)
    glossary = Glossary.load(cfg.labels.glossary)
    local = node_config.get(f"{split}-file")
    if local:
        if not Path(str(local)).is_file():
            raise FileNotFoundError(f"node config {split}-file={local}: no such file on this SuperNode")
        return load_corpus(str(local), labelbook, glossary)
    path = cfg.data.train_file if split == "train" else cfg.data.val_file
    return [d for d in _load(path, labelbook, glossary) if d.get("branch") == branch]
