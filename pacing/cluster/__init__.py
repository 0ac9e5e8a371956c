"""The cluster's coordination in Redis: its key names, the leader lease and its fence, the
per-target state the shards share, and the status read from both."""
