"""The internlm2-chat prompt, byte for byte."""

from monovl.preprocessing.chat_template import DEFAULT_SYSTEM_MESSAGE, ChatMessage, ImagePart, TextPart, render_prompt

SYSTEM = "<|im_start|>system\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>"


def block(n: int) -> str:
    return "<img>" + "<IMG_CONTEXT>" * n + "</img>"


def test_default_system_message_bytes():
    # UTF-8 of the reference template's system message (internvl/conversation.py, internlm2-chat)
    assert DEFAULT_SYSTEM_MESSAGE.encode().hex() == (
        "e4bda0e698afe794b1e4b88ae6b5b7e4babae5b7a5e699bae883bde5ae9ee9aa8ce5aea4e88194e59088e59586e6b1a4e7a791"
        "e68a80e5bc80e58f91e79a84e4b9a6e7949fe5a49ae6a8a1e68081e5a4a7e6a8a1e59e8befbc8ce88bb1e69687e5908de58fab"
        "496e7465726e564c2c20e698afe4b880e4b8aae69c89e794a8e697a0e5aeb3e79a84e4babae5b7a5e699bae883bde58aa9e6898be38082"
    )


def test_text_only():
    prompt = render_prompt([ChatMessage.text("user", "Hello, who are you?")], [])
    assert prompt == SYSTEM + "<|im_start|>user\nHello, who are you?<|im_end|><|im_start|>assistant\n"


def test_one_image_then_question_is_the_reference_layout():
    message = ChatMessage("user", (ImagePart(0), TextPart("Describe the image.")))
    prompt = render_prompt([message], [768])
    assert prompt == (
        SYSTEM + "<|im_start|>user\n" + block(768) + "\nDescribe the image.<|im_end|><|im_start|>assistant\n"
    )


def test_system_override_multi_turn_and_several_images():
    messages = [
        ChatMessage.text("system", "Be brief."),
        ChatMessage("user", (ImagePart(0), ImagePart(1), TextPart("Compare them."))),
        ChatMessage.text("assistant", "The first is wider."),
        ChatMessage("user", (TextPart("Why?"), ImagePart(2))),
    ]
    assert render_prompt(messages, [3, 2, 1]) == (
        "<|im_start|>system\nBe brief.<|im_end|>"
        "<|im_start|>user\n" + block(3) + "\n" + block(2) + "\nCompare them.<|im_end|>"
        "<|im_start|>assistant\nThe first is wider.<|im_end|>"
        "<|im_start|>user\nWhy?\n" + block(1) + "<|im_end|>"
        "<|im_start|>assistant\n"
    )


def test_empty_system_and_empty_assistant_turn_follow_the_reference():
    messages = [
        ChatMessage.text("system", ""),
        ChatMessage.text("user", "Hi"),
        ChatMessage.text("assistant", ""),
        ChatMessage.text("user", "Again"),
    ]
    assert render_prompt(messages, []) == (
        "<|im_start|>system\n<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"
        "<|im_start|>user\nAgain<|im_end|><|im_start|>assistant\n"
    )
