"""Contract tests: imaged's own DashScope and LiblibAI clients against the in-process provider emulator."""
