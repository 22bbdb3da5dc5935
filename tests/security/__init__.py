"""The security suite: each hardening of README "Security" against the real daemon, services and a hostile provider."""
