"""The one place where Kafka topic, consumer-group and Redis key names are built.

With the default empty prefix the names are exactly those of the protocol:
topic ``messages-{SERVER_ID}``, group ``ws-server-group-{SERVER_ID}``. Tests and shared
deployments set ``CHAT_PREFIX`` so that several clusters can share one Redis and Kafka.

On a Redis Cluster (``hash_tags``) the name of a channel in its keys is a hash tag,
``chat:chan:{<channel>}:seq``: every key of a channel is in one hash slot, so one script can
store a message in it. Every other key is used alone (one key per command), so it needs no tag:
users, rooms and rate counters spread over the shards by their own names. Without a cluster the
names stay as they always were (a single Redis keeps its data across an upgrade).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    prefix: str = ""
    hash_tags: bool = False

    def _channel(self, channel: str) -> str:
        return f"{{{channel}}}" if self.hash_tags else channel

    def server_topic(self, server_id: str) -> str:
        """The Kafka topic that server ``server_id`` alone consumes."""
        return f"{self.prefix}messages-{server_id}"

    def consumer_group(self, server_id: str) -> str:
        return f"{self.prefix}ws-server-group-{server_id}"

    def user_servers(self, user: str) -> str:
        """Redis sorted set: the servers holding sessions of ``user``, scored by expiry (ms)."""
        return f"{self.prefix}chat:user:{user}:servers"

    def live_servers(self) -> str:
        """Redis sorted set: every server that consumes its topic, scored by expiry (ms)."""
        return f"{self.prefix}chat:servers"

    def channel_seq(self, channel: str) -> str:
        """Redis counter: the latest offset of ``channel`` (offsets start at 1)."""
        return f"{self.prefix}chat:chan:{self._channel(channel)}:seq"

    def channel_epoch(self, channel: str) -> str:
        """Redis string: the epoch of ``channel``'s offsets (new whenever they start over)."""
        return f"{self.prefix}chat:chan:{self._channel(channel)}:epoch"

    def channel_log(self, channel: str) -> str:
        """Redis sorted set: the stored messages of ``channel``, scored by offset."""
        return f"{self.prefix}chat:chan:{self._channel(channel)}:log"

    def user_rate(self, user: str, second: int) -> str:
        """Redis counter: messages ``user`` sent in one second, on all servers."""
        return f"{self.prefix}chat:rate:{user}:{second}"

    def sent(self, user: str, fingerprint: str) -> str:
        """Redis string: a message ``user`` sent recently, so that a retry is not stored twice."""
        return f"{self.prefix}chat:sent:{user}:{fingerprint}"

    def channel_sent(self, channel: str, user: str, fingerprint: str) -> str:
        """``sent`` for one channel, in the channel's hash slot: on a cluster a message is stored
        in each of its channels on its own, and each store recognises its own retry."""
        return f"{self.prefix}chat:chan:{self._channel(channel)}:sent:{user}:{fingerprint}"

    def room_members(self, room: str) -> str:
        """Redis set: the members of ``room``."""
        return f"{self.prefix}chat:room:{room}:members"

    def rooms_index(self) -> str:
        """Redis set: every room with at least one member (the rooms directory)."""
        return f"{self.prefix}chat:rooms"

    def user_rooms(self, user: str) -> str:
        """Redis set: the rooms ``user`` is a member of."""
        return f"{self.prefix}chat:user:{user}:rooms"

    def known_servers(self) -> str:
        """Redis sorted set: every server that published figures lately, scored by when (ms)."""
        return f"{self.prefix}chat:servers:known"

    def server_stats(self, server_id: str) -> str:
        """Redis hash: a server's figures for the operator page, refreshed by its heartbeat."""
        return f"{self.prefix}chat:server:{server_id}:stats"

    def account(self, user: str) -> str:
        """Redis string: the password hash of ``user``'s account (``CHAT_ACCOUNTS=1``)."""
        return f"{self.prefix}chat:account:{user}"

    def attempts(self, who: str) -> str:
        """Redis counter, expires a minute after its first attempt: sign-in and sign-up attempts
        of ``who`` (``ip:<address>`` or ``user:<name>``), on all servers (``CHAT_ACCOUNTS=1``)."""
        return f"{self.prefix}chat:attempts:{who}"

    def online(self) -> str:
        """Redis sorted set: users with a session somewhere, scored by expiry (ms)."""
        return f"{self.prefix}chat:online"
