"""Audio and the Mimi codec: encode/decode, exact streaming decode, audio files (any container), speech -> timed
words, speech quality (DNSMOS)."""
