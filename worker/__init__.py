"""The GPU tier: loads one model per process and serves many requests from Redis. No platform code here."""
