import pytest

from monovl.preprocessing.chat_template import ChatMessage, ImagePart, TextPart
from tests.conftest import png_bytes


def test_image_spans_and_tile_cap(preprocessor):
    wide = preprocessor.load_image(png_bytes(1600, 400, seed=1))
    capped = preprocessor.load_image(png_bytes(1600, 400, seed=1), max_tiles=2)
    assert wide.num_tiles == 5 and capped.num_tiles == 3  # 4x1 + thumbnail; 2x1 + thumbnail
    assert wide.content_hash != capped.content_hash
    messages = [ChatMessage("user", (ImagePart(0), TextPart("and"), ImagePart(1)))]
    inputs = preprocessor.process(messages, [wide, capped])
    (a0, a1), (b0, b1) = inputs.image_spans
    assert (a1 - a0, b1 - b0) == (5 * 256, 3 * 256)
    ctx = preprocessor.img_context_id
    assert all(inputs.token_ids[k] == ctx for k in range(a0, a1)) and inputs.token_ids[a1] != ctx


def test_same_bytes_same_hash(preprocessor):
    data = png_bytes(300, 200, seed=2)
    assert preprocessor.load_image(data).content_hash == preprocessor.load_image(data).content_hash


def test_image_parts_must_match_images(preprocessor):
    image = preprocessor.load_image(png_bytes(100, 100))
    with pytest.raises(ValueError, match="do not match"):
        preprocessor.process([ChatMessage.text("user", "no image here")], [image])
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        preprocessor.process([ChatMessage.text("user", "sneaky <IMG_CONTEXT>")], [])


def test_stop_ids_are_the_templates_and_generation_configs(preprocessor):
    tok = preprocessor.tokenizer
    assert preprocessor.stop_token_ids[:3] == [2, tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")]
