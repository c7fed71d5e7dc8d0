"""The relay's exception types.

Every message is written for a person on call and never contains a patient identifier: it names files by
their position in the batch, patients by pseudonym or by index, and destinations by role.
"""


class RelayError(Exception):
    """Something went wrong with a batch; the message is safe to store, log and show."""

    #: A transient error may succeed on a later attempt (a destination that is down, a timeout);
    #: the scheduled rerun picks such batches up again. A permanent one waits for a person.
    transient = False
    #: The batch status a failure of this kind leaves behind.
    batch_status = "ERROR"


class TransientError(RelayError):
    """A destination or service is unavailable right now; retrying later may succeed."""

    transient = True


class PermanentError(RelayError):
    """Retrying will not help without a person: bad input, a refused policy, a missing pseudonym."""


class EmptyBatch(PermanentError):
    """The folder held no readable DICOM instance (sendit's EMPTY)."""

    batch_status = "EMPTY"
