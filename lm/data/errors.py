"""The one exception type a user of the data pipeline can cause."""


from lm.errors import DataError

__all__ = ['DataError']
