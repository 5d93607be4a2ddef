"""The real-time marketing loop's pure half: the event wire format, the Redis key layout of
live state, stream settings, trigger rules and the rule engine (no Redis, no Ray here)."""
