"""Sans-I/O Phoenix Channels core: messages, serializers and the per-socket session state machine."""
