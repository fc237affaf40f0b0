"""The InternLM2 tokenizer without its remote code: the sentencepiece model plus the added tokens.

The published `InternLM2Tokenizer` is a slow transformers tokenizer: it splits the text on the
added tokens (`<img>`, `<IMG_CONTEXT>`, ...), encodes every other piece with sentencepiece
(which puts its dummy-prefix space in front of each piece) and prepends `<s>`. Doing exactly
that here gives identical ids (`input_ids_without_image_context` in the golden cases).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import sentencepiece as spm

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IM_END = "<|im_end|>"


class MiniMonkeyTokenizer:
    def __init__(self, directory: Path) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        added_path = directory / "added_tokens.json"
        self.added_tokens: dict[str, int] = json.loads(added_path.read_text()) if added_path.exists() else {}
        # Longest first, so that a token that is a prefix of another never wins.
        names = sorted(self.added_tokens, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.bos_id = self.sp.bos_id()
        self._special_ids = {
            *self.added_tokens.values(),
            self.sp.bos_id(),
            self.sp.eos_id(),
            self.sp.unk_id(),
        }
        self._special_ids.update(i for i in range(self.sp.get_piece_size()) if self.sp.is_control(i))

    @property
    def vocab_size(self) -> int:
        return max(self.sp.get_piece_size(), max(self.added_tokens.values(), default=-1) + 1)

    def token_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        piece_id = self.sp.piece_to_id(token)
        if piece_id == self.sp.unk_id() and token != self.sp.id_to_piece(piece_id):
            raise KeyError(f"{token!r} is not a token of this tokenizer")
        return piece_id

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        chunks = self._split.split(text) if self._split else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.added_tokens:
                ids.append(self.added_tokens[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, special tokens skipped, as `batch_decode(skip_special_tokens=True)`."""
        return self.sp.decode([i for i in ids if i not in self._special_ids and i < self.sp.get_piece_size()])
