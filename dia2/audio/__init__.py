"""Audio and the Mimi codec: encode/decode, exact streaming decode, audio files, speech -> timed words."""
