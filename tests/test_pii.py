"""PII masking: detection rules, record masking, log and JSON redaction."""

from __future__ import annotations

import io
import logging

import pytest

from findial.data.labelbook import LabelBook
from findial.data.pii import (
    PII_LABELS,
    PIIMasker,
    PIIRedactingFilter,
    Span,
    id_checksum_ok,
    install_log_redaction,
    luhn_ok,
    mask_record,
    redact_json,
    remap_span,
    uninstall_log_redaction,
)

_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def make_id(first17: str) -> str:
    """A checksum-valid 18-character resident ID (GB 11643), computed here independently."""
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _W)) % 11]


def make_card(prefix: str) -> str:
    """``prefix`` + the Luhn check digit."""
    for check in "0123456789":
        digits = [int(d) for d in reversed(prefix + check)]
        if sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits)) % 10 == 0:
            return prefix + check
    raise AssertionError


def bad_last(number: str) -> str:
    """``number`` with its last digit changed so that it fails both the ID and the Luhn check."""
    for d in "0123456789":
        cand = number[:-1] + d
        if cand != number and not id_checksum_ok(cand) and not luhn_ok(cand):
            return cand
    raise AssertionError


ID_FIXED = "11010519491231002X"
ID_GEN = [make_id(p) for p in ("31011519870312123", "44030619991224456", "51010720000229789")]
CARD_GEN = make_card("622202123456789012")  # 19-digit UnionPay-style


@pytest.fixture(scope="module")
def m() -> PIIMasker:
    return PIIMasker()


def test_labels_are_the_label_books_pii_labels():
    assert PII_LABELS == LabelBook.load().pii_labels


def test_check_helpers_on_known_examples():
    assert id_checksum_ok(ID_FIXED) and id_checksum_ok(ID_FIXED.lower())
    assert all(id_checksum_ok(x) for x in ID_GEN)
    assert not id_checksum_ok(ID_FIXED[:-1] + "1")
    assert luhn_ok("4111111111111111") and luhn_ok("5500000000000004") and luhn_ok(CARD_GEN)
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize("number", [ID_FIXED, *ID_GEN, ID_FIXED.lower()])
def test_resident_id_masked_zh(m, number):
    text = f"我的身份证号是{number}，请核实"
    assert m.mask(text) == "我的身份证号是[ID_NUMBER]，请核实"
    assert m.find(text) == [Span(7, 25, "ID_NUMBER")]


def test_grouped_id_masked(m):
    assert m.mask("ID: 110105 19491231 002X.") == "ID: [ID_NUMBER]."


def test_id_failing_checksum_is_left_alone(m):
    bad = bad_last(ID_GEN[0])
    assert m.mask(f"证件号{bad}") == f"证件号{bad}"


@pytest.mark.parametrize(
    "first17", ["11010519491332002", "11010519490230002", "11010518991231002", "11010530000101002"]
)  # month 13, 30 Feb, before 1900, in the future
def test_id_with_impossible_birth_date_is_left_alone(m, first17):
    number = make_id(first17)  # the check character is right, the date is not
    assert not id_checksum_ok(number) and not luhn_ok(number)
    assert m.is_clean(f"证件号{number}")


def test_18_digit_run_failing_checksum_but_passing_luhn_is_a_card(m):
    number = make_card("62220212345678901")
    assert len(number) == 18 and not id_checksum_ok(number)
    assert m.find(number) == [Span(0, 18, "CARD_NUMBER")]


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        CARD_GEN,
        " ".join([CARD_GEN[:4], CARD_GEN[4:8], CARD_GEN[8:12], CARD_GEN[12:16], CARD_GEN[16:]]),
        "3782 822463 10005",  # Amex 4-6-5
    ],
)
def test_card_numbers_masked(m, card):
    assert m.mask(f"卡号{card}，帮我查一下") == "卡号[CARD_NUMBER]，帮我查一下"
    assert m.mask(f"My card is {card}.") == "My card is [CARD_NUMBER]."


@pytest.mark.parametrize("number", ["4111 1111 1111 1112", "4111111111111112", bad_last(CARD_GEN)])
def test_luhn_failures_not_masked(m, number):
    assert m.mask(f"card {number}") == f"card {number}"


def test_number_inside_longer_digit_run_not_masked(m):
    for text in [
        "0" + "4111111111111111" + "0",
        "9" + ID_FIXED,
        "913812345678",
        "138123456789",
        "1234 4111 1111 1111 1111 1111",
    ]:
        assert m.is_clean(text), text


@pytest.mark.parametrize(
    "phone",
    [
        "13812345678",
        "138-1234-5678",
        "138 1234 5678",
        "+8613812345678",
        "+86 138 1234 5678",
        "0086 13812345678",
        "(+86)13812345678",
        "010-12345678",
        "0755-1234567",
    ],
)
def test_mainland_phones_masked(m, phone):
    assert m.mask(f"手机{phone}，谢谢") == "手机[PHONE]，谢谢"


@pytest.mark.parametrize("phone", ["+44 20 7946 0958", "+1 (415) 555-0132", "00852 2345 6789", "+85223456789"])
def test_international_phones_masked(m, phone):
    assert m.mask(f"Call me on {phone} tomorrow.") == "Call me on [PHONE] tomorrow."


@pytest.mark.parametrize("addr", ["john.doe@example.co.uk", "a_b+tag@bank-mail.com", "13812345678@163.com"])
def test_emails_masked(m, addr):
    assert m.mask(f"邮箱{addr}。") == "邮箱[EMAIL]。"
    assert m.mask(f"email {addr}, thanks") == "email [EMAIL], thanks"


def test_phone_followed_by_other_numbers(m):
    assert m.mask("Call +44 20 7946 0958 2024 please") == "Call [PHONE] 2024 please"
    assert m.mask("我的手机号是 +86 138 1234 5678 2次") == "我的手机号是 [PHONE] 2次"


def test_full_width_digits_detected_and_replaced_in_original(m):
    fw = str.maketrans("0123456789X+@", "０１２３４５６７８９Ｘ＋＠")
    text = (
        f"卡号{'4111 1111 1111 1111'.translate(fw)}，手机{'+8613812345678'.translate(fw)}，"
        f"证件{ID_FIXED.translate(fw)}，邮箱ａｂ{'@'.translate(fw)}example.com，ＯＫ"
    )
    assert m.mask(text) == "卡号[CARD_NUMBER]，手机[PHONE]，证件[ID_NUMBER]，邮箱[EMAIL]，ＯＫ"
    # characters whose NFKC form is longer (⑴ -> "(1)", ㎏ -> "kg") keep the offsets right
    assert m.mask("⑴㎏ 电话１３８１２３４５６７８，ﬁne") == "⑴㎏ 电话[PHONE]，ﬁne"


@pytest.mark.parametrize(
    "text",
    [
        "尾号5521的卡",
        "the card ending in 0093",
        "卡号6222 **** **** 1234",
        "手机138****5678",
        "转账20000元",
        "on 2024-05-01 at 14:30",
        "年化3.5%",
        "amount 1,234,567.89",
        "订单号 2024050112",
        "[CARD_NUMBER] and [PHONE]",
    ],
)
def test_masked_numbers_amounts_dates_rates_untouched(m, text):
    assert m.mask(text) == text and m.is_clean(text)


@pytest.mark.parametrize(
    "text",
    [
        "val_loss: 3.4111111111111111",
        "lr=0.13812345678",
        f"score 0.{ID_FIXED}",
        "x=2.4111111111111111e-05",
        "'val_loss': 1.0048003492355347",  # "00..." after the point once read as an international phone
    ],
)
def test_fractional_digits_of_logged_floats_untouched(m, text):
    assert m.mask(text.split(".", 1)[1].split("e")[0]) != text.split(".", 1)[1].split("e")[0]  # alone: masked
    assert m.mask(text) == text


def test_numbers_after_a_full_stop_still_masked(m):
    assert m.mask("Loss 1.5. 4111111111111111 is my card") == "Loss 1.5. [CARD_NUMBER] is my card"
    assert m.mask("card.4111111111111111") == "card.[CARD_NUMBER]"
    assert m.mask("号码。13812345678") == "号码。[PHONE]"


def test_person_only_when_tagged(m):
    text = "我叫张伟，my name is John Smith"
    assert m.mask(text) == text
    ents = [
        {"start": 2, "end": 4, "label": "PERSON"},
        {"start": 16, "end": 26, "label": "PERSON"},
        {"start": 0, "end": 1, "label": "PRODUCT"},
    ]
    assert m.mask(text, ents) == "我叫[PERSON]，my name is [PERSON]"


def test_masking_is_idempotent_and_keeps_other_text(m):
    text = f"Hi, I'm calling about 4111 1111 1111 1111 and {ID_FIXED}; email x@y.com, 20000 USD."
    once = m.mask(text)
    assert once == "Hi, I'm calling about [CARD_NUMBER] and [ID_NUMBER]; email [EMAIL], 20000 USD."
    assert m.mask(once) == once


def test_mask_with_spans_and_remap(m):
    text = "卡4111111111111111于昨天挂失"
    masked, edits = m.mask_with_spans(text)
    assert masked == "卡[CARD_NUMBER]于昨天挂失"
    (e,) = edits
    assert (e.old_start, e.old_end, e.new_start, e.new_end, e.label) == (1, 17, 1, 14, "CARD_NUMBER")
    assert masked[e.new_start : e.new_end] == "[CARD_NUMBER]"
    new = remap_span(18, 20, edits)
    assert masked[new[0] : new[1]] == text[18:20] == "昨天"
    assert remap_span(0, 1, edits) == (0, 1) and remap_span(5, 8, edits) is None


def test_mask_record_remaps_offsets_and_masks_state():
    text = f"我是李娜，卡号{CARD_GEN}的信用卡昨天被盗刷了5000元"
    i = text.index
    rec = {
        "id": "zh-1",
        "lang": "zh",
        "branch": "bj",
        "turns": [
            {
                "speaker": "user",
                "text": text,
                "intent": "card_fraud",
                "emotion": "anxious",
                "entities": [
                    {"start": 2, "end": 4, "label": "PERSON"},
                    {"start": i("信用卡"), "end": i("信用卡") + 3, "label": "PRODUCT", "term_id": "credit_card"},
                    {"start": i("昨天"), "end": i("昨天") + 2, "label": "DATE"},
                    {"start": i("5000元"), "end": i("5000元") + 5, "label": "AMOUNT"},
                ],
                "state": {"product": "credit_card", "date": "昨天", "amount": "5000元", "note": "李娜 13812345678"},
            },
            {"speaker": "agent", "text": "李娜女士您好，已为您冻结该卡，回电请拨+86 138 1234 5678。"},
        ],
    }
    out = mask_record(rec)
    user, agent = out["turns"]
    assert user["text"] == "我是[PERSON]，卡号[CARD_NUMBER]的信用卡昨天被盗刷了5000元"
    got = {(e["label"], user["text"][e["start"] : e["end"]]) for e in user["entities"]}
    assert got == {("PERSON", "[PERSON]"), ("PRODUCT", "信用卡"), ("DATE", "昨天"), ("AMOUNT", "5000元")}
    assert next(e for e in user["entities"] if e["label"] == "PRODUCT")["term_id"] == "credit_card"
    assert user["state"] == {"product": "credit_card", "date": "昨天", "amount": "5000元", "note": "[PERSON] [PHONE]"}
    assert agent["text"] == "[PERSON]女士您好，已为您冻结该卡，回电请拨[PHONE]。"
    assert rec["turns"][0]["text"] == text and out is not rec  # the input is untouched


def test_redact_json_masks_nested_strings():
    report = {"errors": [{"text": f"ID {ID_FIXED}", "n": 3}], "f1": 0.91, ("a@b.com"): ("13812345678", None)}
    assert redact_json(report) == {
        "errors": [{"text": "ID [ID_NUMBER]", "n": 3}],
        "f1": 0.91,
        "[EMAIL]": ("[PHONE]", None),
    }


def _stream_logger(name: str, flt: logging.Filter | None = None) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    if flt:
        handler.addFilter(flt)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate, logger.level = False, logging.INFO
    return logger, buf


def test_log_filter_masks_message_and_args():
    logger, buf = _stream_logger("findial.test.pii.filter", PIIRedactingFilter())
    logger.info("customer id %s phone %s", ID_FIXED, "13812345678")
    logger.info(f"card {CARD_GEN}")
    out = buf.getvalue()
    assert "[ID_NUMBER]" in out and "[PHONE]" in out and "[CARD_NUMBER]" in out
    assert "19491231" not in out and "13812345678" not in out and CARD_GEN not in out


def test_install_log_redaction_covers_later_handlers_and_tracebacks(caplog):
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent
        assert sum(isinstance(f, PIIRedactingFilter) for f in logging.lastResort.filters) == 1
        logger, buf = _stream_logger("findial.test.pii.install")  # handler made after install, no filter
        logger.warning("id %s", ID_FIXED)
        try:
            raise ValueError(f"bad card {CARD_GEN}")
        except ValueError:
            logger.exception("failed for %s", "x@y.com")
        out = buf.getvalue()
        assert "id [ID_NUMBER]" in out and "failed for [EMAIL]" in out and "bad card [CARD_NUMBER]" in out
        assert "Traceback" in out and ID_FIXED not in out and CARD_GEN not in out and "x@y.com" not in out
        with caplog.at_level(logging.INFO):
            logging.getLogger("findial.test.pii.root").info("phone +44 20 7946 0958")
        assert caplog.messages[-1] == "phone [PHONE]"
    finally:
        uninstall_log_redaction()
    assert not any(isinstance(f, PIIRedactingFilter) for f in logging.lastResort.filters)
    logger, buf = _stream_logger("findial.test.pii.after")
    logger.info("id %s", ID_FIXED)
    assert ID_FIXED in buf.getvalue()  # uninstalled: the factory is restored
