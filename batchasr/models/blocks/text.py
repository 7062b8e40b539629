"""Token strings -> text, as FunASR's CharTokenizer models do it.

Port of `funasr.utils.postprocess_utils` (sentence_postprocess and abbr_dispose, funasr
1.4.16), quirks included, because "same text as the official implementation" is the contract:
specials (<s>, </s>, <unk>, <OOV>) are dropped; all-CJK token lists are concatenated; all-alpha
lists glue '@@' pieces to the next piece and separate words with spaces; mixed lists glue CJK
characters without spaces and Latin words with one; runs of single letters separated by
spaces ("a b c") become an upper-case abbreviation ("ABC").

With timestamps the official text joins words with spaces (CJK included); without, it joins
them with nothing. `sentence_postprocess` returns both spellings' inputs so the caller picks.
"""
from __future__ import annotations

_SPECIALS = ("<s>", "</s>", "<unk>", "<OOV>")


def _is_chinese(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "0" <= ch <= "9" or ch == "@"


def _clean(word: str) -> str:
    for s in (" ",) + _SPECIALS:
        word = word.replace(s, "")
    return word


def _is_all_chinese(words) -> bool:
    cleaned = [_clean(w) for w in words]
    if not cleaned:
        return False
    # the official code iterates strings character by character when given one word
    return all(_is_chinese(c) for c in cleaned)


def _is_all_alpha(words) -> bool:
    cleaned = [_clean(w) for w in words]
    if not cleaned:
        return False
    for ch in cleaned:
        if not ch.isalpha() and ch != "'":
            return False
        if ch.isalpha() and _is_chinese(ch):
            return False
    return True


def _is_single_letter(w: str) -> bool:
    return len(w) == 1 and w.encode("utf-8").isalpha()


def abbr_dispose(words: list[str], time_stamp: list | None = None):
    """Merge "a", " ", "b", " ", "c" into "ABC" (with the span of the first..last letter)."""
    n = len(words)
    abbr_begin, abbr_end = [], []
    last = -1
    for num in range(n):
        if num <= last:
            continue
        if _is_single_letter(words[num]):
            if (num + 2 < n and words[num + 1] == " " and _is_single_letter(words[num + 2])):
                abbr_begin.append(num)
                num += 2
                abbr_end.append(num)
                while True:
                    num += 1
                    if num < n and words[num] == " ":
                        num += 1
                        if num < n and _is_single_letter(words[num]):
                            abbr_end[-1] = num
                            last = num
                        else:
                            break
                    else:
                        break
    ts_nums, ts_index = [], 0
    for num in range(n):
        ts_nums.append(ts_index)
        if words[num] != " ":
            ts_index += 1
    word_lists, ts_lists = [], []
    last = -1
    begin = end = None
    num = 0
    for num0 in range(n):
        num = num0
        if num <= last:
            continue
        if num in abbr_begin:
            if time_stamp is not None:
                begin = time_stamp[ts_nums[num]][0]
            abbr_word = words[num].upper()
            num += 1
            while num < n:
                if num in abbr_end:
                    abbr_word += words[num].upper()
                    last = num
                    break
                if words[num].encode("utf-8").isalpha():
                    abbr_word += words[num].upper()
                num += 1
            word_lists.append(abbr_word)
            if time_stamp is not None and ts_nums[num] < len(time_stamp):
                end = time_stamp[ts_nums[num]][1]
                ts_lists.append([begin, end])
        else:
            word_lists.append(words[num])
            if time_stamp is not None and ts_nums[num] < len(time_stamp) and words[num] != " ":
                begin = time_stamp[ts_nums[num]][0]
                end = time_stamp[ts_nums[num]][1]
                ts_lists.append([begin, end])
    return (word_lists, ts_lists) if time_stamp is not None else word_lists


def sentence_postprocess(tokens: list[str], time_stamp: list | None = None):
    """-> (text, words, word_times). Without time_stamp: text joined without separators and
    word_times None; with it: text joined by spaces and one [start, end] per word."""
    middle = [t for t in tokens if t not in _SPECIALS]
    word_lists: list[str] = []
    ts_lists: list = []
    word_item = ""
    has_ts = time_stamp is not None
    if _is_all_chinese(middle):
        word_lists = [ch.replace(" ", "") for ch in middle]
        if has_ts:
            ts_lists = time_stamp
    elif _is_all_alpha(middle):
        ts_flag = True
        begin = end = None
        for i, ch in enumerate(middle):
            if ts_flag and has_ts:
                begin, end = time_stamp[i][0], time_stamp[i][1]
            if "@@" in ch:
                word_item += ch.replace("@@", "")
                if has_ts:
                    ts_flag = False
                    end = time_stamp[i][1]
            else:
                word_item += ch
                word_lists += [word_item, " "]
                word_item = ""
                if has_ts:
                    ts_flag = True
                    end = time_stamp[i][1]
                    ts_lists.append([begin, end])
    else:
        alpha_blank = False
        ts_flag = True
        begin = end = -1
        for i, ch in enumerate(middle):
            if ts_flag and has_ts:
                begin, end = time_stamp[i][0], time_stamp[i][1]
            if _is_all_chinese(ch):
                if alpha_blank:
                    word_lists.pop()
                word_lists.append(ch)
                alpha_blank = False
                if has_ts:
                    ts_flag = True
                    ts_lists.append([begin, end])
            elif "@@" in ch:
                word_item += ch.replace("@@", "")
                alpha_blank = False
                if has_ts:
                    ts_flag = False
                    end = time_stamp[i][1]
            elif _is_all_alpha(ch):
                word_item += ch
                word_lists += [word_item, " "]
                word_item = ""
                alpha_blank = True
                if has_ts:
                    ts_flag = True
                    end = time_stamp[i][1]
                    ts_lists.append([begin, end])
            else:
                word_lists.append(ch)
    if has_ts:
        word_lists, ts_lists = abbr_dispose(word_lists, ts_lists)
        words = [w for w in word_lists if w != " "]
        return " ".join(words).strip(), words, ts_lists
    word_lists = abbr_dispose(word_lists)
    words = [w for w in word_lists if w != " "]
    return "".join(word_lists).strip(), words, None
