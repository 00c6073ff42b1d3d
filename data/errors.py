"""The one exception type of `lactron.data`.

Every user-facing data problem (missing dataset, wrong seq_len, corrupt shard, dataset changed under a resumed run,
bad batch-size arithmetic) raises `DataError` with a one-line message saying what is wrong and what to do about it.
It subclasses ValueError so callers that already catch ValueError for bad configuration keep working.
"""


class DataError(ValueError):
    """A data problem the user can fix; the message names the fix (usually a command to run)."""
