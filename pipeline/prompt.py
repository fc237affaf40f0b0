"""The internlm2-chat conversation template and the image placeholder expansion."""

from __future__ import annotations

from pipeline.tokenizer import IM_END, IMG_CONTEXT, IMG_END, IMG_START

# The template's default system message (InternVL's internlm2-chat), used unless the
# checkpoint's config.json carries its own `system_message`.
INTERNLM2_CHAT_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
    "英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
IMAGE_PLACEHOLDER = "<image>"


def chat_prompt(question: str, system_message: str, images: int = 1) -> str:
    """The prompt `chat()` builds, with `<image>` placeholders still in it.

    One image: "<image>\\n" + question, as published. Several: InternVL's "Image-k: <image>" lines.
    """
    if IMAGE_PLACEHOLDER not in question:
        if images == 1:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        elif images > 1:
            lines = "".join(f"Image-{k}: {IMAGE_PLACEHOLDER}\n" for k in range(1, images + 1))
            question = lines + question
    return (
        f"<|im_start|>system\n{system_message}{IM_END}"
        f"<|im_start|>user\n{question}{IM_END}"
        "<|im_start|>assistant\n"
    )


def expand_images(prompt: str, tiles_per_image: list[int], tokens_per_tile: int) -> str:
    """Replace each `<image>` in turn with `<img>` + `<IMG_CONTEXT>` x (tokens x tiles) + `</img>`."""
    if prompt.count(IMAGE_PLACEHOLDER) != len(tiles_per_image):
        raise ValueError(
            f"the question has {prompt.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders "
            f"for {len(tiles_per_image)} images"
        )
    for tiles in tiles_per_image:
        prompt = prompt.replace(
            IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * (tokens_per_tile * tiles) + IMG_END, 1
        )
    return prompt
