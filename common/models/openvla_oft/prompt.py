"""The text side of OpenVLA-OFT: prompt tokens, sequence layout and the attention mask.

Prompt: ``In: What action should the robot take to {instruction}?\\nOut:`` (instruction
lower-cased, as OpenVLA's LIBERO evaluation and SimpleVLA-RL do), tokenised with the
checkpoint's Llama tokenizer when its directory has one (transformers ``AutoTokenizer``
from local files), followed by token 29871 (SentencePiece's empty piece "▁"), which
OpenVLA appends after "Out:". Without a tokenizer (no Llama tokenizer can be downloaded
here) the text falls back to a deterministic byte-level mapping: BOS, then each UTF-8 byte
``b`` as Llama's byte-fallback token ``<0xbb>`` (id 3 + b), then 29871. A model trained with
one mapping must keep it: save_pretrained copies the tokenizer when there is one.

Sequence fed to Llama (OFT parallel decoding, one forward pass), per sample::

    [BOS] [image patches × P·V] [prompt tokens after BOS] [zero embedding × K] [STOP]

The K = C·D action positions carry zero embeddings; the logits for action k are read at
the position before it (the last prompt token for k = 0), as in OpenVLA-OFT. Samples are
left-padded so that every sample's action block sits at the same indices; positions are
counted from each sample's BOS, so padding changes nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
BOS_ID, STOP_ID = 1, 2            # Llama <s>, </s>; OFT appends </s> after the action block
EMPTY_PIECE_ID = 29871            # SentencePiece "▁", OpenVLA appends it after "Out:"
BYTE_TOKEN_OFFSET = 3             # Llama's byte-fallback tokens <0x00>..<0xFF> are ids 3..258
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def prompt_text(instruction: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.strip().lower())


class PromptEncoder:
    """instructions -> prompt token ids (list of int lists), cached per instruction."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_dir(cls, path: str | Path | None) -> "PromptEncoder":
        """Use the Llama tokenizer saved in ``path`` if there is one, else the byte fallback."""
        if path is not None and any((Path(path) / f).exists() for f in TOKENIZER_FILES):
            from transformers import AutoTokenizer
            return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        return cls(None)

    def encode_one(self, instruction: str) -> list[int]:
        ids = self._cache.get(instruction)
        if ids is None:
            text = prompt_text(instruction)
            if self.tokenizer is not None:
                ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
                if not ids or ids[0] != BOS_ID:
                    ids = [BOS_ID] + ids
            else:
                ids = [BOS_ID] + [BYTE_TOKEN_OFFSET + b for b in text.encode("utf-8")]
            if ids[-1] != EMPTY_PIECE_ID:
                ids.append(EMPTY_PIECE_ID)
            self._cache[instruction] = ids
        return ids

    def encode(self, instructions: Sequence[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (input_ids int64 [B, L] left-padded with pad_id, attention_mask int64 [B, L])."""
        rows = [self.encode_one(text) for text in instructions]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids, mask


def layout_index(text_mask: torch.Tensor, num_image_tokens: int,
                 suffix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each sequence position takes its embedding from, and which positions are real.

    The source is ``cat([text (L), image (P), suffix (K+1)])`` per sample, ``text`` left-padded
    with its BOS first. text_mask int/bool [B, L] -> (gather index int64 [B, S], valid bool
    [B, S]) with S = L + P + K + 1, laying out [pads, BOS, image, rest of text, suffix].
    """
    B, L = text_mask.shape
    P, S = num_image_tokens, text_mask.shape[1] + num_image_tokens + suffix_len
    n_pad = (L - text_mask.sum(dim=1)).unsqueeze(1)                   # [B, 1]
    j = torch.arange(S, device=text_mask.device).unsqueeze(0)          # [1, S]
    index = torch.where(j <= n_pad, j, torch.where(j <= n_pad + P, L + j - n_pad - 1, j - P))
    index = torch.where(j >= L + P, j, index).expand(B, S)
    return index, (j >= n_pad).expand(B, S)


def attention_bias(valid: torch.Tensor, suffix_len: int, mode: str,
                   dtype: torch.dtype) -> torch.Tensor:
    """valid bool [B, S] -> additive mask float [B, 1, S, S] (0 = may attend, min = blocked).

    ``prefix``: causal, except that the last ``suffix_len`` positions (action block + STOP)
    see each other fully; ``bidirectional``: every real position sees every real position.
    Padding is never seen; a padding row sees only itself (keeps softmax finite).
    """
    B, S = valid.shape
    i = torch.arange(S, device=valid.device).view(S, 1)
    j = torch.arange(S, device=valid.device).view(1, S)
    if mode == "bidirectional":
        allowed = torch.ones(S, S, dtype=torch.bool, device=valid.device)
    else:
        start = S - suffix_len
        allowed = (j <= i) | ((i >= start) & (j >= start))
    allowed = (allowed.unsqueeze(0) & valid.unsqueeze(1)) | (i == j).unsqueeze(0)
    bias = torch.zeros(B, 1, S, S, dtype=dtype, device=valid.device)
    return bias.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)


def position_ids(valid: torch.Tensor) -> torch.Tensor:
    """valid bool [B, S] -> int64 [B, S]: 0 at each sample's BOS (padding gets 0)."""
    return (valid.long().cumsum(dim=1) - 1).clamp_(min=0)
