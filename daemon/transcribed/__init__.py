"""transcribed: long recordings in, timestamped transcripts out."""
