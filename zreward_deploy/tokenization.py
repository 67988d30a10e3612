"""A small byte-level BPE tokenizer that the package builds offline, for the tiny presets.

Real checkpoints bring their own tokenizer (``compose`` loads it from the language model's directory);
tests and the demo need one without any download. This one is trained in milliseconds on a built-in
corpus of the templates, the rubric and scene words, with Qwen-style conventions: digits are always
single tokens (so the score tokens "1".."5" are), byte-level fallback (any text encodes), and the chat
special tokens ``<|im_start|>``, ``<|im_end|>``, ``<think>``, ``</think>``, ``<|endoftext|>``.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from .config import DEFAULT_DIMENSIONS, DEFAULT_TEMPLATES

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

_SCENE_WORDS = (
    "a an the one two three four five six seven eight nine ten red green blue yellow purple orange "
    "white black gray pink brown cyan magenta cube cubes sphere spheres ball balls circle circles square "
    "squares triangle triangles star stars cone cones ring rings box boxes on in under above below left "
    "right of next to beside behind in front table wooden floor grass sky background photo picture image "
    "scene small large big tiny bright dark blurry sharp noisy clean and with without is are there "
    "center top bottom corner near far shape shapes object objects colour color colours count counts "
    "position positions plain striped textured"
)
_REASONING_WORDS = (
    "the image shows looks seems has is not but also because so therefore overall first second then "
    "I see notice check whether matches match does do prompt asks for object colour count position "
    "blur noise artefacts occlusion missing extra wrong correct mostly slightly clearly good bad fine "
    "score should be high low medium defect defects visible subtle salient"
)


def _corpus() -> list[str]:
    lines = list(DEFAULT_TEMPLATES.values())
    lines += [f"{d.name} {d.instruction}" for d in DEFAULT_DIMENSIONS]
    lines += [_SCENE_WORDS, _REASONING_WORDS]
    # repeat word lists so that frequent words become whole tokens
    return lines * 4 + [w for w in (_SCENE_WORDS + " " + _REASONING_WORDS).split()] * 3


def build_tokenizer(vocab_size: int = 768) -> PreTrainedTokenizerFast:
    """Train the offline byte-level BPE tokenizer (deterministic; no network).

    Args:
        vocab_size: target vocabulary size including the 256 byte symbols and the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        padding_side="right",
        model_max_length=4096,
    )
