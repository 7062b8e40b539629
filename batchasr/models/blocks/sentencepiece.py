"""A SentencePiece BPE model read without the sentencepiece package: decode and encode.

SenseVoice's tokenizer (funasr SentencepiecesTokenizer) is a `.bpe.model` file, a serialized
`ModelProto` (sentencepiece_model.proto): repeated `pieces` {piece=1, score=2, type=3},
`trainer_spec`=2 (model_type=3, treat_whitespace_as_suffix=24, byte_fallback=35,
unk_surface=44), `normalizer_spec`=3 and `denormalizer_spec`=5 {precompiled_charsmap=2,
add_dummy_prefix=3, remove_extra_whitespaces=4, escape_whitespaces=5}. A minimal protobuf
wire reader (`read_message`) walks it.

`decode` follows SentencePieceProcessor::Decode (sentencepiece 0.2): control pieces are
invisible, `<unk>` becomes the unk surface (" ⁇ "), runs of `<0xNN>` byte pieces are decoded
one UTF-8 character at a time (an invalid byte is U+FFFD), "▁" becomes a space and the first
such space of the text is dropped when the normalizer adds a dummy prefix.

`encode_pieces` / `encode_ids` follow SentencePieceProcessor::Encode for BPE models (what
SenseVoice's timestamps re-tokenize with): the normalizer (user-defined symbols kept as they
are, the precompiled character map, a Darts double-array trie, applied longest match first,
whitespace rules), then bpe::Model::SampleEncode without dropout (highest-score merge first,
leftmost on ties; user-defined symbols never merge; UNUSED pieces resegmented), then runs of
unknown pieces merged, or split into byte pieces with byte_fallback.
"""
from __future__ import annotations

import heapq
import struct
from pathlib import Path

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # "▁"
REPLACEMENT = "\ufffd"
DEFAULT_UNK_SURFACE = " \u2047 "


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated protobuf varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def read_message(data: bytes) -> list[tuple[int, int, object]]:
    """(field number, wire type, value) of every field of a protobuf message, in order:
    varints as int, fixed32/fixed64 as bytes, length-delimited fields as bytes."""
    out, i = [], 0
    while i < len(data):
        tag, i = _varint(data, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(data):
            raise ValueError("truncated protobuf message")
        out.append((field, wire, value))
    return out


def _utf8_char(data: bytes, i: int) -> tuple[bool, int]:
    """(valid, length) of the UTF-8 character at data[i] (sentencepiece's IsValidDecodeUTF8:
    a malformed byte is invalid and 1 long; a literal U+FFFD counts as valid)."""
    b0, n = data[i], len(data) - i
    if b0 < 0x80:
        return True, 1
    trail = lambda k: 0x80 <= data[i + k] < 0xC0
    ok = lambda cp: cp < 0xD800 or 0xE000 <= cp <= 0x10FFFF
    if n >= 2 and b0 & 0xE0 == 0xC0:
        cp = ((b0 & 0x1F) << 6) | (data[i + 1] & 0x3F)
        if trail(1) and cp >= 0x80 and ok(cp):
            return True, 2
    elif n >= 3 and b0 & 0xF0 == 0xE0:
        cp = ((b0 & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F)
        if trail(1) and trail(2) and cp >= 0x800 and ok(cp):
            return True, 3
    elif n >= 4 and b0 & 0xF8 == 0xF0:
        cp = (((b0 & 0x07) << 18) | ((data[i + 1] & 0x3F) << 12) | ((data[i + 2] & 0x3F) << 6)
              | (data[i + 3] & 0x3F))
        if trail(1) and trail(2) and trail(3) and cp >= 0x10000 and ok(cp):
            return True, 4
    return False, 1


class Normalizer:
    """sentencepiece normalizer::Normalizer over UTF-8 bytes (NormalizerSpec fields)."""

    def __init__(self, spec: dict, *, user_symbols=(), whitespace_suffix: bool = False):
        self.add_dummy_prefix = spec.get(3, 1) != 0
        self.remove_extra_whitespaces = spec.get(4, 1) != 0
        self.escape_whitespaces = spec.get(5, 1) != 0
        self.whitespace_suffix = whitespace_suffix
        self.user = sorted({s.encode("utf-8") for s in user_symbols}, key=len, reverse=True)
        self.array = self.normalized = None
        blob = spec.get(2, b"")
        if blob:
            (size,) = struct.unpack("<I", blob[:4])
            if size >= len(blob):
                raise ValueError("precompiled_charsmap: trie size exceeds the blob")
            self.array = struct.unpack(f"<{size // 4}I", blob[4:4 + size])
            self.normalized = blob[4 + size:]

    def _trie_longest(self, data: bytes) -> tuple[int, int]:
        """Darts commonPrefixSearch: (length, value) of the longest rule matching data[0:]."""
        a = self.array
        unit = a[0]
        pos = (unit >> 10) << ((unit & (1 << 9)) >> 6)
        best = (0, 0)
        for i, c in enumerate(data):
            pos ^= c
            if pos >= len(a):
                break
            unit = a[pos]
            if unit & ((1 << 31) | 0xFF) != c:
                break
            pos ^= (unit >> 10) << ((unit & (1 << 9)) >> 6)
            if (unit >> 8) & 1:
                best = (i + 1, a[pos] & ((1 << 31) - 1))
        return best

    def prefix(self, data: bytes) -> tuple[bytes, int]:
        """NormalizePrefix: (normalized bytes, bytes consumed) at the start of data."""
        for sym in self.user:
            if data.startswith(sym):
                return sym, len(sym)
        if self.array is not None:
            length, value = self._trie_longest(data)
            if length:
                end = self.normalized.index(b"\0", value)
                return self.normalized[value:end], length
        valid, n = _utf8_char(data, 0)
        return (data[:n], n) if valid else (REPLACEMENT.encode(), 1)

    def __call__(self, text: str) -> bytes:
        data = text.encode("utf-8")
        space = SPACE.encode() if self.escape_whitespaces else b" "
        out = bytearray()
        i = 0
        if self.remove_extra_whitespaces:
            while i < len(data):
                sp, n = self.prefix(data[i:])
                if sp != b" ":
                    break
                i += n
        if i >= len(data):
            return b""
        if not self.whitespace_suffix and self.add_dummy_prefix:
            out += space
        prev_space = self.remove_extra_whitespaces
        while i < len(data):
            sp, n = self.prefix(data[i:])
            while prev_space and sp.startswith(b" "):
                sp = sp[1:]
            if sp:
                out += sp.replace(b" ", space) if self.escape_whitespaces else sp
                prev_space = sp.endswith(b" ")
            i += n
            if not self.remove_extra_whitespaces:
                prev_space = False
        if self.remove_extra_whitespaces:
            while out.endswith(space):
                del out[len(out) - len(space):]
        if self.whitespace_suffix and self.add_dummy_prefix:
            out += space
        return bytes(out)


class SentencePieceBPE:
    """id -> piece and both directions of a sentencepiece BPE `.model` file."""

    def __init__(self, data: bytes):
        self.pieces: list[str] = []
        self.scores: list[float] = []
        self.types: list[int] = []
        trainer, norm, denorm = {}, {}, None
        for field, _, value in read_message(data):
            if field == 1:
                piece, score, kind = "", 0.0, NORMAL
                for f, _, v in read_message(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                self.pieces.append(piece)
                self.scores.append(score)
                self.types.append(kind)
            elif field == 2:
                trainer = {f: v for f, _, v in read_message(value)}
            elif field == 3:
                norm = {f: v for f, _, v in read_message(value)}
            elif field == 5:
                denorm = {f: v for f, _, v in read_message(value)}
        if trainer.get(3, 1) != 2:
            raise ValueError(f"sentencepiece model_type {trainer.get(3, 1)} is not BPE (2)")
        self.byte_fallback = bool(trainer.get(35, 0))
        self.unk_surface = trainer[44].decode("utf-8") if 44 in trainer else DEFAULT_UNK_SURFACE
        self.normal_ids: dict[str, int] = {}
        self.reserved_ids: dict[str, int] = {}
        for i, (p, t) in enumerate(zip(self.pieces, self.types)):
            (self.normal_ids if t in (NORMAL, USER_DEFINED, UNUSED) else self.reserved_ids
             ).setdefault(p, i)
        unk = [i for i, t in enumerate(self.types) if t == UNKNOWN]
        if len(unk) != 1:
            raise ValueError("sentencepiece model without exactly one unknown piece")
        self.unk_id = unk[0]
        self.user_symbols = {p for p, t in zip(self.pieces, self.types) if t == USER_DEFINED}
        self.add_dummy_prefix = norm.get(3, 1) != 0
        self.remove_extra_whitespaces = norm.get(4, 1) != 0
        self.normalizer = Normalizer(norm, user_symbols=self.user_symbols,
                                     whitespace_suffix=bool(trainer.get(24, 0)))
        self.denormalizer = Normalizer(denorm) if denorm and denorm.get(2) else None

    @classmethod
    def from_file(cls, path: str | Path) -> "SentencePieceBPE":
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return len(self.pieces)

    def piece_to_id(self, piece: str) -> int:
        if piece in self.normal_ids:
            return self.normal_ids[piece]
        return self.reserved_ids.get(piece, self.unk_id)

    # ----------------------------------------------------------------------------------------
    # decode
    # ----------------------------------------------------------------------------------------
    def decode(self, ids) -> str:
        """SentencePieceProcessor::DecodeIds."""
        pieces = []
        for i in ids:
            if not 0 <= int(i) < len(self.pieces):
                raise IndexError(f"Invalid id: {i}")
            pieces.append(self.pieces[int(i)])
        out: list[str] = []
        pending = bytearray()  # a run of byte pieces

        def flush():
            k = 0
            while k < len(pending):
                valid, n = _utf8_char(bytes(pending), k)
                out.append(pending[k:k + n].decode("utf-8") if valid else REPLACEMENT)
                k += n
            pending.clear()

        is_bos_ws, bos_ws_seen = True, False
        for piece in pieces:
            t = self.types[self.piece_to_id(piece)]
            if t == BYTE:
                pending.append(int(piece[3:-1], 16))
                continue
            flush()
            if bos_ws_seen or "".join(out):
                is_bos_ws = False
            if t == CONTROL:
                surface, bos_ws_seen = "", False
            elif t == UNKNOWN:
                surface = self.unk_surface if piece == self.pieces[self.unk_id] else piece
                bos_ws_seen = False
            else:
                bos_ws_seen = False
                if is_bos_ws and (self.add_dummy_prefix or self.remove_extra_whitespaces):
                    if piece.startswith(SPACE):
                        piece, bos_ws_seen = piece[1:], True
                    if self.remove_extra_whitespaces:
                        bos_ws_seen = False
                surface = piece.replace(SPACE, " ")
            out.append(surface)
        flush()
        text = "".join(out)
        if self.denormalizer is not None:
            text = self.denormalizer(text).decode("utf-8")
        return text

    # ----------------------------------------------------------------------------------------
    # encode
    # ----------------------------------------------------------------------------------------
    def _bpe(self, normalized: bytes) -> list[tuple[bytes, int]]:
        """bpe::Model::SampleEncode(normalized, alpha=0): (piece bytes, id or -1) pairs."""
        user = [s.encode("utf-8") for s in self.user_symbols]
        user.sort(key=len, reverse=True)
        pieces, frozen = [], []
        i = 0
        while i < len(normalized):
            sym = next((s for s in user if normalized.startswith(s, i)), None)
            if sym is not None:
                n, fz = len(sym), True
            else:
                n = min(len(normalized) - i, b"\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[normalized[i] >> 4])
                fz = False
            pieces.append(normalized[i:i + n])
            frozen.append(fz)
            i += n
        if not pieces:
            return []
        nxt = list(range(1, len(pieces))) + [-1]
        prv = list(range(-1, len(pieces) - 1))
        agenda: list = []
        rev_merge: dict[bytes, tuple[bytes, bytes]] = {}

        def add(left, right):
            if left == -1 or right == -1 or frozen[left] or frozen[right]:
                return
            merged = pieces[left] + pieces[right]
            pid = self.normal_ids.get(merged.decode("utf-8", "surrogateescape"))
            if pid is None:
                return
            heapq.heappush(agenda, (-self.scores[pid], left, right, len(merged)))
            if self.types[pid] == UNUSED:
                rev_merge[merged] = (pieces[left], pieces[right])

        for k in range(1, len(pieces)):
            add(k - 1, k)
        while agenda:
            _, left, right, size = heapq.heappop(agenda)
            if not pieces[left] or not pieces[right] or \
                    len(pieces[left]) + len(pieces[right]) != size:
                continue
            pieces[left] = pieces[left] + pieces[right]
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            pieces[right] = b""
            add(prv[left], left)
            add(left, nxt[left])

        out: list[tuple[bytes, int]] = []

        def resegment(w: bytes):
            pid = self.piece_to_id(w.decode("utf-8", "surrogateescape"))
            if self.types[pid] != UNUSED or w not in rev_merge:
                out.append((w, pid))
                return
            resegment(rev_merge[w][0])
            resegment(rev_merge[w][1])

        k = 0
        while k != -1:
            resegment(pieces[k])
            k = nxt[k]
        return out

    def _encode(self, text: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        prev_unk = False
        for w, pid in self._bpe(self.normalizer(text)):
            unk = self.types[pid] == UNKNOWN
            if unk and self.byte_fallback:
                for b in w:
                    piece = f"<0x{b:02X}>"
                    out.append((piece, self.piece_to_id(piece)))
            elif unk and prev_unk:
                out[-1] = (out[-1][0] + w.decode("utf-8", "surrogateescape"), out[-1][1])
            else:
                out.append((w.decode("utf-8", "surrogateescape"), pid))
            prev_unk = unk
        return out

    def encode_pieces(self, text: str) -> list[str]:
        """SentencePieceProcessor::EncodeAsPieces."""
        return [p for p, _ in self._encode(text)]

    def encode_ids(self, text: str) -> list[int]:
        """SentencePieceProcessor::EncodeAsIds."""
        return [i for _, i in self._encode(text)]
