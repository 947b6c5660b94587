"""Images and chats to model inputs: decoding, tiling, the chat template and the tokenizer."""
