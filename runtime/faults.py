"""What a store fault is to a worker: an exception it logs and retries after, instead of dying of it.

redis-py raises `RedisError` for what a Redis server or connection does; its Cluster client raises
`RedisClusterException` besides (a slot no master serves, no node that answers), which is no `RedisError`.
"""

from __future__ import annotations

from redis.exceptions import RedisClusterException, RedisError

from runtime.errors import TransientError

REDIS_FAULTS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
# ... and what the event log and the other stores' wrappers raise for the same faults (StoreUnavailable).
STORE_FAULTS: tuple[type[Exception], ...] = (*REDIS_FAULTS, TransientError)
