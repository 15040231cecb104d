"""The inference log buffer: every answered row, kept in one SQLite file until the sync ships it.

`LogBuffer` (`edge.logbuffer.buffer`) is the whole interface; its module docstring maps the
package's parts.
"""

from edge.logbuffer.buffer import LogBuffer
from edge.logbuffer.journal import SeqRange
from edge.logbuffer.reader import Batch

__all__ = ["Batch", "LogBuffer", "SeqRange"]
