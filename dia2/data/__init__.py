"""The token grid shared by training and decoding: delays, the teacher-forced training grid,
the corpus schema."""
