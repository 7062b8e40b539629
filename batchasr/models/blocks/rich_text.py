"""SenseVoice's rich-transcription tags: the official clean text, and the tags it reports.

`rich_transcription_postprocess` ports funasr 1.4.16 `funasr.utils.postprocess_utils`
(`rich_transcription_postprocess` and `format_str_v2`, with their tables): language, ITN and
neutral tags dropped, emotion and event tags turned into emoji, segments of several languages
joined. `parse_tags` reads the language, emotion and event a decoded text announces.
"""
from __future__ import annotations

import re

EMO = {"<|HAPPY|>": "😊", "<|SAD|>": "😔", "<|ANGRY|>": "😡", "<|NEUTRAL|>": "",
       "<|FEARFUL|>": "😰", "<|DISGUSTED|>": "🤢", "<|SURPRISED|>": "😮"}
EVENT = {"<|BGM|>": "🎼", "<|Speech|>": "", "<|Applause|>": "👏", "<|Laughter|>": "😀",
         "<|Cry|>": "😭", "<|Sneeze|>": "🤧", "<|Breath|>": "", "<|Cough|>": "🤧"}
LANG_TAGS = ("<|zh|>", "<|en|>", "<|yue|>", "<|ja|>", "<|ko|>", "<|nospeech|>")
EMOJI = {  # funasr's emoji_dict, in its order (the order of the replacements matters)
    "<|nospeech|><|Event_UNK|>": "❓", "<|zh|>": "", "<|en|>": "", "<|yue|>": "", "<|ja|>": "",
    "<|ko|>": "", "<|nospeech|>": "", "<|HAPPY|>": "😊", "<|SAD|>": "😔", "<|ANGRY|>": "😡",
    "<|NEUTRAL|>": "", "<|BGM|>": "🎼", "<|Speech|>": "", "<|Applause|>": "👏",
    "<|Laughter|>": "😀", "<|FEARFUL|>": "😰", "<|DISGUSTED|>": "🤢", "<|SURPRISED|>": "😮",
    "<|Cry|>": "😭", "<|EMO_UNKNOWN|>": "", "<|Sneeze|>": "🤧", "<|Breath|>": "",
    "<|Cough|>": "😷", "<|Sing|>": "", "<|Speech_Noise|>": "", "<|withitn|>": "",
    "<|woitn|>": "", "<|GBG|>": "", "<|Event_UNK|>": "",
}
EMO_SET = {"😊", "😔", "😡", "😰", "🤢", "😮"}
EVENT_SET = {"🎼", "👏", "😀", "😭", "🤧", "😷"}
# the order funasr iterates `emo_set.union(event_set)` in does not change the result: each
# replacement only removes a space next to one emoji
_EMOJIS = sorted(EMO_SET | EVENT_SET)

LANGUAGES = ("zh", "en", "yue", "ja", "ko", "nospeech")
EMOTIONS = ("HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED",
            "EMO_UNKNOWN")
EVENTS = ("BGM", "Speech", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing",
          "Speech_Noise", "Event_UNK", "GBG")


def format_str_v2(s: str) -> str:
    counts = {}
    for tag in EMOJI:
        counts[tag] = s.count(tag)
        s = s.replace(tag, "")
    emo = "<|NEUTRAL|>"
    for e in EMO:
        if counts[e] > counts[emo]:
            emo = e
    for e in EVENT:
        if counts[e] > 0:
            s = EVENT[e] + s
    s = s + EMO[emo]
    for emoji in _EMOJIS:
        s = s.replace(" " + emoji, emoji)
        s = s.replace(emoji + " ", emoji)
    return s.strip()


def rich_transcription_postprocess(s: str) -> str:
    """funasr.utils.postprocess_utils.rich_transcription_postprocess."""
    get_emo = lambda x: x[-1] if x[-1] in EMO_SET else None  # noqa: E731
    get_event = lambda x: x[0] if x[0] in EVENT_SET else None  # noqa: E731
    s = s.replace("<|nospeech|><|Event_UNK|>", "❓")
    for lang in LANG_TAGS:
        s = s.replace(lang, "<|lang|>")
    parts = [format_str_v2(p).strip(" ") for p in s.split("<|lang|>")]
    new_s = " " + parts[0]
    cur_event = get_event(new_s)
    for i in range(1, len(parts)):
        if len(parts[i]) == 0:
            continue
        if get_event(parts[i]) == cur_event and get_event(parts[i]) is not None:
            parts[i] = parts[i][1:]
        if len(parts[i]) == 0:
            continue
        cur_event = get_event(parts[i])
        if get_emo(parts[i]) is not None and get_emo(parts[i]) == get_emo(new_s):
            new_s = new_s[:-1]
        new_s += parts[i].strip().lstrip()
    new_s = new_s.replace("The.", " ")
    return new_s.strip()


_TAG = re.compile(r"<\|([^|<>]*)\|>")


def parse_tags(raw: str) -> dict:
    """The first language, emotion and event tag of a decoded text (None where it has none):
    {"language": "zh", "emotion": "NEUTRAL", "event": "Speech"}."""
    found = {"language": None, "emotion": None, "event": None}
    for name in _TAG.findall(raw):
        for key, names in (("language", LANGUAGES), ("emotion", EMOTIONS), ("event", EVENTS)):
            if found[key] is None and name in names:
                found[key] = name
    return found
