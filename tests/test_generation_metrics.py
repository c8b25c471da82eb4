"""Response-generation metrics on hand-computed cases, and the bank checks."""

import math

import pytest

from findial.data.labelbook import Glossary
from findial.evaluation import generation_metrics as gm


def test_tokens_are_characters_for_chinese_and_words_for_latin():
    assert gm.tokenize("今天美元兑人民币为7.1。I can't.") == [
        "今",
        "天",
        "美",
        "元",
        "兑",
        "人",
        "民",
        "币",
        "为",
        "7.1",
        "。",
        "I",
        "can't",
        ".",
    ]


def test_bleu_hand_computed():
    assert gm.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # all precisions 1, hypothesis 4 tokens against 6: brevity penalty exp(1 - 6/4)
    assert gm.corpus_bleu(["a b c d"], ["a b c d e f"]) == pytest.approx(100 * math.exp(-0.5))
    # p1 = 3/4, p2 = 1/3, p3 = 0/2 -> 1/(2*2), p4 = 0/1 -> 1/(4*1) (exp smoothing); no brevity penalty
    assert gm.corpus_bleu(["a b x d"], ["a b c d"]) == pytest.approx(100 * (0.75 / 3 * 0.25 * 0.25) ** 0.25)
    assert gm.corpus_bleu(["x y z"], ["a b c"]) == 0.0
    assert gm.corpus_bleu([""], ["a b c"]) == 0.0
    # corpus level: statistics are summed before the precisions are taken
    assert gm.corpus_bleu(["a b c d", "a b c d"], ["a b c d", "a b c d"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 generated replies but 1 references"):
        gm.corpus_bleu(["a", "b"], ["a"])


def test_chrf_hand_computed():
    # n=1: P 2/2, R 2/3; n=2: P 1/1, R 1/2; n>=3: the hypothesis has none -> not effective.
    # avg P = 1, avg R = 7/12, F2 = 5 P R / (4 P + R) = 7/11
    assert gm.corpus_chrf(["ab"], ["abc"]) == pytest.approx(100 * 7 / 11)
    assert gm.corpus_chrf(["a b"], ["abc"]) == pytest.approx(100 * 7 / 11)  # whitespace is ignored
    assert gm.corpus_chrf(["已挂失"], ["已挂失"]) == pytest.approx(100.0)
    assert gm.corpus_chrf(["xyz"], ["abc"]) == 0.0


def test_rouge_l_hand_computed():
    # LCS 6 of 7 generated and 6 reference tokens: F1 = 2 (6/7)(1) / (6/7 + 1) = 12/13
    assert gm.rouge_l("the cat was found under the bed", "the cat was under the bed") == pytest.approx(1200 / 13)
    assert gm.rouge_l("已为您挂失", "已挂失") == pytest.approx(75.0)  # characters: P 3/5, R 1
    assert gm.rouge_l("", "已挂失") == 0.0
    assert gm.mean_rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(50.0)


def test_glossary_mentions_take_the_longest_form_and_whole_latin_words():
    g = Glossary.load()
    assert gm.glossary_mentions("我的信用卡年费", g) == {"annual_fee"}  # not also credit_card
    assert gm.glossary_mentions("房贷现在ＬＰＲ是多少", g) == {"housing_loan", "lpr"}  # full width folded
    assert gm.glossary_mentions("I lost my credit cards", g) == {"credit_card"}
    assert gm.glossary_mentions("I lost my credit cardigan", g) == set()


def test_term_scores_recall_and_grounding():
    g = Glossary.load()
    rows = [
        {
            "generated": "您的信用卡已挂失，另外房贷可以提前还款",
            "reference": "您的信用卡已临时挂失",
            "context": ["我的信用卡丢了"],
            "state": {"product": "credit_card"},
        },
        {"generated": "好的", "reference": "好的，LPR 每月公布一次", "context": ["LPR 是多少"], "state": {}},
    ]
    s = gm.term_scores(rows, g)
    assert s["term_recall"] == pytest.approx(1 / 2)  # credit_card found, lpr missed
    assert s["generated_terms"] == 2 and s["term_grounding"] == pytest.approx(1 / 2)  # housing_loan from nowhere
    assert s["ungrounded_terms"] == {"housing_loan": 1}
    assert gm.term_scores([{"generated": "好的", "reference": "好的", "context": []}], g)["term_recall"] is None
