"""Compliance rules on generated replies, and the masking of personal data in a generation."""

import pytest

from findial.data.pii import default_masker
from findial.training.generation.responder import check_reply
from findial.training.generation.rules import RuleError, RuleSet


@pytest.fixture(scope="module")
def rules():
    return RuleSet.load()  # configs/generation_rules/default.yaml


@pytest.mark.parametrize(
    "text, rule",
    [
        ("这款理财产品保本保息，您放心购买。", "guaranteed_return"),
        ("放心，这只基金稳赚不赔。", "guaranteed_return"),
        ("This fund offers a guaranteed return of 5% a year.", "guaranteed_return"),
        ("It is a risk-free investment.", "guaranteed_return"),
        ("我们可以给您免年费。", "fee_waiver"),
        ("逾期的罚息全部给您免了。", "fee_waiver"),
        ("We will waive the annual fee for you.", "fee_waiver"),
        ("Your late fees have been waived.", "fee_waiver"),
        ("您的贷款保证能批下来。", "approval_promise"),
        ("You will definitely be approved for the loan.", "approval_promise"),
        ("请告诉我您的银行卡密码。", "credential_request"),
        ("麻烦提供一下验证码，我帮您操作。", "credential_request"),
        ("这次我帮您免掉年费。", "fee_waiver"),
        ("Please tell me your PIN to continue.", "credential_request"),
        ("不用担心，保证收益。", "guaranteed_return"),  # a negation in an earlier clause does not count
        ("ＷＥ ＷＩＬＬ ＷＡＩＶＥ ＴＨＥ ＦＥＥ", "fee_waiver"),  # full-width and upper case
    ],
)
def test_forbidden_promises_are_flagged(rules, text, rule):
    hits = rules.check(text)
    assert [h.rule for h in hits] == [rule], hits
    assert hits[0].flag == f"compliance:{rule}"
    assert rules.flags(text) == [f"compliance:{rule}"]


@pytest.mark.parametrize(
    "text",
    [
        "这款产品不保本，收益会随市场波动。",
        "我们无法为您免年费，可以帮您查询年费政策。",
        "We cannot guarantee returns on this fund.",
        "Returns are not guaranteed.",
        "I'm unable to waive the fee, but I can explain it.",
        "您的信用卡已临时挂失，请问需要补办新卡吗？",
        "I have frozen the card. Do you want a replacement?",
        "Never share your PIN with anyone, including us.",
        "该卡首年免年费，当年刷卡满六次即可免次年年费。",  # the product's terms, not a waiver granted
        "银行不会通过电话或短信要求您提供验证码，请提供可疑号码，我为您登记。",
    ],
)
def test_compliant_replies_are_not_flagged(rules, text):
    assert rules.check(text) == []


def test_a_generation_with_personal_data_is_masked_and_flagged(rules):
    raw = "好的，已记下您的卡号6222021234567890128和手机13812345678，保证收益。"
    out = check_reply(raw, rules)
    assert "6222021234567890128" not in out["text"] and "13812345678" not in out["text"]
    assert "[CARD_NUMBER]" in out["text"] and "[PHONE]" in out["text"]
    assert default_masker().is_clean(out["text"])
    assert out["flags"] == ["pii_masked", "compliance:guaranteed_return"]
    clean = check_reply("  您的信用卡已临时挂失。 ", rules)
    assert clean == {"text": "您的信用卡已临时挂失。", "flags": []}
    assert check_reply("", rules)["flags"] == ["empty"]


def test_rule_file_errors_name_the_rule_and_field(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - id: a\n    zh: ['保证(收益']\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"rules\.yaml: rules\[0\]\.zh\[0\]: bad regular expression"):
        RuleSet.load(bad)
    bad.write_text("rules:\n  - id: a\n    zh: ['x']\n  - id: a\n    en: ['y']\n", encoding="utf-8")
    with pytest.raises(RuleError, match=r"rules\[1\]\.id: duplicate rule id 'a'"):
        RuleSet.load(bad)
    with pytest.raises(RuleError, match="not found"):
        RuleSet.load(tmp_path / "missing.yaml")


def test_rules_round_trip_through_the_package_form(rules):
    again = RuleSet.from_dict(rules.to_dict())
    text = "We will waive the annual fee, guaranteed returns too."
    assert again.flags(text) == rules.flags(text) == ["compliance:guaranteed_return", "compliance:fee_waiver"]
