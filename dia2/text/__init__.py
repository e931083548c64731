"""Text to timed tokens: the script parser, tokenizer, the text state machine, the timed-word type,
and the word-to-frame alignment that voice prefixes and training rows share."""
