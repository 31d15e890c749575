"""rayiqa."""
