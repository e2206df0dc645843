"""A horizontally scaled chat server: Tornado WebSockets, Kafka between servers, Redis for presence."""
